"""Build a predictor from a model name and a checkpoint file (the family says how).

A project checkpoint names its own architecture, so `--checkpoint` alone is enough; an
official SAM2 file (`{"model": ...}` only) is recognised from its weights. With neither name
nor checkpoint, the model the project ships is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from polypseg.checkpoints import load_checkpoint
from polypseg.environment import Environment
from polypseg.errors import CheckpointError, ModelError
from polypseg.families import family_of, segmenter_names
from polypseg.predictors.base import ImagePredictor

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default.pt"


def default_checkpoint() -> Path:
    """The shipped default model, or the file named by POLYPSEG_CHECKPOINT (set and not empty,
    as the servers read it)."""
    return Environment().path("POLYPSEG_CHECKPOINT") or DEFAULT_MODEL


def resolve_device(device: str | None = None) -> str:
    """`DEVICE` as Label Studio and CVAT users set it: cpu, cuda, cuda:N, or auto."""
    device = (device or os.environ.get("DEVICE") or "auto").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed: torch.device | None = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ModelError(f"device {device!r} (--device or DEVICE): one of cpu, cuda, cuda:N, auto")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelError(f"DEVICE={device} asked for, but this machine has no usable CUDA GPU")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ModelError(f"DEVICE={device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def build_predictor(
    name: str | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    device: str | None = None,
    **options: Any,
) -> ImagePredictor:
    """The predictor for `name` from `checkpoint`; either may be left out (see module doc)."""
    if name is not None and name not in segmenter_names():
        raise ModelError(f"unknown model {name!r}; known: {', '.join(segmenter_names())}")
    path = Path(checkpoint) if checkpoint is not None else default_checkpoint()
    state, metadata, _ = load_checkpoint(path)
    found = family_of(state, metadata, path)
    if found.task != "segment":
        raise CheckpointError(f"{path} holds a {found.name}, not a prompted segmentation model")
    if name is not None and name != found.name:
        if checkpoint is None:
            raise ModelError(
                f"no checkpoint given for model {name!r} (the default is a {found.name}): "
                "pass one with --checkpoint"
            )
        raise CheckpointError(f"{path} holds a {found.name} model, not {name}")
    if not found.working_size and options.pop("image_size", None):
        raise ModelError(f"{path} holds a {found.name} model: a working size (--sam2-size) is for SAM2")
    return found.load(state, metadata, str(path), device=resolve_device(device), **options)
