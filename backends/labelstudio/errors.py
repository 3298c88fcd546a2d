"""The backend's request errors: `RequestError` (shared with CVAT's functions), and the media
fetch failures among them, which pulls retry when the far side failed (a status of 500 or more)."""

from __future__ import annotations

from backends.request_errors import RequestError

# Unusable input (RequestError without a status, PolypsegError) is answered 422, as ever.
INPUT_ERROR_STATUS = 422


class MediaError(RequestError):
    """The task's image or video could not be fetched (refused, missing, unreachable)."""
