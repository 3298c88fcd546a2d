"""The Label Studio ML backend: Label Studio's regions in, polyp masks out, on the polypseg core.

`server.create_app()` is the web application; `model.PolypModel` turns Label Studio tasks and
contexts into prompts for the core and its masks back into Label Studio regions.
"""
