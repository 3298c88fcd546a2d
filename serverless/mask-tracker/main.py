"""CVAT tracker: a polyp's rectangle on one frame followed onto the next frames (what CVAT's
UI tracks); polygons and masks too for callers that send them (POLYPSEG_TRACK_SHAPES narrows
the kinds). Classical (box tracker + the shipped U-Net) on CPU; SAM2's memory with
POLYPSEG_TRACKER=sam2 and a SAM2 checkpoint. The classical tracker looks for a lost polyp with
the polyp detector (POLYPSEG_DETECTOR, else the shipped one; POLYPSEG_REACQUIRE=0: only where it
was lost). States live in CVAT's Redis (CVAT_REDIS_HOST), else in this process."""

from backends.cvat.handlers import TrackerFunction, respond
from backends.cvat.settings import CvatSettings
from backends.cvat.state_store import state_store
from polypseg.detection_job import build_detector
from polypseg.predictors import build_predictor


def init_context(context):
    settings = CvatSettings.from_env()
    options = settings.predictor_options()
    name = settings.model
    if settings.tracker == "sam2":
        # SAM2's memory needs a SAM2 model: a MODEL_DIR whose current version is another kind is
        # passed over for POLYPSEG_CHECKPOINT (and logged) rather than failing every call.
        name = "sam2"
    elif settings.tracker == "classical":
        options.pop("image_size", None)  # SAM2's working size is for its own tracker only
    model = settings.current_model(lambda path: build_predictor(name, path, settings.device, **options))
    kind = settings.tracker_for(model.get())
    store = state_store(settings.redis_host, settings.redis_port, settings.redis_password, settings.track_ttl)
    reacquire = kind == "classical" and settings.reacquire
    detector = build_detector(settings.detector, settings.device) if reacquire else None
    context.user_data.function = TrackerFunction(model, kind, store, settings.track_shapes, detector)
    context.logger.info(
        f"polypseg {kind} tracker ready: {model.get().version}, follows {', '.join(settings.track_shapes)}, "
        f"re-acquires with {detector.version if detector else 'nothing'}, states in {type(store).__name__}"
    )


def handler(context, event):
    return respond(context, context.user_data.function, event)
