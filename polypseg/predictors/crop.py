"""What the box-channel and click-guided U-Nets share: an smp network that sees the crop around
the box (`BoxInputGeometry`), so nothing is worth computing before the prompt."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from polypseg.box_input import BoxInputGeometry
from polypseg.predictors.base import ImagePredictor


class CropNetworkPredictor(ImagePredictor):
    has_prompt_free_part = False

    def __init__(
        self,
        model: torch.nn.Module,
        metadata: dict[str, Any],
        device: str = "cpu",
        threshold: float = 0.5,
        **kwargs: Any,
    ) -> None:
        """`metadata` is the checkpoint's: its `architecture` names the predictor, its `version`
        keys the caches, its `input` is the crop geometry the network was trained with."""
        super().__init__(**kwargs)
        self.model = model.to(device).eval()
        self.metadata = metadata
        self.name = metadata["architecture"]
        self.version = str(metadata.get("version", "unversioned"))
        self.geometry = BoxInputGeometry(**metadata.get("input", {}))
        self.device = torch.device(device)
        self.threshold = threshold

    def _encode(self, image: np.ndarray) -> tuple[Any, int]:
        return None, 0


def mean_inside(probability: np.ndarray, mask: np.ndarray) -> float:
    """A mask's confidence: the mean probability over its pixels (0 for an empty mask)."""
    inside = probability[mask]
    return float(inside.mean()) if inside.size else 0.0
