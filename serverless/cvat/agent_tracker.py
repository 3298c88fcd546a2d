"""`cvat-cli ... --function-module serverless.cvat.agent_tracker`: see serverless.cvat.agents."""

from __future__ import annotations

from polypseg.predictors import build_predictor
from polypseg.video.tracking_job import build_tracker
from serverless.cvat.agents import PolypTracking


def create(
    checkpoint: str | None = None, tracker: str = "classical", device: str | None = None
) -> PolypTracking:
    return PolypTracking(build_tracker(tracker, build_predictor(None, checkpoint, device)))
