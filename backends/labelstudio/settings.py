"""Settings from the environment variables Label Studio ML backends use, plus polypseg's own."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from polypseg.errors import PolypsegError
from polypseg.video.tracking_job import TRACKERS as TRACKER_KINDS

TRACKERS = ("auto", *TRACKER_KINDS)


class SettingsError(PolypsegError):
    """An environment variable the backend cannot use; the server does not start."""


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None


def _tracker() -> str:
    tracker = os.environ.get("POLYPSEG_TRACKER", "auto").strip().lower() or "auto"
    if tracker not in TRACKERS:
        raise SettingsError(f"POLYPSEG_TRACKER={tracker!r}: one of {', '.join(TRACKERS)}")
    return tracker


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = ""  # LABEL_STUDIO_URL: where relative task URLs and tokens go
    label_studio_api_key: str = ""  # LABEL_STUDIO_API_KEY: legacy token or personal access token
    model: str | None = None  # POLYPSEG_MODEL: unet, unetplusplus, sam2 (default: the checkpoint's)
    checkpoint: Path | None = None  # POLYPSEG_CHECKPOINT (default: the shipped model)
    device: str | None = None  # DEVICE: cpu, cuda, cuda:N, auto
    model_dir: Path | None = None  # MODEL_DIR: where retrained model versions live
    tracker: str = "auto"  # POLYPSEG_TRACKER: classical, sam2, or auto (sam2 for a SAM2 model on a GPU)
    max_frames_to_track: int = 50  # MAX_FRAMES_TO_TRACK
    basic_auth_user: str = ""  # BASIC_AUTH_USER / BASIC_AUTH_PASS: required of Label Studio if set
    basic_auth_pass: str = ""
    max_media_bytes: int = 2 << 30  # POLYPSEG_MAX_MEDIA_BYTES: refuse larger downloads
    fetch_timeout: int = 60  # POLYPSEG_FETCH_TIMEOUT, seconds per read from Label Studio or a URL
    threads: int = 4  # POLYPSEG_THREADS: requests served at once per worker process
    dataset: Path | None = None  # POLYPSEG_DATASET: the retraining dataset store (default MODEL_DIR/dataset)
    retrain_after: int = 20  # RETRAIN_AFTER: annotation events that start a retrain (0: START_TRAINING only)
    # RETRAIN_ARGS: more `polypseg retrain` flags ("--epochs 5 --tolerance 0")
    retrain_args: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            label_studio_url=env("LABEL_STUDIO_URL", env("LABEL_STUDIO_HOST", "")).rstrip("/"),
            label_studio_api_key=env("LABEL_STUDIO_API_KEY", env("LABEL_STUDIO_ACCESS_TOKEN", "")),
            model=env("POLYPSEG_MODEL") or None,
            checkpoint=Path(env("POLYPSEG_CHECKPOINT", "")) if env("POLYPSEG_CHECKPOINT") else None,
            device=env("DEVICE") or None,
            model_dir=Path(env("MODEL_DIR", "")) if env("MODEL_DIR") else None,
            tracker=_tracker(),
            max_frames_to_track=_int("MAX_FRAMES_TO_TRACK", 50),
            basic_auth_user=env("BASIC_AUTH_USER", ""),
            basic_auth_pass=env("BASIC_AUTH_PASS", ""),
            max_media_bytes=_int("POLYPSEG_MAX_MEDIA_BYTES", 2 << 30),
            fetch_timeout=_int("POLYPSEG_FETCH_TIMEOUT", 60),
            threads=_int("POLYPSEG_THREADS", 4),
            dataset=Path(env("POLYPSEG_DATASET", "")) if env("POLYPSEG_DATASET") else None,
            retrain_after=_int("RETRAIN_AFTER", 20),
            retrain_args=tuple(shlex.split(env("RETRAIN_ARGS", ""))),
        )
