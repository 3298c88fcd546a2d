"""The interactor and tracker calls, and the nuclio glue every function's `main.py` uses."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polypseg.errors import PolypsegError
from polypseg.model_store import CurrentModel, ModelStore
from polypseg.predictors.base import ImagePredictor
from polypseg.video.tracking import TrackStateError, VideoTracker
from polypseg.video.tracking_job import build_tracker
from serverless.cvat.protocol import (
    RequestError,
    decode_image,
    interaction_answer,
    interaction_prompt,
    parse_shapes,
)
from serverless.cvat.state_store import StateStore

log = logging.getLogger("polypseg.cvat")

Call = Callable[[dict[str, Any]], dict[str, Any]]


def served_model(load: Callable[[Path | None], ImagePredictor]) -> CurrentModel:
    """MODEL_DIR's current version, followed as retraining promotes new ones; without MODEL_DIR
    the model POLYPSEG_CHECKPOINT names (else the shipped one)."""
    model_dir, checkpoint = os.environ.get("MODEL_DIR"), os.environ.get("POLYPSEG_CHECKPOINT")
    store = ModelStore(model_dir) if model_dir else None
    return CurrentModel(store, load, fallback=Path(checkpoint) if checkpoint else None)


class InteractorFunction:
    """A box and/or clicks on a frame to the polyp's mask."""

    def __init__(self, model: CurrentModel, needs_box: bool) -> None:
        self.model = model
        self.needs_box = needs_box

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        image = decode_image(body)
        prompt = interaction_prompt(body, needs_box=self.needs_box)
        predictor = self.model.get()
        prediction = predictor.predict(image, prompt)
        answer = interaction_answer(prediction.mask)
        return {**answer, "score": round(prediction.score, 4), "model_version": predictor.version}


class TrackerFunction:
    """Shapes on one frame followed onto the next; each shape's state is kept in `store` and
    CVAT carries only `{"token", "step"}` for it."""

    def __init__(self, model: CurrentModel, kind: str, store: StateStore) -> None:
        self.model, self.kind, self.store = model, kind, store

    @property
    def tracker(self) -> VideoTracker:
        return build_tracker(self.kind, self.model.get())

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        tracker = self.tracker
        image = decode_image(body)
        height, width = image.shape[:2]
        shapes = parse_shapes(body)
        states = body.get("states")
        if states is not None and (not isinstance(states, list) or len(states) != len(shapes)):
            raise RequestError(f"'states' must be null or a list of {len(shapes)} states, one per shape")
        answers: list[Any] = []
        new_states: list[dict[str, Any]] = []
        lost: list[bool] = []
        for position, shape in enumerate(shapes):
            if states is None or states[position] is None:
                step = 0
                result, state = tracker.start(step, image, shape.prompt(width, height))
            else:
                step, state = self._load(tracker, states[position])
                step += 1
                result, state = tracker.step(state, step, image)
                self.store.supersede(states[position]["token"])
            token = self.store.put(tracker.save_state(state))
            # Where the polyp is lost, the shape stays where it was: CVAT's UI needs a shape.
            answer = shape.answer(result.mask, result.box)
            if answer is None:
                answer = {"type": shape.kind, "points": shape.points} if shape.typed else shape.points
            answers.append(answer)
            new_states.append({"token": token, "step": step})
            lost.append(result.lost)
        return {"shapes": answers, "states": new_states, "lost": lost}

    def _load(self, tracker: VideoTracker, state: Any) -> tuple[int, Any]:
        if not isinstance(state, dict) or not isinstance(state.get("token"), str):
            raise RequestError("a tracker state must be the object this function answered")
        data = self.store.get(state["token"])
        if data is None:
            raise RequestError(
                "the track's state has expired or is unknown here: turn tracking off and on for the shape",
                410,
            )
        step = state.get("step", 0)
        if not isinstance(step, int) or isinstance(step, bool):
            raise RequestError("a tracker state's 'step' must be a whole number")
        try:
            return step, tracker.load_state(data)
        except TrackStateError as exc:
            raise RequestError(str(exc), 410) from None


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
        body, status = json.dumps({"error": exc.reason}), exc.status
    except PolypsegError as exc:
        context.logger.warn(f"refused: {exc}")
        body, status = json.dumps({"error": str(exc)}), 400
    except Exception as exc:  # a bug or a broken model: say so, keep serving
        log.exception("request failed")
        body, status = (
            json.dumps({"error": f"internal error ({type(exc).__name__}): see the function's log"}),
            500,
        )
    return context.Response(body=body, headers={}, content_type="application/json", status_code=status)
