"""CVAT interactor: SAM2 (official sam2.1 weights or a polypseg fine-tune). A box, clicks, or
both to the polyp's mask; further clicks on the same frame reuse its image embedding."""

from pathlib import Path

from backends.cvat.handlers import InteractorFunction, respond
from backends.cvat.settings import CvatSettings
from polypseg.predictors import build_predictor

# The official weights the image downloads at build time (function.yaml).
SAM2_TINY = Path("/opt/nuclio/sam2.1_hiera_tiny.pt")


def init_context(context):
    settings = CvatSettings.from_env()
    model = settings.current_model(
        lambda path: build_predictor("sam2", path, settings.device, **settings.predictor_options()),
        fallback=SAM2_TINY,
    )
    context.user_data.function = InteractorFunction(model, needs_box=False)
    context.logger.info(f"polypseg SAM2 interactor ready: {model.get().version}")


def handler(context, event):
    return respond(context, context.user_data.function, event)
