"""Settings from the environment variables Label Studio ML backends use, plus polypseg's own:
the serving settings both platforms share (backends/serving.py), and the backend's own."""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from backends.serving import ServingSettings
from polypseg.environment import Environment


@dataclass(frozen=True)
class Settings(ServingSettings):
    label_studio_url: str = ""  # LABEL_STUDIO_URL: where relative task URLs and tokens go
    label_studio_api_key: str = ""  # LABEL_STUDIO_API_KEY: legacy token or personal access token
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
    # POLYPSEG_PREANNOTATE (1 or 0): a task without a box is answered with the detector's polyps
    preannotate: bool = True

    @classmethod
    def from_env(  # type: ignore[override]
        cls, environ: Mapping[str, str] | None = None, tracker: str = "auto"
    ) -> Settings:
        env = Environment(environ)
        text = env.text
        return super().from_env(
            environ,
            tracker,
            label_studio_url=text("LABEL_STUDIO_URL", text("LABEL_STUDIO_HOST", "")).rstrip("/"),
            label_studio_api_key=text("LABEL_STUDIO_API_KEY", text("LABEL_STUDIO_ACCESS_TOKEN", "")),
            max_frames_to_track=env.integer("MAX_FRAMES_TO_TRACK", 50),
            basic_auth_user=text("BASIC_AUTH_USER", ""),
            basic_auth_pass=text("BASIC_AUTH_PASS", ""),
            max_media_bytes=env.integer("POLYPSEG_MAX_MEDIA_BYTES", 2 << 30, minimum=1),
            fetch_timeout=env.integer("POLYPSEG_FETCH_TIMEOUT", 60, minimum=1),
            threads=env.integer("POLYPSEG_THREADS", 4),
            dataset=env.path("POLYPSEG_DATASET"),
            retrain_after=env.integer("RETRAIN_AFTER", 20),
            retrain_args=tuple(shlex.split(text("RETRAIN_ARGS", ""))),
            preannotate=env.choice("POLYPSEG_PREANNOTATE", ("1", "0"), "1") == "1",
        )
