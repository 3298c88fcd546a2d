"""What every polypseg server reads from its environment (the Label Studio backend and the CVAT
functions alike), read and checked once at start: a bad value stops the server with its name
and the reason, before any request. Nothing is read when a module is imported.

Each platform adds its own settings in a subclass (`backends.labelstudio.settings.Settings`,
`backends.cvat.settings.CvatSettings`); the variable names are those Label Studio and CVAT
users already set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from polypseg.environment import Environment
from polypseg.images import image_pixel_limit
from polypseg.model_store import CurrentModel, ModelStore
from polypseg.predictors.base import DEFAULT_CACHE_BYTES, ImagePredictor, cache_size
from polypseg.video.tracking_job import TRACKERS as TRACKER_KINDS

TRACKERS = ("auto", *TRACKER_KINDS)


@dataclass(frozen=True)
class ServingSettings:
    model: str | None = None  # POLYPSEG_MODEL: unet, unetplusplus, sam2 (default: the checkpoint's)
    checkpoint: Path | None = None  # POLYPSEG_CHECKPOINT (default: the shipped model)
    device: str | None = None  # DEVICE: cpu, cuda, cuda:N, auto
    model_dir: Path | None = None  # MODEL_DIR: where retrained model versions live
    tracker: str = "auto"  # POLYPSEG_TRACKER: classical, sam2, or auto (sam2 for a SAM2 model on a GPU)
    sam2_size: int | None = None  # POLYPSEG_SAM2_SIZE: SAM2's working size (default: its own)
    cache_bytes: int = DEFAULT_CACHE_BYTES  # POLYPSEG_CACHE_BYTES: image embeddings kept
    detector: Path | None = None  # POLYPSEG_DETECTOR: the polyp detector (default: the shipped one)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, tracker: str = "auto", **platform: Any
    ) -> Self:
        """The settings in `environ` (default: the process's); `tracker` is the default of
        POLYPSEG_TRACKER; `platform` are a subclass's own fields, read by its from_env."""
        env = Environment(environ)
        # POLYPSEG_MAX_IMAGE_PIXELS is the core's, read where images are read (the CLI honours
        # it too); checked here so that a bad value stops a server at start, not a request.
        image_pixel_limit(env)
        size = env.integer("POLYPSEG_SAM2_SIZE", 0)
        return cls(
            model=env.text("POLYPSEG_MODEL") or None,
            checkpoint=env.path("POLYPSEG_CHECKPOINT"),
            device=env.text("DEVICE") or None,
            model_dir=env.path("MODEL_DIR"),
            tracker=env.choice("POLYPSEG_TRACKER", TRACKERS, tracker),
            sam2_size=size or None,
            cache_bytes=cache_size(env),
            detector=env.path("POLYPSEG_DETECTOR"),
            **platform,
        )

    def predictor_options(self) -> dict[str, Any]:
        """The options `build_predictor` takes from these settings."""
        options: dict[str, Any] = {"cache_bytes": self.cache_bytes}
        if self.sam2_size:
            options["image_size"] = self.sam2_size
        return options

    def current_model(
        self, load: Callable[[Path | None], ImagePredictor], fallback: Path | None = None
    ) -> CurrentModel:
        """MODEL_DIR's current version, followed as retraining promotes new ones; without
        MODEL_DIR the model POLYPSEG_CHECKPOINT names, else `fallback`, else the shipped one."""
        store = ModelStore(self.model_dir) if self.model_dir else None
        return CurrentModel(store, load, fallback=self.checkpoint or fallback)

    def tracker_for(self, predictor: ImagePredictor) -> str:
        """The tracker kind to follow a polyp with: POLYPSEG_TRACKER, or for "auto" SAM2's
        memory when a SAM2 model runs on a GPU (too slow on a CPU), else the classical one."""
        if self.tracker != "auto":
            return self.tracker
        from polypseg.families import family

        on_gpu = str(getattr(predictor, "device", "cpu")).startswith("cuda")
        return family(predictor.name).tracker(on_gpu)
