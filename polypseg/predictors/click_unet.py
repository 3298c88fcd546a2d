"""A click-guided U-Net: RGB, the box, positive and negative clicks and its own previous mask.

The design of RITM (Sofiiuk et al., "Reviving Iterative Training with Mask Guidance for
Interactive Segmentation", 2022) on the box-channel U-Net: seven input channels in the crop
around the box (RGB, box, positive-click disks, negative-click disks, previous probability),
one mask output and one presence output (is there a polyp in this box at all?, from the
encoder's deepest features).

Requests are stateless, as Label Studio and CVAT send them: each carries the box and every
click so far. The answer to k clicks is the model's answer to the k-th click given its own
answer to the first k-1 as the previous mask, so the clicks are replayed in order (k+1
forward passes), starting from the longest prefix found in a small cache: in an annotation
session the previous request left its answer there, and each new click costs one pass.

A box is always answered with a mask (an annotator who drew one never wants "nothing"): where
the model is unsure, the best mask it has, with a low score. Whether a polyp is there at all
is `Prediction.presence`, which trackers read to say "lost".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import segmentation_models_pytorch as smp
import torch

from polypseg.box_input import BOX_CHANNELS, BoxInputGeometry
from polypseg.cache import EmbeddingCache
from polypseg.checkpoints import load_weights
from polypseg.clicks import MAX_CLICKS, click_channels
from polypseg.environment import Environment
from polypseg.errors import PromptError
from polypseg.images import image_digest
from polypseg.inference import for_inference
from polypseg.masks import clean_mask, ellipse_in_box
from polypseg.predictors.base import Prediction, PreparedImage
from polypseg.predictors.crop import CropNetworkPredictor, mean_inside
from polypseg.prompts import Box, Point, Prompt

IN_CHANNELS = BOX_CHANNELS + 3  # RGB, box, positive clicks, negative clicks, previous probability
PRESENCE_HEAD = "classification_head."  # smp's name for the aux (presence) head
DECODERS = {"unet": "Unet", "unetplusplus": "UnetPlusPlus"}
# Previous answers kept for replay: a crop-sized float map each (224 px: 200 kB), so 64 MiB
# hold some 300 click sessions' last answers (POLYPSEG_CLICK_CACHE_BYTES, read at build).
REPLAY_CACHE_BYTES = 64 << 20


def create_click_model(
    encoder: str = "resnet18", decoder: str = "unet", encoder_weights: str | None = None
) -> torch.nn.Module:
    """A click-guided smp model (untrained, or its encoder pretrained where `encoder_weights`
    can be had): 7 channels in; mask logits and a presence logit out."""
    return smp.create_model(
        DECODERS[decoder],
        encoder_name=encoder,
        encoder_weights=encoder_weights,
        in_channels=IN_CHANNELS,
        classes=1,
        aux_params={"classes": 1, "dropout": 0.2},
    )


def widen_box_channel_state(
    state: dict[str, torch.Tensor], model: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """A box-channel model's weights (4 input channels) fitted to a click model: the first
    convolution gets zero weights for the click and previous-mask channels, so the widened
    model starts out answering exactly as the box model did; the presence head keeps its
    fresh initialisation."""
    target = model.state_dict()
    widened = {}
    for key, value in state.items():
        value = value.float() if value.is_floating_point() else value
        box_input = value.dim() == 4 and value.shape[1] == BOX_CHANNELS
        if key in target and box_input and target[key].shape[1] == IN_CHANNELS:
            grown = torch.zeros(target[key].shape, dtype=value.dtype)
            grown[:, :BOX_CHANNELS] = value
            value = grown
        widened[key] = value
    for key, value in target.items():
        if key.startswith(PRESENCE_HEAD):
            widened[key] = value
    return widened


def click_window(geometry: BoxInputGeometry, prompt: Prompt, width: int, height: int) -> Box:
    """The crop the network sees: around the box, grown to hold every positive click."""
    assert prompt.box is not None
    box = prompt.box
    xs = [box.x1, box.x2, *(p.x for p in prompt.positive_points)]
    ys = [box.y1, box.y2, *(p.y for p in prompt.positive_points)]
    covering = Box(min(xs), min(ys), max(max(xs), min(xs) + 1), max(max(ys), min(ys) + 1))
    return geometry.window(covering, width, height)


def add_click_channels(
    base: np.ndarray, window: Box, points: tuple[Point, ...] | list[Point], previous: np.ndarray
) -> np.ndarray:
    """The IN_CHANNELS x size x size network input: the box model's channels
    (`BoxInputGeometry.make_input`), the clicks (image pixels, mapped through `window`), and
    `previous`, the size x size previous probability. Training and prediction both build it here."""
    size = base.shape[-1]
    scale = (size / window.width, size / window.height)
    clicks = click_channels(points, (window.x1, window.y1), scale, size)
    return np.concatenate([base, clicks, previous[None].astype(np.float32)], axis=0)


class ClickUnetPredictor(CropNetworkPredictor):
    def __init__(self, model: torch.nn.Module, metadata: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(model, metadata, **kwargs)
        # (image digest, box, window, clicks) -> (previous probability, presence)
        self.answers: EmbeddingCache[tuple[np.ndarray, float]] = EmbeddingCache(
            Environment().integer("POLYPSEG_CLICK_CACHE_BYTES", REPLAY_CACHE_BYTES),
            lambda answer: answer[0].nbytes,
        )
        self.forward_passes = 0

    @classmethod
    def from_state(
        cls, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any], path: str, **kwargs: Any
    ) -> ClickUnetPredictor:
        decoder, encoder = metadata.get("decoder", "unet"), metadata.get("encoder", "resnet18")
        model = create_click_model(encoder, decoder)
        load_weights(model, state_dict, path, f"a click-guided {decoder} with encoder {encoder}")
        return cls(for_inference(model), metadata, **kwargs)

    def _check(self, prompt: Prompt) -> None:
        if prompt.box is None:
            raise PromptError(
                f"model {self.name} needs a box around the polyp first (clicks then correct its mask); "
                "clicks alone work with sam2"
            )
        if len(prompt.points) > MAX_CLICKS:
            raise PromptError(f"{len(prompt.points)} clicks in one request; at most {MAX_CLICKS}")

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """One pass: the crop's polyp probability and the presence probability."""
        self.forward_passes += 1
        probability, presence = self.run_network(x)
        assert presence is not None, "a click model has a presence head"
        return probability, presence

    def answer(self, image: np.ndarray, prompt: Prompt, digest: str = "") -> tuple[np.ndarray, float, Box]:
        """The crop probability after the last click, the presence, and the crop's window."""
        self._check(prompt)
        assert prompt.box is not None
        height, width = image.shape[:2]
        window = click_window(self.geometry, prompt, width, height)
        points = prompt.points
        size = self.geometry.size
        digest = digest or image_digest(image)
        key = (self.version, digest, prompt.box, window)
        # The longest replayed prefix in the cache. A caller's own previous mask stands in for
        # the model's answer before the first click and starts a fresh replay, whose answers
        # are not cached: the cache holds only what the box and clicks alone lead to.
        own_mask = prompt.previous_mask is not None
        start, previous, presence = 0, None, 0.0
        if not own_mask:
            for k in range(len(points), -1, -1):
                cached = self.answers.get((*key, points[:k]))
                if cached is not None:
                    start, (previous, presence) = k + 1, cached
                    break
        if previous is None:
            previous = (
                self.geometry.crop_map(prompt.previous_mask, window)
                if prompt.previous_mask is not None
                else np.zeros((size, size), dtype=np.float32)
            )
        base = self.geometry.make_input(image, prompt.box, window)
        for k in range(start, len(points) + 1):
            previous, presence = self.forward(add_click_channels(base, window, points[:k], previous))
            if not own_mask:
                self.answers.put((*key, points[:k]), (previous, presence))
        return previous, presence, window

    def _segment(self, prepared: PreparedImage, prompt: Prompt) -> Prediction:
        image = prepared.image
        height, width = image.shape[:2]
        crop, presence, window = self.answer(image, prompt, prepared.digest)
        probability = self.geometry.paste(crop, window, width, height)
        mask = self._mask(probability, prompt)
        return Prediction(mask=mask, score=mean_inside(probability, mask), presence=presence)

    def _mask(self, probability: np.ndarray, prompt: Prompt) -> np.ndarray:
        """The polyp at the threshold; where that is empty, the model's best guess (its most
        likely pixels in the box, or the ellipse in the box where it has none): never empty."""
        assert prompt.box is not None
        mask = clean_mask(probability > self.threshold, prompt)
        if mask.any():
            return mask
        b = prompt.box
        in_box = probability[int(b.y1) : int(np.ceil(b.y2)), int(b.x1) : int(np.ceil(b.x2))]
        peak = float(in_box.max()) if in_box.size else 0.0
        if peak > 0.01:
            mask = clean_mask(probability > peak / 2, prompt)
            if mask.any():
                return mask
        return ellipse_in_box(b, probability.shape[1], probability.shape[0])
