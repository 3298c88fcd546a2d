"""CVAT interactor: SAM2 (official sam2.1 weights or a polypseg fine-tune). A box, clicks, or
both to the polyp's mask; further clicks on the same frame reuse its image embedding."""

import os
from pathlib import Path

from backends.cvat.handlers import InteractorFunction, respond, served_model
from polypseg.predictors import build_predictor


def init_context(context):
    os.environ.setdefault("POLYPSEG_CHECKPOINT", "/opt/nuclio/sam2.1_hiera_tiny.pt")
    size = int(os.environ["POLYPSEG_SAM2_SIZE"]) if os.environ.get("POLYPSEG_SAM2_SIZE") else None

    def load(path: Path | None):
        return build_predictor("sam2", path or os.environ["POLYPSEG_CHECKPOINT"], image_size=size)

    model = served_model(load)
    context.user_data.function = InteractorFunction(model, needs_box=False)
    context.logger.info(f"polypseg SAM2 interactor ready: {model.get().version}")


def handler(context, event):
    return respond(context, context.user_data.function, event)
