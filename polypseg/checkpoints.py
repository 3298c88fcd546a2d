"""Checkpoint files: `{"model": state_dict, "polypseg": metadata}`.

This is SAM2's own layout (`{"model": ...}`) plus the project's metadata, so one loader reads
the official SAM2 files and the project's. The metadata makes a file enough to rebuild its
model: architecture, encoder, input geometry, version, training data, validation metrics.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from polypseg.atomic import atomic_output
from polypseg.errors import CheckpointError

Metadata = dict[str, Any]


def save_checkpoint(
    path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], metadata: Metadata, **extra: Any
) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never a part."""
    with atomic_output(path) as handle:
        torch.save({"model": state_dict, "polypseg": metadata, **extra}, handle)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], Metadata, dict[str, Any]]:
    """Read a checkpoint safely (weights_only): its state dict, metadata ({} for foreign files)
    and any other top-level entries (optimizer state of a training checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_why_unreadable(path, exc)}); expected a .pt "
            "file of model weights saved by torch.save (a polypseg checkpoint or an official SAM2 one)"
        ) from None
    if not isinstance(content, dict) or not isinstance(content.get("model"), dict):
        raise CheckpointError(f"{path}: not a model checkpoint (no 'model' state dict in it)")
    extra = {k: v for k, v in content.items() if k not in ("model", "polypseg")}
    return content["model"], dict(content.get("polypseg") or {}), extra


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: object, what: str) -> None:
    """`state` (fp16 or fp32) into `model`; weights that do not fit are a CheckpointError naming
    `source` (a file) and `what` the model is."""
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit {what} ({str(exc).splitlines()[0]})") from None


def _why_unreadable(path: Path, exc: Exception) -> str:
    """One short reason, in place of torch's paragraph (which suggests `weights_only=False`, the
    very thing a file of unknown origin must not get)."""
    if unsupported := re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc)):
        return f"it holds a pickled {unsupported[1]}, and only tensors and plain data are loaded"
    with path.open("rb") as handle:
        head = handle.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip (or, long ago, a pickle)
        return "it is not a file written by torch.save"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"it is damaged or truncated: {first_line[:200]}"
