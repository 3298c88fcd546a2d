"""The same interactor and tracker as `cvat_sdk.auto_annotation` functions, for CVAT Online and
Enterprise (agent-based functions are not part of open-source CVAT): register and run them as
an agent,

    cvat-cli function create-native "polypseg tracker" --function-module backends.cvat.agent_tracker
    cvat-cli function run-agent FUNCTION_ID --function-module backends.cvat.agent_tracker

(`-p checkpoint=str:FILE`, `-p tracker=str:sam2` choose the model and tracker; the classical
tracker re-acquires a lost polyp with the detector unless `-p reacquire=bool:false`). Tracking states
stay in the agent's process, which CVAT's agent protocol expects. The tracker declares
rectangles, polygons and masks; which of them a CVAT edition's UI offers to track is its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import PIL.Image
from cvat_sdk import models
from cvat_sdk.auto_annotation import (
    InteractionFunctionSpec,
    InteractionResultAttributes,
    InteractionResultShape,
    TrackableShape,
    TrackingFunctionSpec,
)

from backends.cvat.protocol import parse_shape
from polypseg.formats.cvat_mask import encode_cvat_mask
from polypseg.images import as_rgb
from polypseg.predictors.base import ImagePredictor, PreparedImage
from polypseg.prompts import Box, Point, Prompt
from polypseg.video.tracking import VideoTracker


class PolypInteraction:
    """Box and clicks to a polyp mask (CVAT's UI takes masks from interaction functions)."""

    def __init__(self, predictor: ImagePredictor) -> None:
        self.predictor = predictor
        from polypseg.families import family

        needs_box = family(predictor.name).needs_box
        self.spec = InteractionFunctionSpec(
            min_pos_points=0, min_neg_points=0, min_bounding_boxes=1 if needs_box else 0
        )

    def preprocess_image(self, context: Any, image: PIL.Image.Image) -> PreparedImage:
        return self.predictor.prepare(as_rgb(np.asarray(image)))

    def detect(self, context: Any, pp_image: PreparedImage, prompts: Any) -> list[InteractionResultShape]:
        box = prompts.bounding_box
        points = [Point(x, y, True) for x, y in prompts.pos_points]
        points += [Point(x, y, False) for x, y in prompts.neg_points]
        prompt = Prompt(box=Box(*box[0], *box[1]) if box else None, points=tuple(points))
        prediction = self.predictor.segment(pp_image, prompt)
        if not prediction.mask.any():
            return []
        confidence = models.AttributeValRequest(
            spec_id=InteractionResultAttributes.CONFIDENCE, value=f"{prediction.score:.4f}"
        )
        return [
            InteractionResultShape(
                type="mask", points=encode_cvat_mask(prediction.mask), attributes=[confidence]
            )
        ]


class PolypTracking:
    """Rectangles, polygons and masks followed from frame to frame."""

    spec = TrackingFunctionSpec(supported_shape_types={"rectangle", "polygon", "mask"})

    def __init__(self, tracker: VideoTracker) -> None:
        self.tracker = tracker

    def preprocess_image(self, context: Any, image: PIL.Image.Image) -> np.ndarray:
        return as_rgb(np.asarray(image))

    def init_tracking_state(
        self, context: Any, pp_image: np.ndarray, shape: TrackableShape
    ) -> dict[str, Any]:
        tracked = parse_shape({"type": shape.type, "points": list(shape.points)})
        height, width = pp_image.shape[:2]
        _, state = self.tracker.start(0, pp_image, tracked.prompt(width, height))
        return {"shape": tracked, "state": state, "step": 0}

    def track(self, context: Any, pp_image: np.ndarray, state: dict[str, Any]) -> TrackableShape | None:
        state["step"] += 1
        result, state["state"] = self.tracker.step(state["state"], state["step"], pp_image)
        found = state["shape"].followed(result.mask, result.box)
        if result.lost or found is None:
            return None  # the agent protocol's "not found on this frame"
        return TrackableShape(type=found.kind, points=found.points)
