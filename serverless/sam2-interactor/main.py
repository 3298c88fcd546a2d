"""CVAT interactor: SAM2 (official sam2.1 weights or a polypseg fine-tune). A box, clicks, or
both to the polyp's mask; further clicks on the same frame reuse its image embedding."""

import os

from polypseg.predictors import build_predictor
from serverless.cvat.handlers import InteractorFunction, respond


def init_context(context):
    checkpoint = os.environ.get("POLYPSEG_CHECKPOINT", "/opt/nuclio/sam2.1_hiera_tiny.pt")
    size = int(os.environ["POLYPSEG_SAM2_SIZE"]) if os.environ.get("POLYPSEG_SAM2_SIZE") else None
    predictor = build_predictor("sam2", checkpoint, image_size=size)
    context.user_data.function = InteractorFunction(predictor, needs_box=False)
    context.logger.info(f"polypseg SAM2 interactor ready: {predictor.version}")


def handler(context, event):
    return respond(context, context.user_data.function, event)
