"""CVAT interactor: the shipped polypseg U-Net. A box around the polyp (and optional clicks
that choose which parts to keep) to the polyp's mask."""

from backends.cvat.handlers import InteractorFunction, respond
from backends.cvat.settings import CvatSettings
from polypseg.predictors import build_predictor


def init_context(context):
    settings = CvatSettings.from_env()
    # MODEL_DIR's current version (followed as retraining promotes new ones), else
    # POLYPSEG_CHECKPOINT, else the model polypseg ships.
    model = settings.current_model(
        lambda path: build_predictor(settings.model, path, settings.device, **settings.predictor_options())
    )
    context.user_data.function = InteractorFunction(model, needs_box=True)
    context.logger.info(f"polypseg U-Net interactor ready: {model.get().version}")


def handler(context, event):
    return respond(context, context.user_data.function, event)
