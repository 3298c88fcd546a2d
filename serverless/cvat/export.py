"""CVAT exports into the dataset store: "CVAT for images 1.1" archives with images, read from a
file a user has or exported from a task through cvat-sdk.

In the archive's `annotations.xml`, each `<image>` carries its polygons (`points="x,y;x,y"`)
and masks (`rle` run lengths over the box `left`, `top`, `width`, `height`, starting with
background); all of an image's polygons and masks with the polyp label are united into its
mask. Images without any are not labelled and are skipped.
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from polypseg.data_store import DatasetStore, LabelledImage
from polypseg.errors import DatasetError, PolypsegError
from polypseg.formats.polygons import Polygon, polygons_to_mask

log = logging.getLogger(__name__)


def _mask_of(element: ET.Element, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    if element.tag == "polygon":
        points = [
            tuple(float(v) for v in pair.split(",")) for pair in element.get("points", "").split(";") if pair
        ]
        if len(points) >= 3:
            mask |= polygons_to_mask([Polygon(np.asarray(points))], width, height)
    else:
        runs = [int(float(v)) for v in element.get("rle", "").split(",") if v.strip()]
        left, top = int(float(element.get("left", 0))), int(float(element.get("top", 0)))
        w, h = int(float(element.get("width", 0))), int(float(element.get("height", 0)))
        flat = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
        if flat.size != w * h or left + w > width or top + h > height:
            raise DatasetError(
                f"mask on {element.get('label')}: its runs do not fill its {w}x{h} box in the image"
            )
        mask[top : top + h, left : left + w] = flat.reshape(h, w)
    return mask


def read_cvat_archive(path: Path, label: str = "polyp", source: str | None = None) -> Iterator[LabelledImage]:
    """The labelled images of a "CVAT for images 1.1" archive exported with its images."""
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a CVAT export archive ({exc})") from None
    with archive:
        names = set(archive.namelist())
        if "annotations.xml" not in names:
            raise DatasetError(f"{path}: no annotations.xml (export as 'CVAT for images 1.1' with images)")
        try:
            root = ET.fromstring(archive.read("annotations.xml"))
        except ET.ParseError as exc:
            raise DatasetError(f"{path}: annotations.xml is not readable XML ({exc})") from None
        task_id = root.findtext("meta/task/id") or root.findtext("meta/job/id") or path.stem
        updated = root.findtext("meta/task/updated") or root.findtext("meta/dumped") or ""
        source = source or f"cvat:{task_id}"
        for image in root.iter("image"):
            shapes = [e for e in image if e.tag in ("polygon", "mask") and e.get("label") == label]
            if not shapes:
                continue
            name = image.get("name", "")
            width, height = int(image.get("width", 0)), int(image.get("height", 0))
            stored = next((n for n in (f"images/{name}", name) if n in names), None)
            if stored is None:
                raise DatasetError(f"{path}: image {name} is not in the archive (export with images)")
            mask = np.zeros((height, width), dtype=bool)
            for shape in shapes:
                mask |= _mask_of(shape, width, height)
            fingerprint = hashlib.sha1(b"".join(ET.tostring(s) for s in shapes)).hexdigest()[:16]
            suffix = PurePosixPath(name).suffix.lower() or ".jpg"
            yield LabelledImage(source, name, fingerprint, updated, archive.read(stored), suffix, mask)


def pull_cvat_archive(path: Path, store: DatasetStore, label: str = "polyp") -> dict[str, int]:
    """Put an archive's labelled images into the store; images gone from it are dropped."""
    counts = {"new": 0, "changed": 0, "unchanged": 0, "removed": 0, "failed": 0}
    present: set[str] = set()
    source = None
    for item in read_cvat_archive(path, label):
        source = item.source
        present.add(item.task)
        if store.is_current(item.source, item.task, item.annotation, item.updated):
            counts["unchanged"] += 1
            continue
        known = item.key in store.index
        try:
            store.put(item)
        except PolypsegError as exc:  # one bad image (unreadable, mask of another size) is skipped
            log.warning("%s: %s not stored: %s", path, item.task, exc)
            counts["failed"] += 1
            continue
        counts["changed" if known else "new"] += 1
    if source is not None:
        counts["removed"] = len(store.remove_missing(source, present))
    return counts


def export_cvat_task(host: str, credentials: tuple[str, str], task_id: int, folder: Path) -> Path:
    """A task exported through cvat-sdk as a "CVAT for images 1.1" archive with images."""
    from cvat_sdk import make_client

    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"cvat-task-{task_id}.zip"
    with make_client(host, credentials=credentials) as client:
        client.tasks.retrieve(task_id).export_dataset("CVAT for images 1.1", archive, include_images=True)
    return archive
