"""Pulling a Label Studio project's labelled polyps into the dataset store.

The project's tasks come from Label Studio's export API (JSON, annotated tasks only); each
task's latest annotation that is not cancelled (the core's rule, `polypseg.label_sources`)
becomes a mask (BrushLabels RLE and PolygonLabels, every region united) and its image is
downloaded with Label Studio's token. A task whose annotation the store already holds (the
same regions on the same image URL, whatever its update time) is not downloaded again; tasks
no longer labelled are dropped from the store. Label Studio's reads
are retried with backoff; an image that fails is reported and skipped, never a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import requests

from backends.labelstudio.errors import MediaError
from backends.labelstudio.label_config import parse_label_config
from backends.labelstudio.media import MediaFetcher
from backends.request_errors import RequestError
from polypseg.data_store import DatasetStore, LabelledImage
from polypseg.errors import PolypsegError
from polypseg.formats.brush import decode_brush_rle
from polypseg.formats.polygons import Polygon, polygons_to_mask
from polypseg.label_sources import LabelSource, PullError, PullReport, annotation_version
from polypseg.label_sources import latest_annotation as _latest

log = logging.getLogger(__name__)
T = TypeVar("T")


def annotation_mask(result: list[dict[str, Any]], object_name: str) -> np.ndarray | None:
    """Every brush and polygon region on the image united, or None if there is none."""
    mask: np.ndarray | None = None
    for region in result:
        kind, value = region.get("type"), region.get("value") or {}
        width, height = region.get("original_width"), region.get("original_height")
        if region.get("to_name") != object_name or not width or not height:
            continue
        if kind in ("brushlabels", "brush") and value.get("format") == "rle":
            found = decode_brush_rle(value["rle"], int(width), int(height))
        elif kind in ("polygonlabels", "polygon") and value.get("points"):
            outline = np.asarray(value["points"], dtype=np.float64) * [width / 100, height / 100]
            found = polygons_to_mask([Polygon(outline)], int(width), int(height))
        else:
            continue
        mask = found if mask is None else mask | found
    return mask


def latest_annotation(task: dict[str, Any]) -> dict[str, Any] | None:
    """The task's annotation edited last among those not cancelled (ties: the larger id)."""
    annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    return _latest(annotations, lambda a: str(a.get("updated_at") or ""), lambda a: int(a.get("id") or 0))


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

    def pull(self, store: DatasetStore) -> PullReport:
        try:
            config = parse_label_config(self.get(f"/api/projects/{self.project}")["label_config"])
            tasks = self.get(f"/api/projects/{self.project}/export?exportType=JSON&download_all_tasks=false")
        except RequestError as exc:  # unreachable after retries, refused, not a project to pull
            raise PullError(f"{self.name}: {exc.reason}") from None
        report, present = PullReport(), set()
        for task in tasks:
            annotation = latest_annotation(task)
            mask = annotation_mask(annotation["result"], config.object_name) if annotation else None
            if annotation is None or mask is None:
                continue
            task_id = str(task["id"])
            updated = str(annotation.get("updated_at") or "")
            url = (task.get("data") or {}).get(config.data_key, "")
            version = annotation_version(_regions_digest(annotation["result"]), str(url))
            present.add(task_id)
            if store.holds(self.source, task_id, version):
                report.unchanged += 1
                continue
            known = store.has(self.source, task_id)

            def download(url: str = url, task: dict[str, Any] = task) -> bytes:
                return self.fetcher.fetch(url, task["id"])

            try:
                image = with_retries(download, f"image of task {task_id}")
                suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower() or ".jpg"
                store.put(LabelledImage(self.source, task_id, version, updated, image, suffix[:6], mask))
            except (RequestError, PolypsegError, ValueError) as exc:
                report.failed[task_id] = str(exc)
                log.warning("task %s skipped: %s", task_id, exc)
                continue
            if known:
                report.changed += 1
            else:
                report.new += 1
        report.removed = len(store.remove_missing(self.source, present))
        return report
