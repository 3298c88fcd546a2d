"""`cvat-cli ... --function-module backends.cvat.agent_interactor`: see backends.cvat.agents."""

from __future__ import annotations

from backends.cvat.agents import PolypInteraction
from polypseg.predictors import build_predictor


def create(checkpoint: str | None = None, device: str | None = None) -> PolypInteraction:
    return PolypInteraction(build_predictor(None, checkpoint, device))
