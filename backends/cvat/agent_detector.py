"""The polyp detector as a `cvat_sdk.auto_annotation` detection function, for pre-annotating a
task from a machine with polypseg installed, against any CVAT (open-source included):

    cvat-cli --server-host CVAT_URL --auth USER task auto-annotate TASK_ID \\
        --function-module backends.cvat.agent_detector [--conf-threshold 0.5] \\
        [--conv-mask-to-poly] [-p detector=str:FILE -p checkpoint=str:FILE -p device=str:cuda]

Every polyp the detector finds becomes a mask (a polygon with --conv-mask-to-poly) of the task's
label "polyp", outlined by the box model from the detection's box. --conf-threshold replaces
the detector's own score floor. cvat_sdk's driver (2.80) handles image tasks only: it downloads
every chunk first and refuses tasks stored as video chunks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
from cvat_sdk import models
from cvat_sdk.auto_annotation import DetectionFunctionSpec, label_spec, mask, polygon

from polypseg.detection_job import find_polyps
from polypseg.detector import PolypDetector
from polypseg.formats.cvat_mask import encode_cvat_mask
from polypseg.formats.polygons import largest_outline
from polypseg.images import as_rgb
from polypseg.predictors.base import ImagePredictor


class PolypDetection:
    """A frame to one mask (or polygon, where the caller asks) per detected polyp."""

    def __init__(self, detector: PolypDetector, predictor: ImagePredictor, label: str = "polyp") -> None:
        self.detector, self.predictor = detector, predictor
        self.spec = DetectionFunctionSpec(labels=[label_spec(label, 0, type="mask")])

    def detect(self, context: Any, image: PIL.Image.Image) -> list[models.LabeledShapeRequest]:
        frame = as_rgb(np.asarray(image))
        found = find_polyps(self.detector, self.predictor, frame, context.conf_threshold)
        return shapes_of([p.mask for p in found.polyps], context.conv_mask_to_poly)


def shapes_of(masks: list[np.ndarray], as_polygons: bool) -> list[models.LabeledShapeRequest]:
    """Polyp masks as shapes of the function's label 0: each a mask, or with `as_polygons`
    (CVAT's "convert masks to polygons") its largest outline; an empty mask, or a speck with
    no outline, gives none."""
    shapes = []
    for found in masks:
        if not found.any():
            continue
        if not as_polygons:
            shapes.append(mask(0, encode_cvat_mask(found)))
        elif outline := largest_outline(found):
            shapes.append(polygon(0, outline))
    return shapes


def create(
    detector: str | None = None, checkpoint: str | None = None, device: str | None = None
) -> PolypDetection:
    from polypseg.detection_job import build_detector
    from polypseg.predictors import build_predictor

    return PolypDetection(build_detector(detector, device), build_predictor(None, checkpoint, device))
