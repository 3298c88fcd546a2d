"""U-Net, U-Net++ and other smp models that take RGB plus the box as a fourth channel.

The box is part of the input, so nothing is worth computing before the prompt: `prepare`
only checks the image. Clicks alone are refused (these models need a box); clicks beside a
box pick which connected components of the mask to keep.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch

from polypseg.box_input import BOX_CHANNELS
from polypseg.checkpoints import load_weights
from polypseg.errors import PromptError
from polypseg.inference import for_inference
from polypseg.masks import clean_mask
from polypseg.predictors.base import Prediction, PreparedImage
from polypseg.predictors.crop import CropNetworkPredictor, mean_inside
from polypseg.prompts import Prompt

# Registry name -> (smp architecture, default encoder as in the reference work).
ARCHITECTURES = {
    "unet": ("Unet", "mit_b2"),
    "unetplusplus": ("UnetPlusPlus", "resnet34"),
}


def create_box_channel_model(
    name: str, encoder: str | None = None, encoder_weights: str | None = None
) -> torch.nn.Module:
    """An untrained smp model with BOX_CHANNELS inputs (RGB + box) and one output (polyp logits).

    `encoder_weights="imagenet"` needs those weights reachable; smp then adapts the first
    convolution to the fourth channel.
    """
    arch, default_encoder = ARCHITECTURES[name]
    return smp.create_model(
        arch,
        encoder_name=encoder or default_encoder,
        encoder_weights=encoder_weights,
        in_channels=BOX_CHANNELS,
        classes=1,
    )


class BoxChannelPredictor(CropNetworkPredictor):
    @classmethod
    def from_state(
        cls, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], path: str, **kwargs: Any
    ) -> BoxChannelPredictor:
        model = create_box_channel_model(metadata["architecture"], metadata.get("encoder"))
        what = f"{metadata['architecture']} with encoder {metadata.get('encoder')}"
        load_weights(model, state_dict, path, what)
        return cls(for_inference(model), metadata, **kwargs)

    def probability(self, image: np.ndarray, prompt: Prompt) -> np.ndarray:
        """The per-pixel polyp probability for a prompt with a box, image-sized."""
        if prompt.box is None:
            raise PromptError(f"model {self.name} needs a box around the polyp; clicks alone work with sam2")
        height, width = image.shape[:2]
        window = self.geometry.window(prompt.box, width, height)
        probability, _ = self.run_network(self.geometry.make_input(image, prompt.box, window))
        return self.geometry.paste(probability, window, width, height)

    def _segment(self, prepared: PreparedImage, prompt: Prompt) -> Prediction:
        probability = self.probability(prepared.image, prompt)
        mask = clean_mask(probability > self.threshold, prompt)
        return Prediction(mask=mask, score=mean_inside(probability, mask))
