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
        tta: bool = False,
        **kwargs: Any,
    ) -> None:
        """`metadata` is the checkpoint's: its `architecture` names the predictor, its `version`
        keys the caches, its `input` is the crop geometry the network was trained with.
        `tta`: also run the input flipped left-right and upside down and average the three
        answers (test-time augmentation; three times the network's work)."""
        super().__init__(**kwargs)
        self.tta = tta
        self.model = model.to(device).eval()
        self.metadata = metadata
        self.name = metadata["architecture"]
        self.version = str(metadata.get("version", "unversioned"))
        self.geometry = BoxInputGeometry(**metadata.get("input", {}))
        self.device = torch.device(device)
        self.threshold = threshold

    def _encode(self, image: np.ndarray) -> tuple[Any, int]:
        return None, 0

    def run_network(self, x: np.ndarray) -> tuple[np.ndarray, float | None]:
        """The network on one input (channels x size x size): the crop's polyp probability, and
        the presence probability where the network has that head. Every input channel (box,
        clicks, previous mask) flips with the image, so each TTA view is a consistent input."""
        batch = torch.from_numpy(x)[None].to(self.device)
        if self.tta:
            batch = torch.cat([batch, batch.flip(-1), batch.flip(-2)])
        with torch.inference_mode():
            output = self.model(batch)
        logits, presence = output if isinstance(output, tuple) else (output, None)
        maps = torch.sigmoid(logits[:, 0].float())
        if self.tta:
            maps = torch.stack([maps[0], maps[1].flip(-1), maps[2].flip(-2)])
        chance = None if presence is None else float(torch.sigmoid(presence[:, 0].float()).mean())
        return maps.mean(0).cpu().numpy(), chance


def mean_inside(probability: np.ndarray, mask: np.ndarray) -> float:
    """A mask's confidence: the mean probability over its pixels (0 for an empty mask)."""
    inside = probability[mask]
    return float(inside.mean()) if inside.size else 0.0
