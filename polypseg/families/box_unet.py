"""The box-prompted U-Net and U-Net++ (RGB + the box as a fourth channel)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polypseg.families import Metadata, ModelFamily, State, test_time_augmentation


def load(state: State, metadata: Metadata, path: str, **options: Any) -> Any:
    from polypseg.predictors.box_channel import BoxChannelPredictor

    options.setdefault("tta", test_time_augmentation("segment"))
    return BoxChannelPredictor.from_state(state, metadata, path, **options)


def input_fields(metadata: Metadata) -> dict[str, Any]:
    """A box-channel checkpoint's input geometry as training config fields, so a retrained
    model sees its input as the one it starts from."""
    from polypseg.box_input import BoxInputGeometry

    geometry = BoxInputGeometry(**metadata.get("input", {}))  # what serving it would use
    return {"geometry": geometry.mode, "size": geometry.size, "margin": geometry.margin}


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
