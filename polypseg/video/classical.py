"""The classical tracker: optical flow carries the box, the image predictor segments.

On each frame the median optical flow of the box (`box_motion.follow_box`), from the last frame
where the polyp was found, proposes where the polyp moved; the box-prompted model segments
inside that box; the mask's tight box is where the next frame's flow starts, so it does not
drift. Where the flow fails, the last good box is searched instead. A frame is lost when the
model is unsure, the mask is a speck, or it jumps in size or colour away from the
polyp it has followed. Without a detector, each lost frame is tried again at the last good
box, so the track picks up when the polyp returns near where it left. With one, the detector
alone looks for a lost polyp (near the last place first, then the whole frame), and a
detection takes the track up again only when it is confirmed: the model outlines it surely,
the outline is of a size the polyp can have (within a factor of its size as first outlined),
and the detector finds it in the same place on several frames in a row. A detector's false
boxes are mostly one of two kinds, both refused by these checks: a box over most of the frame
(whose outline is far larger than the polyp) and a flicker on a fold (found on a frame or two).

Colour tells the followed polyp from other tissue, but the light of an endoscope changes
abruptly (a flash, a tint as the tip turns), and with it every colour in the frame. So while
the polyp was found on the frame before, a mask the model is sure of that stays where it was
(its box overlapping the last box) counts as the same polyp whatever its colour; a polyp found
again after a loss must look like the one outlined first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import cv2
import numpy as np
import torch

from polypseg.errors import PromptError
from polypseg.masks import mask_box
from polypseg.predictors.base import ImagePredictor, Prediction
from polypseg.prompts import Box, Prompt
from polypseg.video.box_motion import follow_box
from polypseg.video.tracking import TrackedFrame, VideoTracker, lost_frame


def colour_signature(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A normalised hue-saturation histogram of the masked pixels."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1], mask.astype(np.uint8), [18, 8], [0, 180, 0, 256])
    return np.asarray(histogram, dtype=np.float32).flatten() / max(float(histogram.sum()), 1.0)


# Smaller boxes are followed as this size: the flow's grid points would lie a pixel apart.
MIN_TRACKED_SIDE = 16


def followable_box(box: Box, width: int, height: int) -> Box:
    """`box` grown about its centre to at least MIN_TRACKED_SIDE pixels a side, and moved inside
    a width x height frame."""
    w, h = min(max(box.width, MIN_TRACKED_SIDE), width), min(max(box.height, MIN_TRACKED_SIDE), height)
    x = min(max((box.x1 + box.x2 - w) / 2, 0), width - w)
    y = min(max((box.y1 + box.y2 - h) / 2, 0), height - h)
    return Box(x, y, x + w, y + h)


class BoxDetector(Protocol):
    """What re-acquisition needs of a detector (polypseg.detector.PolypDetector)."""

    def detect(self, image: np.ndarray, min_score: float | None = None) -> list[Any]: ...


@dataclass(frozen=True)
class ClassicalState:
    """What the next frame needs: the last frame where the polyp was found, its box and mask
    area there, the colour signature of the polyp as first outlined (all None while lost
    from the start), whether the polyp was found on the frame just before, and what
    re-acquisition needs."""

    frame: np.ndarray | None = None
    box: Box | None = None
    area: float = 0.0
    signature: np.ndarray | None = None
    following: bool = False
    # Re-acquisition: the polyp's mask area as first outlined, and while lost, where the
    # detector last found a candidate and on how many frames in a row.
    outlined_area: float = 0.0
    candidate: Box | None = None
    sightings: int = 0


class ClassicalTracker(VideoTracker):
    kind = "classical"

    def __init__(
        self,
        predictor: ImagePredictor,
        min_score: float = 0.6,
        max_area_change: float = 2.5,
        min_area: int = 64,
        sure_score: float = 0.9,
        detector: BoxDetector | None = None,
        reacquire_score: float | None = None,
        reacquire_frames: int = 3,
        reacquire_size_change: float = 4.0,
    ) -> None:
        """`min_score`: the least model confidence x colour likeness to the followed polyp (0.6:
        measured in docs/benchmarks.md against 0.5 and 0.7);
        `max_area_change`: the largest factor the mask's area may jump by between frames;
        `min_area`: masks of fewer pixels are specks, not a polyp one could outline;
        `sure_score`: the least model confidence for a mask in the last one's place to count
        as the polyp when the light changed its colour (the clip's frames 175-176: 0.93, 0.94;
        tissue boxed out of view there: below 0.86).
        `detector`: re-acquires a lost polyp from detections scoring `reacquire_score` or more
        (default: the detector's own shipped floor, chosen on validation data), found in the
        same place (box IoU at least 0.3) on `reacquire_frames` lost frames in a row (3: an
        eighth of a second at 25 frames/s; one or two frames are how a fold flickers), whose
        outline's area is within a factor `reacquire_size_change` of the polyp's as first
        outlined (4: the polyp seen from twice or half as far)."""
        self.predictor = predictor
        self.min_score = min_score
        self.max_area_change = max_area_change
        self.min_area = min_area
        self.sure_score = sure_score
        self.min_presence = 0.5
        self.detector = detector
        self.reacquire_score = reacquire_score
        self.reacquire_frames = reacquire_frames
        self.reacquire_size_change = reacquire_size_change

    def start(self, index: int, image: np.ndarray, prompt: Prompt) -> tuple[TrackedFrame, ClassicalState]:
        prediction = self._anchor(image, prompt)
        box = mask_box(prediction.mask)
        if box is None:
            return lost_frame(index, image.shape, prediction.score), ClassicalState()
        signature = colour_signature(image, prediction.mask)
        area = float(prediction.mask.sum())
        state = ClassicalState(image, box, area, signature, following=True, outlined_area=area)
        return TrackedFrame(index, prediction.mask, box, prediction.score, False), state

    def step(
        self, state: ClassicalState, index: int, image: np.ndarray, correction: Prompt | None = None
    ) -> tuple[TrackedFrame, ClassicalState]:
        if correction is not None:
            return self.start(index, image, correction)
        if state.frame is None or state.box is None or state.signature is None:
            return lost_frame(index, image.shape, 0.0), state
        if self.detector is not None and not state.following:
            # lost: the detector alone says where the polyp is back, once it has confirmed it
            result, state = self._reacquire(index, image, state)
        else:
            result = self._follow_polyp(index, image, state)
            if result.lost and self.detector is not None:
                result, state = self._reacquire(index, image, state)
        if result.lost or result.box is None:
            return result, replace(state, following=False)
        area = float(result.mask.sum())
        return result, replace(
            state, frame=image, box=result.box, area=area, following=True, candidate=None, sightings=0
        )

    def _follow_polyp(self, index: int, image: np.ndarray, state: ClassicalState) -> TrackedFrame:
        """The polyp where the flow says it moved, else where it was last found."""
        assert state.frame is not None and state.box is not None
        proposal = self._follow(state.frame, state.box, image) or state.box
        result = self._segment(index, image, proposal, state)
        if result.lost and proposal != state.box:  # the flow may have drifted: try where it was
            result = self._segment(index, image, state.box, state)
        return result

    def _reacquire(
        self, index: int, image: np.ndarray, state: ClassicalState
    ) -> tuple[TrackedFrame, ClassicalState]:
        """The polyp found again by the detector, or the frame lost. This frame's candidate is
        the first detection (the one in the last candidate's place first, then those near the
        last box, its box grown by its own size on each side, then the rest, best first)
        whose outline passes the tracker's checks and is of the polyp's size; it takes the
        track up once found in the same place on `reacquire_frames` frames in a row."""
        assert self.detector is not None and state.box is not None and state.signature is not None
        detections = self.detector.detect(image, min_score=self.reacquire_score)  # None: its floor
        last = state.box
        near = Box(last.x1 - last.width, last.y1 - last.height, last.x2 + last.width, last.y2 + last.height)

        def is_near(box: Box) -> bool:
            cx, cy = (box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2
            return near.x1 <= cx <= near.x2 and near.y1 <= cy <= near.y2

        def seen_before(box: Box) -> bool:
            return state.candidate is not None and state.candidate.iou(box) >= 0.3

        lost = lost_frame(index, image.shape, 0.0)
        # the polyp found again may have changed size and light while out of view
        found_state = replace(state, area=0.0, following=False)
        order = sorted(detections, key=lambda d: (not seen_before(d.box), not is_near(d.box), -d.score))
        for detection in order:
            result = self._segment(index, image, detection.box, found_state, by_colour=False)
            if result.lost or result.box is None or not self._polyp_sized(result.mask, state):
                continue
            sightings = state.sightings + 1 if seen_before(result.box) else 1
            if sightings >= self.reacquire_frames:
                return result, state
            return lost, replace(state, candidate=result.box, sightings=sightings)
        return lost, replace(state, candidate=None, sightings=0)

    def _polyp_sized(self, mask: np.ndarray, state: ClassicalState) -> bool:
        """Whether a mask's area is within `reacquire_size_change` of the polyp's as first
        outlined (any size where that is unknown, as in a state from before it was kept)."""
        if not state.outlined_area:
            return True
        change = float(mask.sum()) / state.outlined_area
        return 1 / self.reacquire_size_change <= change <= self.reacquire_size_change

    def _state_tensors(self, state: ClassicalState) -> dict[str, Any]:
        if state.frame is None or state.box is None or state.signature is None:
            return {}
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(state.frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        assert ok
        return {
            "frame_jpeg": torch.from_numpy(jpeg.reshape(-1)),
            "box": [state.box.x1, state.box.y1, state.box.x2, state.box.y2],
            "area": state.area,
            "signature": torch.from_numpy(state.signature),
            "following": state.following,
            "outlined_area": state.outlined_area,
            "candidate": [] if state.candidate is None else state.candidate.as_array().tolist(),
            "sightings": state.sightings,
        }

    def _state_from_tensors(self, data: dict[str, Any]) -> ClassicalState:
        if not data:
            return ClassicalState()
        frame = cv2.imdecode(data["frame_jpeg"].numpy(), cv2.IMREAD_COLOR)
        if frame is None:
            raise ValueError("the stored frame does not decode")
        return ClassicalState(
            cv2.cvtColor(frame, cv2.COLOR_BGR2RGB),
            Box(*(float(v) for v in data["box"])),
            float(data["area"]),
            data["signature"].numpy().astype(np.float32),
            bool(data.get("following", False)),
            float(data.get("outlined_area", 0.0)),
            Box(*(float(v) for v in data["candidate"])) if data.get("candidate") else None,
            int(data.get("sightings", 0)),
        )

    def _anchor(self, image: np.ndarray, prompt: Prompt) -> Prediction:
        """The mask on a prompted frame: the model's answer, or the given mask itself."""
        height, width = image.shape[:2]
        prompt = prompt.fitted_to(width, height)
        if prompt.box is None and not prompt.points and prompt.previous_mask is not None:
            return Prediction(mask=prompt.previous_mask.astype(bool), score=1.0)
        return self.predictor.predict(image, prompt)

    def _follow(self, previous: np.ndarray, box: Box, image: np.ndarray) -> Box | None:
        """Where the polyp in `box` on `previous` moved to on `image`, or None where the flow
        is lost."""
        height, width = image.shape[:2]
        return follow_box(previous, image, followable_box(box, width, height))

    def _segment(
        self, index: int, image: np.ndarray, box: Box, state: ClassicalState, by_colour: bool = True
    ) -> TrackedFrame:
        """The model's mask in `box`, or the frame lost where the mask is no polyp, a speck, or
        jumps in size from `state`'s; `by_colour`: also where it looks unlike the followed
        polyp (a detection confirmed over several frames is not judged by colour: the light
        on a polyp seen from afar differs from that on it close up)."""
        height, width = image.shape[:2]
        try:
            prompt = Prompt(box=box).fitted_to(width, height)
        except PromptError:  # the flow's proposal left the frame
            return lost_frame(index, image.shape, 0.0)
        prediction = self.predictor.predict(image, prompt)
        area = float(prediction.mask.sum())
        found = mask_box(prediction.mask)
        # A model with a presence output says itself when no polyp is in the box (its mask is
        # then only its best guess, never empty).
        absent = prediction.presence is not None and prediction.presence < self.min_presence
        if found is None or area < self.min_area or absent:
            return lost_frame(index, image.shape, prediction.score)
        change = max(area / state.area, state.area / area) if state.area else 1.0
        assert state.signature is not None and state.box is not None
        likeness = 1.0
        if by_colour:
            likeness = float(
                cv2.compareHist(state.signature, colour_signature(image, prediction.mask), cv2.HISTCMP_CORREL)
            )
        if state.following and prediction.score >= self.sure_score:  # the light changed, not the place
            likeness = max(likeness, found.iou(state.box))
        score = prediction.score * max(likeness, 0.0)
        if score < self.min_score or change > self.max_area_change:
            return lost_frame(index, image.shape, score)
        return TrackedFrame(index, prediction.mask, found, score, False)
