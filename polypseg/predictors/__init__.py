"""Image predictors: a model that turns an image and a prompt into a polyp mask."""

from polypseg.predictors.base import ImagePredictor, Prediction, PreparedImage
from polypseg.predictors.registry import build_predictor, default_checkpoint

__all__ = [
    "ImagePredictor",
    "Prediction",
    "PreparedImage",
    "build_predictor",
    "default_checkpoint",
]
