"""CVAT interactor: the shipped polypseg click-guided U-Net. A box around the polyp, then
positive and negative clicks that correct its mask."""

from backends.cvat.handlers import InteractorFunction, respond
from backends.cvat.settings import CvatSettings
from polypseg.families import family
from polypseg.predictors import build_predictor


def init_context(context):
    settings = CvatSettings.from_env()
    # MODEL_DIR's current version (followed as retraining promotes new ones), else
    # POLYPSEG_CHECKPOINT, else the model polypseg ships.
    model = settings.current_model(
        lambda path: build_predictor(settings.model, path, settings.device, **settings.predictor_options())
    )
    context.user_data.function = InteractorFunction(model, needs_box=family(model.get().name).needs_box)
    context.logger.info(f"polypseg U-Net interactor ready: {model.get().version}")


def handler(context, event):
    return respond(context, context.user_data.function, event)
