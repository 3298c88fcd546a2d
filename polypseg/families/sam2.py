"""SAM2 (official sam2.1_hiera_* files, or fine-tuned by polypseg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polypseg.errors import ModelError
from polypseg.families import Metadata, ModelFamily, State


def load(state: State, metadata: Metadata, path: str, **options: Any) -> Any:
    from polypseg.predictors.sam2 import Sam2Predictor

    if options.pop("tta", False):
        raise ModelError("test-time augmentation is for the U-Nets and the detectors, not SAM2")
    return Sam2Predictor.from_state(state, metadata, path, **options)


def retrain(base: Path, metadata: Metadata, common: dict[str, Any]) -> Path:
    from polypseg.training.sam2_finetune import Sam2FinetuneConfig, finetune_sam2

    size = int(metadata.get("image_size", 1024))
    return finetune_sam2(Sam2FinetuneConfig(checkpoint=base, image_size=size, **common))


def recognise(state: State) -> bool:
    return any(key.startswith("image_encoder.") for key in state)


FAMILIES = [
    ModelFamily(
        "sam2",
        "SAM2: box, clicks or both; memory-attention video tracking",
        load,
        needs_box=False,
        learns_from_clicks=True,
        working_size=True,
        # SAM2's memory tracker costs seconds a frame on a CPU (docs/benchmarks.md)
        tracker=lambda on_gpu: "sam2" if on_gpu else "classical",
        retrain=retrain,
        recognise=recognise,
    )
]
