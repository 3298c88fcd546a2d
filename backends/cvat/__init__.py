"""CVAT's side: its wire formats (the lambda manager's requests, the UI's answers), the handlers
and settings that each nuclio function's `main.py` (serverless/) uses, the tracker state store,
the cvat-sdk agent functions, `boxes_to_masks`, and the pull of CVAT exports for retraining."""
