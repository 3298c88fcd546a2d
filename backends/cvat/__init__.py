"""CVAT's wire formats (the lambda manager's requests, the UI's answers), the tracker state store,
and the handlers that each function's `main.py` calls."""
