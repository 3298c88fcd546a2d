"""The one error both platforms' adapters raise for a request they cannot answer as sent."""

from __future__ import annotations


class RequestError(Exception):
    """A request that cannot be answered as sent, with the reason to answer.

    `status` is the HTTP status to answer with where the kind of failure decides it (413 too
    large, 410 a tracker state that expired, 502 a media server that failed); None for input
    that cannot be used, which each platform answers as its clients expect, the same status it
    gives a `PolypsegError`: Label Studio's backend 422, CVAT's functions 400."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
