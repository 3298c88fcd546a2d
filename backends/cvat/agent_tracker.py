"""`cvat-cli ... --function-module backends.cvat.agent_tracker`: see backends.cvat.agents."""

from __future__ import annotations

from backends.cvat.agents import PolypTracking
from polypseg.predictors import build_predictor
from polypseg.video.tracking_job import build_tracker


def create(
    checkpoint: str | None = None, tracker: str = "classical", device: str | None = None
) -> PolypTracking:
    return PolypTracking(build_tracker(tracker, build_predictor(None, checkpoint, device)))
