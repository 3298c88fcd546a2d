"""The box-prompted U-Net and U-Net++ (RGB + the box as a fourth channel)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from polypseg.families import Metadata, ModelFamily, State


def load(state: State, metadata: Metadata, path: str, **options: Any) -> Any:
    from polypseg.predictors.box_channel import BoxChannelPredictor

    # POLYPSEG_TTA=1: test-time augmentation, off by default (docs/models.md: +0.2 to +0.9 IoU
    # points for three times the latency)
    options.setdefault("tta", os.environ.get("POLYPSEG_TTA") == "1")
    return BoxChannelPredictor.from_state(state, metadata, path, **options)


def input_fields(metadata: Metadata) -> dict[str, Any]:
    """A box-channel checkpoint's input geometry as training config fields, so a retrained
    model sees its input as the one it starts from."""
    geometry = metadata.get("input", {})
    return {
        "geometry": geometry.get("mode", "crop"),
        "size": int(geometry.get("size", 224)),
        "margin": float(geometry.get("margin", 0.25)),
    }


def retrain(base: Path, metadata: Metadata, common: dict[str, Any]) -> Path:
    from polypseg.training.unet import UnetTrainConfig, train_unet

    return train_unet(
        UnetTrainConfig(
            init=base,
            architecture=metadata["architecture"],
            encoder=metadata["encoder"],
            **input_fields(metadata),
            **common,
        )
    )


FAMILIES = [
    ModelFamily(name, f"box-prompted {label} (RGB + box channel)", load, retrain=retrain)
    for name, label in (("unet", "U-Net"), ("unetplusplus", "U-Net++"))
]
