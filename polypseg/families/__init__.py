"""Model families: what each kind of model is, in one record, and the one list of them.

A family says how to load a checkpoint of its kind, what prompts it needs, whether a working
size can be chosen, which video tracker suits it and how it is retrained. Everything else
(the predictor factory, the CLI, retraining, the trackers and the platform adapters) asks the
family instead of testing model names. Adding a family is one module here and one line in
FAMILY_MODULES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polypseg.errors import CheckpointError, ModelError

if TYPE_CHECKING:
    import torch

State = dict[str, "torch.Tensor"]
Metadata = dict[str, Any]


# POLYPSEG_TTA: which models look at mirror images too (test-time augmentation), off by default.
TTA_SETTINGS = {"0": (), "1": ("detect", "segment"), "detector": ("detect",), "segmenter": ("segment",)}


def test_time_augmentation(task: str) -> bool:
    """Whether models of this task ("detect" or "segment") use test-time augmentation:
    POLYPSEG_TTA=1 for every model, `detector` or `segmenter` for those only. The detector's
    mirror image gains the most for its cost (docs/models.md: on the validation split, recall
    0.904 against 0.894 at precision 0.86, and 0.875 against 0.827 under motion blur, for
    twice the detector's work); the U-Nets' gain about half an IoU point for three times theirs."""
    from polypseg.environment import Environment

    return task in TTA_SETTINGS[Environment().choice("POLYPSEG_TTA", tuple(TTA_SETTINGS), "0")]


@dataclass(frozen=True)
class ModelFamily:
    name: str  # the `architecture` a checkpoint's metadata names
    summary: str
    # (state dict, metadata, checkpoint path, device, options) -> a predictor (or detector)
    load: Callable[..., Any]
    task: str = "segment"  # "segment" (prompted masks) or "detect" (boxes without a prompt)
    needs_box: bool = True  # clicks alone are refused; clicks after a box refine (or pick parts)
    learns_from_clicks: bool = False  # clicks change the mask in place (not only pick its parts)
    working_size: bool = False  # --sam2-size / a working resolution may be chosen
    # The video tracker that suits it: (on a GPU?) -> "classical" or "sam2"
    tracker: Callable[[bool], str] = lambda on_gpu: "classical"
    # Retrain from a checkpoint of this family: (base checkpoint, its metadata, the shared
    # training options) -> the new best checkpoint; None where the family is not retrained.
    retrain: Callable[[Path, Metadata, dict[str, Any]], Path] | None = None
    # Recognise a foreign checkpoint (no polypseg metadata) of this family from its weights.
    recognise: Callable[[State], bool] | None = None


FAMILY_MODULES = ("box_unet", "click_unet", "sam2", "detector")

_FAMILIES: dict[str, ModelFamily] = {}


def families() -> dict[str, ModelFamily]:
    """Every family by name (loaded once, in FAMILY_MODULES order)."""
    if not _FAMILIES:
        for module in FAMILY_MODULES:
            for family in importlib.import_module(f"polypseg.families.{module}").FAMILIES:
                _FAMILIES[family.name] = family
    return _FAMILIES


def family(name: str) -> ModelFamily:
    known = families()
    if name not in known:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(known)}")
    return known[name]


def segmenter_names() -> tuple[str, ...]:
    """The families that answer prompts (what --model chooses from)."""
    return tuple(name for name, f in families().items() if f.task == "segment")


def family_of(state: State, metadata: Metadata, path: str | Path) -> ModelFamily:
    """The family a checkpoint belongs to: from its metadata, else recognised from its weights."""
    name = metadata.get("architecture")
    if name is None:
        for candidate in families().values():
            if candidate.recognise is not None and candidate.recognise(state):
                return candidate
    if name not in families():
        raise CheckpointError(f"{path}: not a checkpoint of a known model ({', '.join(families())})")
    return families()[name]
