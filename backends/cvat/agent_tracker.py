"""`cvat-cli ... --function-module backends.cvat.agent_tracker`: see backends.cvat.agents."""

from __future__ import annotations

from backends.cvat.agents import PolypTracking
from polypseg.detection_job import build_detector
from polypseg.predictors import build_predictor
from polypseg.video.tracking_job import build_tracker


def create(
    checkpoint: str | None = None,
    tracker: str = "classical",
    device: str | None = None,
    reacquire: bool = True,
    detector: str | None = None,
) -> PolypTracking:
    """As the nuclio tracker: the classical tracker looks for a lost polyp with the detector
    (`detector`, else the shipped one; `reacquire=False`: only where it was lost)."""
    finder = build_detector(detector, device) if reacquire and tracker == "classical" else None
    return PolypTracking(build_tracker(tracker, build_predictor(None, checkpoint, device), finder))
