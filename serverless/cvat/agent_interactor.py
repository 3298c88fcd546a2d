"""`cvat-cli ... --function-module serverless.cvat.agent_interactor`: see serverless.cvat.agents."""

from __future__ import annotations

from polypseg.predictors import build_predictor
from serverless.cvat.agents import PolypInteraction


def create(checkpoint: str | None = None, device: str | None = None) -> PolypInteraction:
    return PolypInteraction(build_predictor(None, checkpoint, device))
