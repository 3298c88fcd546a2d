"""A video clip as one Label Studio task of paged frames: masks on every frame of the clip,
which Label Studio's own video tags cannot hold (they take rectangles only).

The contract, Label Studio 1.23.2 Community (seen in its labelling page, ../shared/notes:
"Video frames as paginated tasks"; web/libs/editor `tags/object/Image` `valueList`, and
`regions` `item_index`): `<Image valueList="$frames">` shows the task's `data.frames` (a list
of image URLs) as pages; every region names its page by `item_index` (0-based). A smart box
drawn on page k reaches `/predict` with `item_index` k and the whole unresolved `frames` list.
A region sent back WITHOUT `item_index` lands on page 1 (silently the wrong frame), so every
region made here is put on its page by `on_page`, and `checked_regions` drops any that is not.

What the annotator gets (see PagedTasks): a box on one page is tracked through the clip, both
ways, and answered with a mask on every page where the polyp is found; a box on another page
re-anchors the track there and answers the pages nearer to it than to the earlier boxes (the
other pages keep what they have); a click refines the page it is on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends.labelstudio.click_sessions import ClickSessions
from backends.labelstudio.label_config import LabelConfig
from backends.labelstudio.regions import (
    Region,
    as_object,
    mask_regions,
    rectangle_box,
    task_rectangles,
)
from backends.request_errors import RequestError
from polypseg.detector import PolypDetector
from polypseg.errors import PolypsegError
from polypseg.predictors.base import ImagePredictor
from polypseg.prompts import Prompt
from polypseg.video.frames import FrameSource, VideoInfo
from polypseg.video.tracking import TrackedFrame
from polypseg.video.tracking_job import build_tracker, track_anchored

log = logging.getLogger(__name__)

Fetch = Callable[[str], np.ndarray]  # an image URL -> RGB pixels; raises RequestError / PolypsegError


def page_urls(task: dict[str, Any], config: LabelConfig) -> list[str]:
    """The task's pages: its `data.<field>` list of image URLs, or a 422 saying what it holds."""
    frames = as_object(task.get("data"), f"task {task.get('id')}'s data").get(config.data_key)
    if not isinstance(frames, list) or not frames or not all(isinstance(u, str) and u for u in frames):
        held = type(frames).__name__ if not isinstance(frames, list) else f"a list of {len(frames)}"
        raise RequestError(
            f"task {task.get('id')}'s {config.data_key!r} must be a non-empty list of image URLs "
            f"(the clip's frames, one per page), not {held}"
        )
    return frames


def page_of(regions: list[Region], pages: int) -> int:
    """The page that the smart regions of a request were drawn on (their `item_index`)."""
    found = {r.get("item_index") for r in regions}
    if len(found) != 1:
        raise RequestError("the request's regions lie on several pages; send the regions of one page")
    (page,) = found
    if not isinstance(page, int) or isinstance(page, bool):
        raise RequestError(
            "the region has no item_index (its page of the clip): is the project's <Image> a valueList?"
        )
    if not 0 <= page < pages:
        raise RequestError(f"the region is on page {page + 1} (item_index {page}) of a task of {pages} pages")
    return page


def on_page(regions: list[Region], page: int) -> list[Region]:
    for region in regions:
        region["item_index"] = page
    return regions


def checked_regions(regions: list[Region]) -> list[Region]:
    """Only regions placed on a page (Label Studio draws the others on page 1)."""
    placed = [r for r in regions if isinstance(r.get("item_index"), int)]
    if len(placed) < len(regions):
        dropped = len(regions) - len(placed)
        log.error("%d region(s) without item_index dropped (they would land on page 1)", dropped)
    return placed


class PageSource(FrameSource):
    """A clip's pages as frames, each fetched when the tracker reaches it; a page that cannot
    be fetched or read (or is not the size of the others) is skipped and logged, and the
    track goes on over the next one."""

    def __init__(self, urls: list[str], fetch: Fetch, known: Mapping[int, np.ndarray] | None = None) -> None:
        self.urls, self.name = urls, "the clip's pages"
        self._fetch, self._known = fetch, dict[int, np.ndarray]()
        self.skipped: dict[int, str] = {}  # page -> why
        self._size: tuple[int, int] | None = None  # (height, width) of the first page read
        for index, image in (known or {}).items():
            self.keep(index, image)

    def keep(self, index: int, image: np.ndarray) -> None:
        """Hold page `index` (read already) instead of fetching it again."""
        self._known[index] = image
        self._size = self._size or image.shape[:2]

    @property
    def info(self) -> VideoInfo:  # type: ignore[override]
        height, width = self._size or (0, 0)
        return VideoInfo(len(self.urls), 25.0, width, height)

    def page(self, index: int) -> np.ndarray | None:
        if index in self._known:
            return self._known[index]
        if index in self.skipped:
            return None
        try:
            image = self._fetch(self.urls[index])
            if self._size is None:
                self._size = image.shape[:2]
            elif image.shape[:2] != self._size:
                height, width = self._size
                raise RequestError(f"{image.shape[1]}x{image.shape[0]} px, not the clip's {width}x{height}")
            return image
        except (RequestError, PolypsegError) as exc:
            reason = getattr(exc, "reason", str(exc))
            self.skipped[index] = reason
            log.warning("page %d (%s) skipped: %s", index + 1, self.urls[index], reason)
            return None

    def _forward(self, start: int, stop: int):  # type: ignore[no-untyped-def]
        for index in range(start, stop):
            image = self.page(index)
            if image is not None:
                yield index, image


@dataclass
class PagedAnswer:
    regions: list[Region] = field(default_factory=list)
    score: float = 0.0


def nearest(page: int, anchor: int, others: list[int]) -> bool:
    """Whether `page` is at least as near `anchor` as any of `others`."""
    return all(abs(page - anchor) <= abs(page - other) for other in others)


class PagedTasks:
    """Interactive boxes and pre-annotation on paged clip tasks."""

    def __init__(
        self,
        sessions: ClickSessions,
        tracker_kind: Callable[[ImagePredictor], str],
        detector: PolypDetector | None,
        fetch_for: Callable[[Any], Fetch],
    ) -> None:
        """`fetch_for(task_id)` fetches that task's images (with Label Studio's token)."""
        self.sessions = sessions
        self.tracker_kind = tracker_kind
        self.detector = detector
        self.fetch_for = fetch_for

    def _track(
        self, predictor: ImagePredictor, source: PageSource, anchors: dict[int, Prompt]
    ) -> dict[int, TrackedFrame]:
        tracker = build_tracker(self.tracker_kind(predictor), predictor, self.detector)
        return track_anchored(source, tracker, anchors)

    def box(
        self,
        predictor: ImagePredictor,
        task_id: Any,
        urls: list[str],
        page: int,
        image: np.ndarray,
        prompt: Prompt,
        config: LabelConfig,
        labels: list[str],
    ) -> PagedAnswer:
        """A box drawn on `page`: the track through the clip from it (and from the boxes drawn
        earlier on other pages of this task, as anchors), answered on the pages nearer to it."""
        earlier = {
            p: Prompt(box=box)
            for p, url in enumerate(urls)
            if p != page and (box := self.sessions.anchor((task_id, url))) is not None
        }
        anchors = {**earlier, page: prompt}
        source = PageSource(urls, self.fetch_for(task_id), {page: image})
        # Other pages' sessions are not held while the track runs: a click there meanwhile wins.
        started = self.sessions.stamp()
        results = self._track(predictor, source, anchors)
        self.sessions.remember((task_id, urls[page]), prompt, anchored=True)
        answer = PagedAnswer()
        scores = []
        for p in sorted(results):
            if not nearest(p, page, list(earlier)):
                continue
            result = results[p]
            scores.append(result.score)
            if result.lost or result.box is None:
                continue
            answer.regions += on_page(mask_regions(result.mask, result.score, config, labels), p)
            if p != page:  # a click on this page refines the tracked mask
                self.sessions.remember((task_id, urls[p]), Prompt(box=result.box), unless_since=started)
        answer.score = sum(scores) / len(scores) if scores else 0.0
        return answer

    def from_task(self, predictor: ImagePredictor, task: dict[str, Any], config: LabelConfig) -> PagedAnswer:
        """Masks on every page of a clip task without an interactive box: tracked from the
        rectangles on its latest annotation (else prediction), each from its page; or, where
        it has none, from every polyp the detector finds on the page it is surest of. The
        score is the mean tracked score (rectangles) or 1 - the detector's mean uncertainty
        over the pages (so the Data Manager ranks clips as it ranks frames)."""
        urls = page_urls(task, config)
        fetch = self.fetch_for(task.get("id"))
        rectangles = task_rectangles(task, config.object_name)
        if rectangles:
            return self._from_rectangles(predictor, urls, fetch, rectangles, config)
        if self.detector is None:
            return PagedAnswer()
        return self._from_detections(predictor, urls, fetch, config)

    def _from_rectangles(
        self,
        predictor: ImagePredictor,
        urls: list[str],
        fetch: Fetch,
        rectangles: list[Region],
        config: LabelConfig,
    ) -> PagedAnswer:
        answer, scores = PagedAnswer(), []
        for region in rectangles:
            page = page_of([region], len(urls))
            value = as_object(region.get("value"), "a rectangle's value")
            image = _fetch_page(fetch, urls, page)
            box = rectangle_box(value, image.shape[1], image.shape[0])  # percent: any size
            labels = value.get("rectanglelabels") or value.get("labels") or []
            source = PageSource(urls, fetch, {page: image})
            for p, result in sorted(self._track(predictor, source, {page: Prompt(box=box)}).items()):
                scores.append(result.score)
                if not result.lost:
                    answer.regions += on_page(mask_regions(result.mask, result.score, config, labels), p)
        answer.score = sum(scores) / len(scores) if scores else 0.0
        return answer

    def _from_detections(
        self, predictor: ImagePredictor, urls: list[str], fetch: Fetch, config: LabelConfig
    ) -> PagedAnswer:
        assert self.detector is not None
        pages = PageSource(urls, fetch)
        best: tuple[float, int, list[Any], np.ndarray | None] = (-1.0, 0, [], None)
        uncertainties = []
        for page in range(len(urls)):
            image = pages.page(page)
            if image is None:
                continue
            detections, uncertainty = self.detector.find(image)
            uncertainties.append(uncertainty)
            if detections and detections[0].score > best[0]:
                best = (detections[0].score, page, detections, image)
        if not uncertainties:
            raise RequestError(f"none of the clip's {len(urls)} pages could be fetched: {pages.skipped[0]}")
        answer = PagedAnswer(score=1.0 - sum(uncertainties) / len(uncertainties))
        _, page, detections, image = best
        if image is not None:
            pages.keep(page, image)  # the track starts there: no second fetch (pages skipped stay skipped)
        for detection in detections:
            tracked = self._track(predictor, pages, {page: Prompt(box=detection.box)})
            for p, result in sorted(tracked.items()):
                if not result.lost:
                    answer.regions += on_page(mask_regions(result.mask, result.score, config, []), p)
        return answer


def _fetch_page(fetch: Fetch, urls: list[str], page: int) -> np.ndarray:
    """A page the answer starts from: one that cannot be fetched is the request's error."""
    try:
        return fetch(urls[page])
    except PolypsegError as exc:
        raise RequestError(f"page {page + 1} ({urls[page]}): {exc}") from None
