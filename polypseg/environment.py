"""Typed reads of environment variables, each failure naming the variable and what it needs.

Nothing reads the environment when a module is imported: the core's process-wide limits read
theirs at first use (`polypseg.images.max_image_pixels`, `polypseg.predictors.base.
default_cache_bytes`), and a server reads all of its settings once at start
(`backends.serving.ServingSettings`), so that a bad value stops it before any request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from polypseg.errors import PolypsegError


class SettingsError(PolypsegError):
    """An environment variable that cannot be used as it is set."""


class Environment:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def text(self, name: str, default: str = "") -> str:
        return self.environ.get(name, default)

    def path(self, name: str) -> Path | None:
        return Path(self.environ[name]) if self.environ.get(name) else None

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        raw = self.environ.get(name, "")
        try:
            value = int(raw) if raw.strip() else default
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum:
            raise SettingsError(f"{name}={raw!r}: at least {minimum}")
        return value

    def number(self, name: str, default: float) -> float:
        """A number above 0 (seconds, say)."""
        raw = self.environ.get(name, "")
        try:
            value = float(raw) if raw.strip() else default
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise SettingsError(f"{name}={raw!r}: a number above 0")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.environ.get(name, default).strip().lower() or default
        if value not in choices:
            raise SettingsError(f"{name}={value!r}: one of {', '.join(choices)}")
        return value
