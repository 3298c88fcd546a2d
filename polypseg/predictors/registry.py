"""Build a predictor from a model name and a checkpoint file.

A project checkpoint names its own architecture, so `--checkpoint` alone is enough; an
official SAM2 file (`{"model": ...}` only) is recognised from its weights. With neither name
nor checkpoint, the model the project ships is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from polypseg.checkpoints import load_checkpoint
from polypseg.errors import CheckpointError, ModelError
from polypseg.predictors.base import ImagePredictor

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default.pt"


def _box_channel(
    state: dict[str, torch.Tensor], metadata: dict[str, Any], path: str, **kw: Any
) -> ImagePredictor:
    from polypseg.predictors.box_channel import BoxChannelPredictor

    # POLYPSEG_TTA=1: test-time augmentation, off by default (docs/models.md: +0.2 to +0.9 IoU
    # points for three times the latency)
    kw.setdefault("tta", os.environ.get("POLYPSEG_TTA") == "1")
    if kw.get("image_size"):
        raise ModelError(
            f"{path} holds a {metadata.get('architecture')} model: a working size (--sam2-size) is for SAM2"
        )
    kw.pop("image_size", None)
    return BoxChannelPredictor.from_state(state, metadata, path, **kw)


def _click_unet(
    state: dict[str, torch.Tensor], metadata: dict[str, Any], path: str, **kw: Any
) -> ImagePredictor:
    from polypseg.predictors.click_unet import ClickUnetPredictor

    if kw.pop("image_size", None):
        raise ModelError(f"{path} holds a click-guided U-Net: a working size (--sam2-size) is for SAM2")
    kw.pop("tta", None)
    return ClickUnetPredictor.from_state(state, metadata, path, **kw)


def _sam2(state: dict[str, torch.Tensor], metadata: dict[str, Any], path: str, **kw: Any) -> ImagePredictor:
    from polypseg.predictors.sam2 import Sam2Predictor

    return Sam2Predictor.from_state(state, metadata, path, **kw)


# name -> factory(state_dict, metadata, checkpoint path, **options)
REGISTRY: dict[str, Callable[..., ImagePredictor]] = {
    "unet": _box_channel,
    "unetplusplus": _box_channel,
    "clickunet": _click_unet,
    "sam2": _sam2,
}
MODEL_NAMES = tuple(REGISTRY)


def default_checkpoint() -> Path:
    """The shipped default model, or the file named by POLYPSEG_CHECKPOINT."""
    return Path(os.environ.get("POLYPSEG_CHECKPOINT", DEFAULT_MODEL))


def resolve_device(device: str | None = None) -> str:
    """`DEVICE` as Label Studio and CVAT users set it: cpu, cuda, cuda:N, or auto."""
    device = (device or os.environ.get("DEVICE") or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"DEVICE={device} asked for, but this machine has no usable CUDA GPU")
    return device


def build_predictor(
    name: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | None = None,
    **options: Any,
) -> ImagePredictor:
    """The predictor for `name` from `checkpoint`; either may be left out (see module doc)."""
    if name is not None and name not in REGISTRY:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    state, metadata, _ = load_checkpoint(path)
    if not metadata:
        metadata = {"architecture": "sam2"} if any(k.startswith("image_encoder.") for k in state) else {}
    architecture = metadata.get("architecture")
    if architecture not in REGISTRY:
        raise CheckpointError(f"{path}: not a checkpoint of a known model ({', '.join(MODEL_NAMES)})")
    if name is not None and name != architecture:
        if checkpoint is None:
            raise ModelError(
                f"no checkpoint given for model {name!r} (the default is a {architecture}): "
                "pass one with --checkpoint"
            )
        raise CheckpointError(f"{path} holds a {architecture} model, not {name}")
    return REGISTRY[architecture](state, metadata, str(path), device=resolve_device(device), **options)
