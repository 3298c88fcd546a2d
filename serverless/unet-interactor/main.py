"""CVAT interactor: the shipped polypseg U-Net. A box around the polyp (and optional clicks
that choose which parts to keep) to the polyp's mask."""

from polypseg.predictors import build_predictor
from serverless.cvat.handlers import InteractorFunction, respond


def init_context(context):
    # POLYPSEG_CHECKPOINT may name a retrained model; default: the one polypseg ships.
    context.user_data.function = InteractorFunction(build_predictor(), needs_box=True)
    context.logger.info(f"polypseg U-Net interactor ready: {context.user_data.function.predictor.version}")


def handler(context, event):
    return respond(context, context.user_data.function, event)
