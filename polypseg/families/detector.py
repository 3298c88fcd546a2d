"""The polyp detector: a whole-frame segmenter whose regions become scored boxes."""

from __future__ import annotations

from typing import Any

from polypseg.families import Metadata, ModelFamily, State


def load(state: State, metadata: Metadata, path: str, **options: Any) -> Any:
    from polypseg.detector import PolypDetector

    options.pop("tta", None)
    return PolypDetector.from_state(state, metadata, path, **options)


FAMILIES = [ModelFamily("detector", "polyp detector (no prompt: boxes with scores)", load, task="detect")]
