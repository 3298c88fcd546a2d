"""Label Studio tasks and contexts in, Label Studio predictions out, through the polypseg core."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from backends.labelstudio.click_sessions import ClickSessions
from backends.labelstudio.label_config import LabelConfig, parse_label_config
from backends.labelstudio.media import MediaFetcher
from backends.labelstudio.pages import PagedAnswer, PagedTasks, checked_regions, on_page, page_of, page_urls
from backends.labelstudio.regions import (
    Region,
    as_object,
    as_regions,
    mask_regions,
    prompt_from_context,
    rectangle_box,
    task_rectangles,
    task_regions,
)
from backends.labelstudio.settings import Settings
from backends.request_errors import RequestError
from polypseg.detection_job import build_detector, find_polyps
from polypseg.errors import PolypsegError, PromptError
from polypseg.images import read_image
from polypseg.model_store import CurrentModel, ModelStore
from polypseg.predictors import build_predictor
from polypseg.predictors.base import ImagePredictor
from polypseg.prompts import Prompt

log = logging.getLogger(__name__)

Prediction = dict[str, Any]  # {"result": [regions], "score": float, "model_version": str}


class PolypModel:
    """One loaded predictor serving every project; safe to call from several threads."""

    def __init__(self, settings: Settings, predictor: ImagePredictor | None = None) -> None:
        """The model is `predictor` if given; else MODEL_DIR's current version, followed as
        retraining promotes new ones (else POLYPSEG_CHECKPOINT, else the shipped model)."""
        self.settings = settings
        store = ModelStore(settings.model_dir) if settings.model_dir and predictor is None else None
        self.current = CurrentModel(
            store,
            lambda path: (
                predictor
                or build_predictor(settings.model, path, settings.device, **settings.predictor_options())
            ),
            fallback=settings.checkpoint,
        )
        self.fetcher = MediaFetcher(
            settings.label_studio_url,
            settings.label_studio_api_key,
            settings.max_media_bytes,
            settings.fetch_timeout,
        )
        # Label Studio sends each smart region on its own: the box and the clicks since it
        self.click_sessions = ClickSessions()
        # Pre-annotation: loaded at start, so that a bad POLYPSEG_DETECTOR stops the server
        self.detector = build_detector(settings.detector, settings.device) if settings.preannotate else None
        self.pages = PagedTasks(self.click_sessions, self.tracker_kind, self.detector, self._fetcher_of)

    @property
    def predictor(self) -> ImagePredictor:
        """The model to answer one request with (held for the whole request)."""
        return self.current.get()

    @property
    def version(self) -> str:
        return self.predictor.version

    def tracker_kind(self, predictor: ImagePredictor) -> str:
        return self.settings.tracker_for(predictor)

    def predict(
        self, tasks: Any, label_config: str | None, context: dict[str, Any] | None
    ) -> list[Prediction | list[Prediction]]:
        """One prediction per task (none, an empty list, for a task of a batch that failed):
        interactive when `context` holds the user's regions, else
        every rectangle already on each task becomes a mask (images; on a task without one,
        every polyp the detector finds), or every video rectangle on each task is tracked from
        its keyframes (videos)."""
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise RequestError("tasks must be a list of task objects", 400)
        config = parse_label_config(label_config)
        predictor = self.predictor
        if context and context.get("result"):
            if len(tasks) != 1:
                raise RequestError(f"an interactive request needs exactly one task, not {len(tasks)}", 400)
            regions = as_regions(context["result"], "context.result")
            if config.kind == "video":
                return [self.track(predictor, tasks[0], config, regions)]
            return [self.interactive(predictor, tasks[0], config, regions)]
        if config.paged:
            from_task = self.from_clip_task
        elif config.kind == "video":
            from_task = self.track_task_boxes
        else:
            from_task = self.from_task_boxes
        if len(tasks) == 1:
            return [from_task(predictor, tasks[0], config)]
        return [self._batch_task(from_task, predictor, task, config) for task in tasks]

    def _media_url(self, task: dict[str, Any], config: LabelConfig) -> str:
        url = as_object(task.get("data"), f"task {task.get('id')}'s data").get(config.data_key)
        if not isinstance(url, str) or not url:
            raise RequestError(f"task {task.get('id')} has no {config.data_key!r} in its data")
        return url

    def _image(self, task: dict[str, Any], config: LabelConfig):
        return self._fetcher_of(task.get("id"))(self._media_url(task, config))

    def _fetcher_of(self, task_id: Any) -> Callable[[str], Any]:
        """Reads an image URL of task `task_id` (with Label Studio's token where it goes there)."""

        def fetch(url: str):  # type: ignore[no-untyped-def]
            try:
                return read_image(self.fetcher.fetch(url, task_id))
            except PolypsegError as exc:
                raise RequestError(f"{url}: {exc}") from None

        return fetch

    def interactive(
        self, predictor: ImagePredictor, task: dict[str, Any], config: LabelConfig, regions: list[Region]
    ) -> Prediction:
        """The mask of the user's box or clicks; on a clip task (paged frames), a box is
        tracked through the clip and a click refines the page it is on."""
        page = None
        if config.paged:
            urls = page_urls(task, config)
            page = page_of([r for r in regions if r.get("to_name") in (None, config.object_name)], len(urls))
            url = urls[page]
        else:
            url = self._media_url(task, config)
        image = self._fetcher_of(task.get("id"))(url)
        height, width = image.shape[:2]
        drawn, labels = prompt_from_context(regions, config.object_name, width, height)
        session = (task.get("id"), url)
        # One request of a session at a time: each reads the session, waits for the model and
        # writes it back, so two clicks in flight would each miss the other.
        with self.click_sessions.hold(session):
            # a click off the image is refused as itself, before a session makes it look like another
            prompt = self.click_sessions.prompt_for(session, drawn.fitted_to(width, height))
            if page is not None and drawn.box is not None:
                tracked = self.pages.box(predictor, task.get("id"), urls, page, image, prompt, config, labels)
                return self._paged_answer(predictor, tracked)
            try:
                prediction = predictor.predict(image, prompt)
            except PromptError as exc:
                if prompt.box is None and prompt.points:
                    raise RequestError(
                        f"{exc}; this backend holds no box drawn on this task (none yet, or it was"
                        " forgotten after a restart, a long pause, or on another worker): draw the box again"
                    ) from None
                raise
            anchored = self.click_sessions.anchor(session) is not None  # a click keeps a drawn box drawn
            self.click_sessions.remember(session, prompt, anchored)
            found = mask_regions(prediction.mask, prediction.score, config, labels)
            if page is not None:
                found = on_page(found, page)
            return _answer(predictor, found, prediction.score)

    def from_clip_task(
        self, predictor: ImagePredictor, task: dict[str, Any], config: LabelConfig
    ) -> Prediction:
        return self._paged_answer(predictor, self.pages.from_task(predictor, task, config))

    def _paged_answer(self, predictor: ImagePredictor, answer: PagedAnswer) -> Prediction:
        return _answer(predictor, checked_regions(answer.regions), answer.score)

    def from_task_boxes(
        self, predictor: ImagePredictor, task: dict[str, Any], config: LabelConfig
    ) -> Prediction:
        boxes = task_rectangles(task, config.object_name)
        if not boxes:
            return self.preannotate(predictor, task, config)
        prepared = predictor.prepare(self._image(task, config))
        found: list[Region] = []
        scores = []
        for region in boxes:
            value = as_object(region.get("value"), "a rectangle's value")
            prompt = Prompt(box=rectangle_box(value, prepared.width, prepared.height))
            prediction = predictor.segment(prepared, prompt)
            labels = value.get("rectanglelabels") or value.get("labels") or []
            found += mask_regions(prediction.mask, prediction.score, config, labels)
            scores.append(prediction.score)
        return _answer(predictor, found, sum(scores) / len(scores))

    def preannotate(self, predictor: ImagePredictor, task: dict[str, Any], config: LabelConfig) -> Prediction:
        """Every polyp the detector finds, outlined by the model: one mask region each. The
        prediction's score is 1 - the detector's uncertainty about the frame, so that the Data
        Manager, sorted by prediction score, puts the frames most worth a human's time first."""
        if self.detector is None:
            return _answer(predictor, [], 0.0)
        found = find_polyps(self.detector, predictor, self._image(task, config))
        regions = [
            r for polyp in found.polyps for r in mask_regions(polyp.mask, polyp.confidence, config, [])
        ]
        return _answer(predictor, regions, 1.0 - found.uncertainty)

    def _batch_task(
        self,
        from_task: Callable[[ImagePredictor, dict[str, Any], LabelConfig], Prediction],
        predictor: ImagePredictor,
        task: dict[str, Any],
        config: LabelConfig,
    ) -> Prediction | list[Prediction]:
        """In a batch, a task that fails gets no prediction (an empty list: Label Studio 1.23's
        ml/models.py `_get_predictions_from_ml_backend` saves one prediction per item of a
        task's list, so that the next "Retrieve predictions" asks again); the others still get
        theirs."""
        try:
            return from_task(predictor, task, config)
        except (RequestError, PolypsegError) as exc:
            log.warning("task %s: no prediction: %s", task.get("id"), exc)
            return []

    def track(
        self, predictor: ImagePredictor, task: dict[str, Any], config: LabelConfig, regions: list[Region]
    ) -> Prediction:
        """The video rectangles of an interactive request, tracked."""
        boxes = [r for r in regions if _is_video_box(r, config)]
        if not boxes:
            raise RequestError("the context holds no video rectangle to track")
        return self._track_boxes(predictor, task, config, boxes)

    def track_task_boxes(
        self, predictor: ImagePredictor, task: dict[str, Any], config: LabelConfig
    ) -> Prediction:
        """Every video rectangle of the task's latest annotation (else its latest prediction),
        tracked from its keyframes: what "Retrieve Predictions" answers for a video."""
        boxes = task_regions(task, lambda r: _is_video_box(r, config))
        if not boxes:
            return _answer(predictor, [], 0.0)
        return self._track_boxes(predictor, task, config, boxes)

    def _track_boxes(
        self, predictor: ImagePredictor, task: dict[str, Any], config: LabelConfig, boxes: list[Region]
    ) -> Prediction:
        from backends.labelstudio.video import track_video_region

        url = self._media_url(task, config)
        kind = self.tracker_kind(predictor)
        with self.fetcher.download(url, task.get("id")) as path:
            tracked = [
                track_video_region(
                    path, box, predictor, kind, self.settings.max_frames_to_track, self.detector
                )
                for box in boxes
            ]
        score = sum(t.score for t in tracked) / len(tracked)
        return _answer(predictor, [t.region for t in tracked], score)


def _is_video_box(region: Region, config: LabelConfig) -> bool:
    return region.get("type") == "videorectangle" and region.get("to_name") == config.object_name


def _answer(predictor: ImagePredictor, regions: list[Region], score: float) -> Prediction:
    return {"result": regions, "score": round(score, 4), "model_version": predictor.version}
