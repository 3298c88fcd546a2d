"""CVAT functions on the polypseg core: nuclio handlers and cvat_sdk auto-annotation functions."""
