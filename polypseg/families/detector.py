"""The polyp detectors: a whole-frame segmenter whose regions become scored boxes, and a box
detector (FCOS). Both answer the same calls (polypseg.detector.PolypDetector)."""

from __future__ import annotations

from typing import Any

from polypseg.families import Metadata, ModelFamily, State, test_time_augmentation


def load_map_detector(state: State, metadata: Metadata, path: str, **options: Any) -> Any:
    from polypseg.detector import MapDetector

    options.setdefault("tta", test_time_augmentation("detect"))
    return MapDetector.from_state(state, metadata, path, **options)


def load_fcos_detector(state: State, metadata: Metadata, path: str, **options: Any) -> Any:
    from polypseg.detector import FcosDetector

    options.setdefault("tta", test_time_augmentation("detect"))
    return FcosDetector.from_state(state, metadata, path, **options)


FAMILIES = [
    ModelFamily(
        "detector",
        "polyp detector, whole-frame segmenter (no prompt: boxes with scores)",
        load_map_detector,
        task="detect",
    ),
    ModelFamily(
        "fcos-detector",
        "polyp box detector, FCOS (no prompt: boxes with scores)",
        load_fcos_detector,
        task="detect",
    ),
]
