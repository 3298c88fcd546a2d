"""The local dataset that retraining learns from: labelled images pulled from annotation tools.

    STORE/images/<key><ext>    the image as downloaded
    STORE/masks/<key>.png      its polyp mask (every polyp of the image)
    STORE/index.json           per key: source, task, annotation id, update time, image digest, split

Each entry is written file by file (temporary file, then rename) and the index last, after
its files: a pull interrupted half-way leaves complete entries and no half-written file, and
the next pull redoes what is missing. A key is stable (source and task), so pulling the same
annotation twice changes nothing. The split is fixed by the key (one in ten is validation),
so validation images stay validation images as the dataset grows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from polypseg.atomic import write_atomic
from polypseg.datasets import IMAGE_SUFFIXES, PolypSample
from polypseg.errors import DatasetError
from polypseg.images import read_image

VALIDATION_SHARE = 10  # one key in ten is a validation image


@dataclass(frozen=True)
class LabelledImage:
    source: str  # where it came from: "labelstudio:<host>:<project>", "cvat:<task>", ...
    task: str  # the task (or image) id within the source
    annotation: str  # the annotation id
    updated: str  # the annotation's update time as the source gives it
    image: bytes
    image_suffix: str
    mask: np.ndarray  # bool (H, W), the image's size

    @property
    def key(self) -> str:
        return entry_key(self.source, self.task)


def entry_key(source: str, task: str) -> str:
    raw = f"{source}/{task}"
    readable = re.sub(r"[^A-Za-z0-9]+", "-", raw).strip("-")[-60:]
    return f"{readable}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class DatasetStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        path = self.root / "index.json"
        try:
            self.index: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except FileNotFoundError:
            self.index = {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{path}: not a readable dataset index ({exc})") from None

    def is_current(self, source: str, task: str, annotation: str, updated: str) -> bool:
        """Whether the store already holds this version of this annotation (skip the download)."""
        entry = self.index.get(entry_key(source, task))
        return entry is not None and entry["annotation"] == annotation and entry["updated"] == updated

    def put(self, item: LabelledImage) -> None:
        image = read_image(item.image)  # refuse what is not an image before writing anything
        if image.shape[:2] != item.mask.shape:
            size = f"{image.shape[1]}x{image.shape[0]}"
            raise DatasetError(f"{item.source} task {item.task}: the mask does not fit the {size} image")
        key = item.key
        suffix, data = item.image_suffix.lower(), item.image
        if suffix not in IMAGE_SUFFIXES:  # .webp, .gif, no suffix...: stored as PNG, which training reads
            suffix, data = ".png", _png(image)
        image_name = f"{key}{suffix}"
        write_atomic(self.root / "images" / image_name, data)
        write_atomic(self.root / "masks" / f"{key}.png", _png(item.mask.astype(np.uint8) * 255))
        previous = self.index.get(key, {}).get("image")
        if previous and previous != image_name:  # the same task's image came in another format
            (self.root / "images" / previous).unlink(missing_ok=True)
        with self._lock:
            self.index[key] = {
                "source": item.source,
                "task": item.task,
                "annotation": item.annotation,
                "updated": item.updated,
                "digest": hashlib.sha256(item.image).hexdigest(),
                "image": image_name,
                "mask": f"{key}.png",
                "split": "val"
                if int(hashlib.sha1(key.encode()).hexdigest(), 16) % VALIDATION_SHARE == 0
                else "train",
            }
            self._save_index()

    def remove_missing(self, source: str, present_tasks: set[str]) -> list[str]:
        """Drop the entries of `source` whose task is no longer labelled there (deleted annotations)."""
        with self._lock:
            gone = [
                k for k, e in self.index.items() if e["source"] == source and e["task"] not in present_tasks
            ]
            for key in gone:
                entry = self.index.pop(key)
                for path in (self.root / "images" / entry["image"], self.root / "masks" / entry["mask"]):
                    path.unlink(missing_ok=True)
            if gone:
                self._save_index()
        return gone

    def _save_index(self) -> None:
        write_atomic(self.root / "index.json", json.dumps(self.index, indent=1, sort_keys=True).encode())

    def fingerprint(self) -> str:
        """Changes whenever an entry is added, updated (a new annotation or image) or removed."""
        return hashlib.sha1(json.dumps(self.index, sort_keys=True).encode()).hexdigest()

    def samples(self, split: str | None = None) -> list[PolypSample]:
        """The entries as training samples (boxes from the masks' components)."""
        return [
            PolypSample(
                name=key,
                image_path=self.root / "images" / entry["image"],
                mask_path=self.root / "masks" / entry["mask"],
                boxes=None,
            )
            for key, entry in sorted(self.index.items())
            if split is None or entry["split"] == split
        ]
