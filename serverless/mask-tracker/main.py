"""CVAT tracker: a polyp's rectangle on one frame followed onto the next frames (what CVAT's
UI tracks); polygons and masks too for callers that send them (POLYPSEG_TRACK_SHAPES narrows
the kinds). Classical (box tracker + the shipped U-Net) on CPU; SAM2's memory with
POLYPSEG_TRACKER=sam2 and a SAM2 checkpoint. States live in CVAT's Redis (CVAT_REDIS_HOST),
else in this process."""

import os

from backends.cvat.handlers import TrackerFunction, respond, served_model, tracked_shape_kinds
from backends.cvat.state_store import state_store_from_env
from polypseg.predictors import build_predictor


def init_context(context):
    kind = os.environ.get("POLYPSEG_TRACKER", "classical")
    size = int(os.environ["POLYPSEG_SAM2_SIZE"]) if os.environ.get("POLYPSEG_SAM2_SIZE") else None
    options = {"image_size": size} if kind == "sam2" and size else {}
    model = served_model(lambda path: build_predictor(None, path, **options))
    store = state_store_from_env()
    kinds = tracked_shape_kinds(os.environ.get("POLYPSEG_TRACK_SHAPES"))
    context.user_data.function = TrackerFunction(model, kind, store, kinds)
    context.logger.info(
        f"polypseg {kind} tracker ready: {model.get().version}, follows {', '.join(kinds)}, "
        f"states in {type(store).__name__}"
    )


def handler(context, event):
    return respond(context, context.user_data.function, event)
