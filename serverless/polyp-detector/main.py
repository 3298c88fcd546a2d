"""CVAT detector (automatic annotation): every polyp on a frame as a mask. The polypseg
detector finds the polyps (POLYPSEG_DETECTOR, else the shipped one), the box model outlines
each from its box (MODEL_DIR's current version, else POLYPSEG_CHECKPOINT, else the shipped
U-Net)."""

from backends.cvat.handlers import DetectorFunction, respond
from backends.cvat.settings import CvatSettings
from polypseg.detection_job import build_detector
from polypseg.predictors import build_predictor


def init_context(context):
    settings = CvatSettings.from_env()
    detector = build_detector(settings.detector, settings.device)
    model = settings.current_model(
        lambda path: build_predictor(settings.model, path, settings.device, **settings.predictor_options())
    )
    context.user_data.function = DetectorFunction(detector, model)
    context.logger.info(
        f"polypseg detector ready: {detector.version} (score floor {detector.threshold:g}), "
        f"masks by {model.get().version}"
    )


def handler(context, event):
    return respond(context, context.user_data.function, event)
