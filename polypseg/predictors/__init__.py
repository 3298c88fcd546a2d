"""Image predictors: a model that turns an image and a prompt into a polyp mask."""

from polypseg.predictors.base import ImagePredictor, Prediction, PreparedImage
from polypseg.predictors.registry import MODEL_NAMES, build_predictor, default_checkpoint

__all__ = [
    "MODEL_NAMES",
    "ImagePredictor",
    "Prediction",
    "PreparedImage",
    "build_predictor",
    "default_checkpoint",
]
