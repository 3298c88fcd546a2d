"""CVAT interactor: the shipped polypseg U-Net. A box around the polyp (and optional clicks
that choose which parts to keep) to the polyp's mask."""

from backends.cvat.handlers import InteractorFunction, respond, served_model
from polypseg.predictors import build_predictor


def init_context(context):
    # MODEL_DIR's current version (followed as retraining promotes new ones), else
    # POLYPSEG_CHECKPOINT, else the model polypseg ships.
    model = served_model(lambda path: build_predictor(None, path))
    context.user_data.function = InteractorFunction(model, needs_box=True)
    context.logger.info(f"polypseg U-Net interactor ready: {model.get().version}")


def handler(context, event):
    return respond(context, context.user_data.function, event)
