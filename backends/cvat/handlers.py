"""The interactor, tracker and detector calls, and the nuclio glue every function's `main.py` uses."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from typing import Any

from backends.cvat.protocol import (
    SHAPE_KINDS,
    Shape,
    decode_image,
    detected_object,
    detection_threshold,
    interaction_answer,
    interaction_prompt,
    parse_shape,
    tracking_objects,
)
from backends.cvat.state_store import StateStore
from backends.request_errors import RequestError
from polypseg.detection_job import find_polyps
from polypseg.detector import PolypDetector
from polypseg.errors import PolypsegError
from polypseg.model_store import CurrentModel
from polypseg.video.tracking import TrackStateError, VideoTracker
from polypseg.video.tracking_job import build_tracker

# Unusable input (RequestError without a status, PolypsegError) is answered 400, as ever.
INPUT_ERROR_STATUS = 400

Call = Callable[[dict[str, Any]], dict[str, Any] | list[Any]]


class InteractorFunction:
    """A box and/or clicks on a frame to the polyp's mask, as one CVAT mask shape."""

    def __init__(self, model: CurrentModel, needs_box: bool) -> None:
        self.model = model
        self.needs_box = needs_box

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        image = decode_image(body)
        height, width = image.shape[:2]
        prompt = interaction_prompt(body, width, height, needs_box=self.needs_box)
        predictor = self.model.get()
        prediction = predictor.predict(image, prompt)
        return {**interaction_answer(prediction.mask, prediction.score), "model_version": predictor.version}


class DetectorFunction:
    """A whole frame to one mask per detected polyp (CVAT's automatic annotation): the detector
    finds the polyps, the box model outlines each from its box. The request's threshold, where
    CVAT sends one, replaces the detector's own score floor."""

    def __init__(self, detector: PolypDetector, model: CurrentModel, label: str = "polyp") -> None:
        self.detector, self.model, self.label = detector, model, label

    def __call__(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        threshold = detection_threshold(body)
        image = decode_image(body)
        found = find_polyps(self.detector, self.model.get(), image, threshold)
        return [detected_object(p.mask, p.detection.score, self.label) for p in found.polyps]


class TrackerFunction:
    """Shapes on one frame followed onto the next. Each object's tracker state, its shape kind
    and its last shape are kept in `store`; CVAT carries only `{"token", "step", "lost"}`. With
    a `detector`, the classical tracker looks for a lost polyp anywhere in the frame."""

    def __init__(
        self,
        model: CurrentModel,
        kind: str,
        store: StateStore,
        shape_kinds: tuple[str, ...] = SHAPE_KINDS,
        detector: PolypDetector | None = None,
    ) -> None:
        self.model, self.kind, self.store, self.shape_kinds = model, kind, store, shape_kinds
        self.detector = detector

    @property
    def tracker(self) -> VideoTracker:
        return build_tracker(self.kind, self.model.get(), self.detector)

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        objects = tracking_objects(body)
        image = decode_image(body)
        height, width = image.shape[:2]
        tracker = self.tracker
        # Every object is read (its new shape, or its stored state) before any tracking runs,
        # and the states it carried are replaced only once all are tracked: one bad or expired
        # object fails the call, named, and leaves the others' states as they were.
        ready = [
            self._ready(tracker, number, shape, state, width, height)
            for number, (shape, state) in enumerate(objects)
        ]
        shapes: list[dict[str, Any]] = []
        states: list[dict[str, Any]] = []
        for token, step, last, begin in ready:
            if token is None:
                result, state = tracker.start(step, image, begin)
            else:
                result, state = tracker.step(begin, step, image)
            found = last.followed(result.mask, result.box)
            # Where the polyp is lost, the object keeps its last shape (CVAT needs one) and the
            # state says "lost"; the tracker keeps looking on the next frames.
            shape = found if found is not None and not result.lost else last
            lost = found is None or result.lost
            new_token = self.store.put(_pack(shape, tracker.save_state(state)))
            shapes.append(shape.as_json())
            states.append({"token": new_token, "step": step, "lost": lost})
        for token, *_ in ready:
            if token is not None:
                self.store.supersede(token)
        return {"shapes": shapes, "states": states, "lost": [s["lost"] for s in states]}

    def _ready(
        self, tracker: VideoTracker, number: int, shape: Any, state: Any, width: int, height: int
    ) -> tuple[str | None, int, Shape, Any]:
        """One object before tracking: (the token it carried or None, its step, its last shape,
        and the prompt to start from or the tracker state to step from); a refusal names it."""
        try:
            if state is None:
                start = parse_shape(shape, self.shape_kinds)
                # fitted here, so that a box off the frame is refused, named, before any tracking
                return None, 0, start, start.prompt(width, height).fitted_to(width, height)
            token, step, last, loaded = self._load(tracker, self._carried(state))
            return token, step + 1, last, loaded
        except RequestError as exc:
            raise RequestError(f"object {number + 1}: {exc.reason}", exc.status) from None
        except PolypsegError as exc:
            raise RequestError(f"object {number + 1}: {exc}") from None

    def _carried(self, state: Any) -> tuple[str, int]:
        if not isinstance(state, dict) or not isinstance(state.get("token"), str):
            raise RequestError(
                "a tracker state must be the object this function answered ({'token', 'step'})"
            )
        step = state.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise RequestError("a tracker state's 'step' must be a whole number")
        return state["token"], step

    def _load(self, tracker: VideoTracker, carried: tuple[str, int]) -> tuple[str, int, Shape, Any]:
        token, step = carried
        data = self.store.get(token)
        if data is None:
            raise RequestError(
                "the track's state has expired or is unknown here: turn tracking off and on for the shape",
                410,
            )
        try:
            last, tracker_state = _unpack(data, self.shape_kinds)
            return token, step, last, tracker.load_state(tracker_state)
        except TrackStateError as exc:
            raise RequestError(str(exc), 410) from None


def _pack(shape: Shape, tracker_state: bytes) -> bytes:
    """A stored state: the object's last shape as one JSON line, then the tracker's bytes."""
    return json.dumps(shape.as_json()).encode() + b"\n" + tracker_state


def _unpack(data: bytes, kinds: tuple[str, ...]) -> tuple[Shape, bytes]:
    header, separator, tracker_state = data.partition(b"\n")
    try:
        if not separator:
            raise ValueError("no shape line")
        return parse_shape(json.loads(header), kinds), tracker_state
    except (ValueError, RequestError) as exc:
        raise TrackStateError(f"the stored track state is not this function's ({exc})") from None


def _body(event: Any) -> dict[str, Any]:
    body = event.body
    if isinstance(body, bytes | str):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError(f"the request body is not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def respond(context: Any, call: Call, event: Any) -> Any:
    """Run `call` on the event's JSON body; every failure becomes an HTTP error with a reason
    (`{"error": ...}`), and the worker goes on to the next request."""
    try:
        body = json.dumps(call(_body(event)))
        status = 200
    except RequestError as exc:
        context.logger.warn(f"refused: {exc.reason}")
        body, status = json.dumps({"error": exc.reason}), exc.status or INPUT_ERROR_STATUS
    except PolypsegError as exc:
        context.logger.warn(f"refused: {exc}")
        body, status = json.dumps({"error": str(exc)}), INPUT_ERROR_STATUS
    except Exception as exc:  # a bug or a broken model: say so, keep serving
        # nuclio's own logger: what the function's log (nuctl, the dashboard) shows
        context.logger.error_with("request failed", error=repr(exc), traceback=traceback.format_exc())
        body, status = (
            json.dumps({"error": f"internal error ({type(exc).__name__}): see the function's log"}),
            500,
        )
    return context.Response(body=body, headers={}, content_type="application/json", status_code=status)
