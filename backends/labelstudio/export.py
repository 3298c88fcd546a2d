"""Pulling a Label Studio project's labelled polyps into the dataset store.

The project's tasks come from Label Studio's export API (JSON, annotated tasks only); each
task's latest annotation that is not cancelled (the core's rule, `polypseg.label_sources`)
becomes a mask (BrushLabels RLE and PolygonLabels, every region united) and its image is
downloaded with Label Studio's token. A task whose annotation the store already holds (the
same regions on the same image URL, whatever its update time) is not downloaded again; tasks
no longer labelled are dropped from the store. A clip task (paged frames, `<Image valueList>`)
gives a still per labelled page ("<task>:<frame>") and a sequence for `finetune sam2-video`
from its first labelled page to its last. Label Studio's reads
are retried with backoff; an image that fails is reported and skipped, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import requests

from backends.labelstudio.brush import decode_brush_rle
from backends.labelstudio.errors import MediaError
from backends.labelstudio.label_config import LabelConfig, parse_label_config
from backends.labelstudio.media import MediaFetcher, media_suffix
from backends.labelstudio.regions import latest_annotation
from backends.request_errors import RequestError
from polypseg.data_store import DatasetStore, LabelledImage, LabelledSequence, SequenceFrame
from polypseg.errors import DatasetError, PolypsegError
from polypseg.formats.rasterise import fill_polygon
from polypseg.images import read_image
from polypseg.label_sources import LabelSource, PullError, PullReport, annotation_version

log = logging.getLogger(__name__)
T = TypeVar("T")


def annotation_mask(result: list[dict[str, Any]], object_name: str) -> np.ndarray | None:
    """Every brush and polygon region on the image united, or None if there is none; a region
    that cannot be read is a DatasetError naming it."""
    mask: np.ndarray | None = None
    for region in result:
        kind, value = region.get("type"), region.get("value") or {}
        width, height = region.get("original_width"), region.get("original_height")
        if region.get("to_name") != object_name or not width or not height or not isinstance(value, dict):
            continue
        try:
            if kind in ("brushlabels", "brush") and value.get("format") == "rle":
                found = decode_brush_rle(value["rle"], int(width), int(height))
            elif kind in ("polygonlabels", "polygon") and value.get("points"):
                points = np.asarray(value["points"], dtype=np.float64).reshape(-1, 2)
                # drawn on pixels as squares: a pixel is the polygon's when its centre is inside
                found = fill_polygon(points * [width / 100, height / 100], int(width), int(height))
            else:
                continue
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise DatasetError(f"region {region.get('id', '?')} ({kind}) cannot be read: {exc}") from None
        if mask is not None and mask.shape != found.shape:
            raise DatasetError(
                f"region {region.get('id', '?')} is on a {width}x{height} image, another region of "
                f"the same image on {mask.shape[1]}x{mask.shape[0]}"
            )
        mask = found if mask is None else mask | found
    return mask


def _regions_digest(result: list[dict[str, Any]]) -> str:
    return hashlib.sha1(json.dumps(result, sort_keys=True, default=str).encode()).hexdigest()


RETRY_WAIT = 1.0  # seconds before the first retry; doubled each time


def with_retries(call: Callable[[], T], what: str, attempts: int = 4, wait: float | None = None) -> T:
    """`call`, retried with exponential backoff on network failures and server errors."""
    wait = RETRY_WAIT if wait is None else wait
    for attempt in range(attempts):
        try:
            return call()
        except (requests.ConnectionError, requests.Timeout, MediaError) as exc:
            transient = not isinstance(exc, MediaError) or (exc.status or 0) >= 500
            if not transient or attempt == attempts - 1:
                raise
            log.warning("%s failed (%s); retrying in %.0f s", what, exc, wait * 2**attempt)
            time.sleep(wait * 2**attempt)
    raise AssertionError("unreachable")


class LabelStudioProject(LabelSource):
    def __init__(self, url: str, api_key: str, project: int, timeout: float = 120) -> None:
        self.url, self.project, self.timeout = url.rstrip("/"), project, timeout
        self.fetcher = MediaFetcher(self.url, api_key, timeout=timeout)

    @property
    def name(self) -> str:
        return f"Label Studio project {self.project} at {self.url}"

    @property
    def source(self) -> str:
        return f"labelstudio:{urllib.parse.urlsplit(self.url).netloc}:{self.project}"

    def get(self, path: str) -> Any:
        """A Label Studio API read (JSON), retried on network failures and server errors."""

        def call() -> Any:
            try:
                response = requests.get(
                    self.url + path, headers=self.fetcher.auth.header(), timeout=self.timeout
                )
            except requests.RequestException as exc:
                raise MediaError(
                    f"Label Studio at {self.url} is unreachable ({type(exc).__name__})", 502
                ) from None
            if response.status_code in (401, 403):
                raise MediaError(
                    f"Label Studio refused {path} ({response.status_code}): check LABEL_STUDIO_API_KEY"
                )
            if response.status_code >= 400:
                raise MediaError(
                    f"Label Studio answered {response.status_code} for {path}", response.status_code
                )
            return response.json()

        return with_retries(call, f"GET {path}")

    def export(self, all_tasks: bool = False) -> tuple[LabelConfig, list[dict[str, Any]]]:
        """The project's labelling config and its tasks (annotated ones only, unless
        `all_tasks`) as Label Studio's JSON export gives them; PullError if it cannot be read."""
        try:
            config = parse_label_config(self.get(f"/api/projects/{self.project}")["label_config"])
            which = "true" if all_tasks else "false"
            path = f"/api/projects/{self.project}/export?exportType=JSON&download_all_tasks={which}"
            tasks = self.get(path)
        except RequestError as exc:  # unreachable after retries, refused, not a project to read
            raise PullError(f"{self.name}: {exc.reason}") from None
        return config, tasks

    def pull(self, store: DatasetStore) -> PullReport:
        config, tasks = self.export()
        report, present, clips = PullReport(), set[str](), set[str]()
        for task in tasks:
            annotation = latest_annotation(task)
            if annotation is None:
                continue
            if config.paged:
                self._pull_clip(store, report, task, annotation, config.object_name, present, clips)
                continue
            item = str(task["id"])
            try:
                mask = annotation_mask(annotation["result"], config.object_name)
            except DatasetError as exc:
                self._keep_earlier(report, present, {item}, exc)
                continue
            if mask is None:
                continue
            url = str((task.get("data") or {}).get(config.data_key, ""))
            version = annotation_version(_regions_digest(annotation["result"]), url)
            self._put_still(store, report, present, task, item, version, annotation, url, mask)
        report.removed = len(store.remove_missing(self.source, present))
        for gone in {e["source"] for e in store.sequences.values()} - clips:
            if gone.startswith(f"{self.source}:clip:"):
                store.remove_sequence(gone)
        return report

    def _put_still(
        self,
        store: DatasetStore,
        report: PullReport,
        present: set[str],
        task: dict[str, Any],
        item: str,
        version: str,
        annotation: dict[str, Any],
        url: str,
        mask: np.ndarray,
    ) -> None:
        """One labelled image into the store, unless it holds this version already."""
        present.add(item)
        if store.holds(self.source, item, version):
            report.unchanged += 1
            return
        known = store.has(self.source, item)
        try:
            image = with_retries(lambda: self.fetcher.fetch(url, task["id"]), f"image of {item}")
            updated = str(annotation.get("updated_at") or "")
            store.put(LabelledImage(self.source, item, version, updated, image, _suffix(url), mask))
        except (RequestError, PolypsegError, ValueError) as exc:
            report.failed[item] = str(exc)
            log.warning("task %s skipped: %s", item, exc)
            return
        if known:
            report.changed += 1
        else:
            report.new += 1

    @staticmethod
    def _keep_earlier(report: PullReport, present: set[str], items: set[str], exc: DatasetError) -> None:
        """A task whose annotation cannot be read: reported, and what the store holds of it
        kept (an edit gone wrong never deletes the last good label)."""
        present.update(items)
        report.skipped += 1
        report.failed[min(items)] = str(exc)
        log.warning("task %s skipped: %s", min(items), exc)

    def _pull_clip(
        self,
        store: DatasetStore,
        report: PullReport,
        task: dict[str, Any],
        annotation: dict[str, Any],
        object_name: str,
        present: set[str],
        clips: set[str],
    ) -> None:
        """A clip task's labelled pages as stills ("<task>:<frame>", frames numbered as in the
        video), and the clip from its first labelled page to its last as one sequence, every
        page in it labelled (empty where the annotator left no region: not in view)."""
        data = task.get("data") or {}
        urls = data.get("frames")
        try:
            masks = page_masks(annotation["result"], object_name, len(urls) if isinstance(urls, list) else 0)
        except DatasetError as exc:
            pages = {t for t in store.tasks(self.source) if t.startswith(f"{task['id']}:")}
            self._keep_earlier(report, present, pages or {str(task["id"])}, exc)
            clips.add(f"{self.source}:clip:{task['id']}")
            return
        if not isinstance(urls, list) or not masks:
            return
        start, step = int(data.get("frame_start", 0)), int(data.get("frame_step", 1))
        for page, mask in masks.items():
            digest = _regions_digest([r for r in annotation["result"] if r.get("item_index") == page])
            version = annotation_version(digest, str(urls[page]))
            item = f"{task['id']}:{start + page * step}"
            self._put_still(store, report, present, task, item, version, annotation, urls[page], mask)
        first, last = min(masks), max(masks)
        if last == first:
            return
        source = f"{self.source}:clip:{task['id']}"
        clips.add(source)
        fingerprint = hashlib.sha1(
            (_regions_digest(annotation["result"]) + json.dumps(urls[first : last + 1])).encode()
        ).hexdigest()[:16]
        if store.sequence_is_current(source, fingerprint):
            return
        empty = np.zeros_like(next(iter(masks.values())))

        def image_of(url: str) -> Callable[[], bytes]:
            return lambda: with_retries(lambda: self.fetcher.fetch(url, task["id"]), f"frame {url}")

        def mask_of(page: int) -> Callable[[], np.ndarray]:
            return lambda: masks.get(page, empty)

        try:
            frames = [
                SequenceFrame(start + page * step, _suffix(urls[page]), image_of(urls[page]), mask_of(page))
                for page in range(first, last + 1)
            ]
            updated = str(annotation.get("updated_at") or "")
            store.put_sequence(LabelledSequence(source, fingerprint, updated, frames))
        except (RequestError, PolypsegError) as exc:
            log.warning("%s: sequence not stored: %s", source, getattr(exc, "reason", exc))
            return
        report.sequences += 1


def unlabelled_images(project: LabelStudioProject) -> list[tuple[str, Callable[[], np.ndarray]]]:
    """The image tasks of `project` without an annotation that counts (cancelled ones do not),
    each named "task ID URL" and read from Label Studio when its turn comes."""
    config, tasks = project.export(all_tasks=True)
    if config.kind != "image" or config.paged:
        raise PolypsegError(f"{project.name}: ranking reads projects of single images, not clips or videos")

    def reader(url: str, task_id: int) -> Callable[[], np.ndarray]:
        def read() -> np.ndarray:
            try:
                return read_image(
                    with_retries(lambda: project.fetcher.fetch(url, task_id), f"task {task_id}")
                )
            except RequestError as exc:
                raise PolypsegError(exc.reason) from None

        return read

    named = []
    for task in tasks:
        url = (task.get("data") or {}).get(config.data_key)
        if latest_annotation(task) is None and isinstance(url, str):
            named.append((f"task {task['id']} {url}", reader(url, task["id"])))
    return named


def _suffix(url: str) -> str:
    return media_suffix(url, ".jpg", 6)


def page_masks(result: list[dict[str, Any]], object_name: str, pages: int) -> dict[int, np.ndarray]:
    """The polyp mask of each page of a clip annotation that has regions (all its brush and
    polygon regions united), by page."""
    by_page: dict[int, list[dict[str, Any]]] = {}
    for region in result:
        page = region.get("item_index")
        if isinstance(page, int) and 0 <= page < pages:
            by_page.setdefault(page, []).append(region)
    masks = {page: annotation_mask(regions, object_name) for page, regions in by_page.items()}
    return {page: mask for page, mask in sorted(masks.items()) if mask is not None}
