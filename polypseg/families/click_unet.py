"""The click-guided U-Net: box, positive and negative clicks and its previous mask (RITM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polypseg.families import Metadata, ModelFamily, State, test_time_augmentation
from polypseg.families.box_unet import input_fields


def load(state: State, metadata: Metadata, path: str, **options: Any) -> Any:
    from polypseg.predictors.click_unet import ClickUnetPredictor

    options.setdefault("tta", test_time_augmentation("segment"))
    return ClickUnetPredictor.from_state(state, metadata, path, **options)


def retrain(base: Path, metadata: Metadata, common: dict[str, Any]) -> Path:
    from polypseg.training.click_unet import ClickUnetTrainConfig, train_click_unet

    return train_click_unet(
        ClickUnetTrainConfig(
            init=base,
            decoder=metadata.get("decoder", "unet"),
            encoder=metadata["encoder"],
            **input_fields(metadata),
            **common,
        )
    )


FAMILIES = [
    ModelFamily(
        "clickunet",
        "click-guided U-Net (box, positive and negative clicks, previous mask; presence)",
        load,
        learns_from_clicks=True,
        retrain=retrain,
    )
]
