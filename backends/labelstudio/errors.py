"""Errors the backend answers with a status code and a reason instead of crashing."""

from __future__ import annotations


class BadRequest(Exception):
    """The request cannot be answered as sent; `status` is the HTTP status to reply with."""

    def __init__(self, reason: str, status: int = 422) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class MediaError(BadRequest):
    """The task's image or video could not be fetched (refused, missing, unreachable)."""
