"""The local dataset that retraining learns from: labelled images pulled from annotation tools.

    STORE/images/<key>-<tag><ext>   the image as downloaded (tag: of the image and mask's content)
    STORE/masks/<key>-<tag>.png     its polyp mask (every polyp of the image)
    STORE/index.json           per key: source, task, annotation id, update time, image digest, split
    STORE/sequences/<split>/<key>/frames/000012.png ...   a video's frames, in order
    STORE/sequences/<split>/<key>/masks/000012.png ...    masks of its labelled frames only
    STORE/sequences.json       per sequence key: source, fingerprint, update time, frame counts, split
    STORE/.lock                held by whoever pulls into the store or trains on it (store_lock)

Each entry is written file by file (temporary file, then rename) under names of its own
content, and the index last, after its files; an entry's earlier files are deleted only once
the index names the new ones, and a removed entry leaves the index first, then its files go. A
pull interrupted half-way thus leaves complete entries (never a new image beside an old mask),
no half-written file and at worst files that the index does not list (training reads only what
it lists), and the next pull redoes what is missing. A key is stable (source and task), so
pulling the same annotation twice changes nothing. The split is fixed by the key (one in ten
is validation), so validation images stay validation images as the dataset grows.

A DatasetStore's own lock is a thread lock, for the threads of one pull; pulls in different
processes hold `store_lock`, which also keeps them from changing files that a training reads.

A sequence (one per video source) is the folder layout that `polypseg finetune sam2-video`
reads (`--sequences STORE/sequences/train --val-sequences STORE/sequences/val`): it is written
whole in STORE/.partial/ and then renamed into place, so a reader sees the old sequence or the
new one, never a mix; STORE/.partial/ is cleared of leftovers by the next write.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from polypseg.atomic import write_atomic
from polypseg.datasets import IMAGE_SUFFIXES, PolypSample
from polypseg.errors import DatasetError
from polypseg.images import read_image, write_mask

log = logging.getLogger(__name__)

VALIDATION_SHARE = 10  # one key in ten is a validation image


@dataclass(frozen=True)
class LabelledImage:
    source: str  # where it came from: "labelstudio:<host>:<project>", "cvat:<task>", ...
    task: str  # the task (or image) id within the source
    annotation: str  # its version: what it draws, on which image (label_sources.annotation_version)
    updated: str  # the annotation's update time as the source gives it
    image: bytes
    image_suffix: str
    mask: np.ndarray  # bool (H, W), the image's size

    @property
    def key(self) -> str:
        return entry_key(self.source, self.task)


@dataclass(frozen=True)
class SequenceFrame:
    number: int  # orders the frames; names them frames/<number:06d><suffix>
    image_suffix: str
    image: Callable[[], bytes]  # read when written, so a long video is never held in memory
    mask: Callable[[], np.ndarray] | None  # None: an unlabelled frame


@dataclass(frozen=True)
class LabelledSequence:
    source: str  # one sequence per source (a video task or job)
    fingerprint: str  # changes whenever a frame, a mask or the frame range changes
    updated: str
    frames: list[SequenceFrame]  # in order


def _split(key: str) -> str:
    return "val" if int(hashlib.sha1(key.encode()).hexdigest(), 16) % VALIDATION_SHARE == 0 else "train"


def entry_key(source: str, task: str) -> str:
    raw = f"{source}/{task}"
    readable = re.sub(r"[^A-Za-z0-9]+", "-", raw).strip("-")[-60:]
    return f"{readable}-{hashlib.sha1(raw.encode()).hexdigest()[:8]}"


@contextmanager
def store_lock(root: str | os.PathLike[str]) -> Iterator[None]:
    """Hold STORE/.lock, waiting for it if another process holds it: pulls and trainings in
    different processes (a webhook's retrain, the scheduled trainer, another MODEL_DIR's
    retrain on the same store) take turns, so that none deletes a file that another trains on
    or saves the index over another's. A POSIX record lock, like the retrain lock: it dies with
    its process. Take it once per process: a second hold in the same process would not wait."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as handle:  # closing it releases the lock
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log.info("%s: another process is pulling into or training on this store; waiting", root)
            fcntl.lockf(handle, fcntl.LOCK_EX)
        yield


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _read_index(path: Path, what: str) -> dict[str, dict[str, Any]]:
    """One of the store's JSON indexes; none yet is an empty one, an unreadable one an error."""
    try:
        index: dict[str, dict[str, Any]] = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable {what} ({exc})") from None
    return index


class DatasetStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self.index = _read_index(self.root / "index.json", "dataset index")
        self.sequences = _read_index(self.root / "sequences.json", "sequence index")

    def has(self, source: str, task: str) -> bool:
        return entry_key(source, task) in self.index

    def tasks(self, source: str) -> set[str]:
        """The tasks of `source` the store holds."""
        return {e["task"] for e in self.index.values() if e["source"] == source}

    def holds(self, source: str, task: str, annotation: str) -> bool:
        """Whether the store holds this version of the task's annotation, whatever its update
        time (the rule of polypseg.label_sources: skip the download then)."""
        entry = self.index.get(entry_key(source, task))
        return entry is not None and entry["annotation"] == annotation

    def put(self, item: LabelledImage) -> None:
        image = read_image(item.image)  # refuse what is not an image before writing anything
        if image.shape[:2] != item.mask.shape:
            size = f"{image.shape[1]}x{image.shape[0]}"
            raise DatasetError(f"{item.source} task {item.task}: the mask does not fit the {size} image")
        key = item.key
        suffix, data = item.image_suffix.lower(), item.image
        if suffix not in IMAGE_SUFFIXES:  # .webp, .gif, no suffix...: stored as PNG, which training reads
            suffix, data = ".png", _png(image)
        digest = hashlib.sha256(item.image).hexdigest()
        tag = hashlib.sha256(digest.encode() + np.packbits(item.mask).tobytes()).hexdigest()[:10]
        image_name, mask_name = f"{key}-{tag}{suffix}", f"{key}-{tag}.png"
        write_atomic(self.root / "images" / image_name, data)
        write_mask(self.root / "masks" / mask_name, item.mask)
        with self._lock:
            previous = self.index.get(key, {})
            self.index[key] = {
                "source": item.source,
                "task": item.task,
                "annotation": item.annotation,
                "updated": item.updated,
                "digest": digest,
                "image": image_name,
                "mask": mask_name,
                "split": _split(key),
            }
            self._save_index()
        # The entry's earlier files, once the index no longer names them.
        if previous.get("image", image_name) != image_name:
            (self.root / "images" / previous["image"]).unlink(missing_ok=True)
        if previous.get("mask", mask_name) != mask_name:
            (self.root / "masks" / previous["mask"]).unlink(missing_ok=True)

    def remove_missing(
        self, source: str, present_tasks: set[str], within: set[str] | None = None
    ) -> list[str]:
        """Drop the entries of `source` whose task is no longer labelled there (deleted
        annotations); with `within`, only among those tasks (what a partial export covers)."""
        with self._lock:
            gone = [
                k
                for k, e in self.index.items()
                if e["source"] == source
                and e["task"] not in present_tasks
                and (within is None or e["task"] in within)
            ]
            entries = [self.index.pop(key) for key in gone]
            if gone:
                self._save_index()  # first: killed before the deletions, the files are merely unlisted
        for entry in entries:
            for path in (self.root / "images" / entry["image"], self.root / "masks" / entry["mask"]):
                path.unlink(missing_ok=True)
        return gone

    def sequence_is_current(self, source: str, fingerprint: str) -> bool:
        entry = self.sequences.get(entry_key(source, "sequence"))
        return entry is not None and entry["fingerprint"] == fingerprint

    def put_sequence(self, sequence: LabelledSequence) -> None:
        """Write a sequence whole beside the store, then rename it into place."""
        if len(sequence.frames) < 2 or sequence.frames[0].mask is None or sequence.frames[-1].mask is None:
            raise DatasetError(
                f"{sequence.source}: a sequence needs 2 frames or more, labelled on the first and the last"
            )
        key = entry_key(sequence.source, "sequence")
        split = _split(key)
        partial_root = self.root / ".partial"
        shutil.rmtree(partial_root, ignore_errors=True)  # leftovers of an interrupted write
        partial_root.mkdir(parents=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=partial_root))
        partial.chmod(0o755)  # mkdtemp's 0700 would hide the sequence from a trainer run as another user
        annotated = 0
        for frame in sequence.frames:
            data = frame.image()
            image = read_image(data)  # refuse what is not an image before anything moves
            suffix = frame.image_suffix.lower()
            if suffix not in IMAGE_SUFFIXES:
                suffix, data = ".png", _png(image)
            write_atomic(partial / "frames" / f"{frame.number:06d}{suffix}", data)  # synced before the rename
            if frame.mask is not None:
                mask = frame.mask()
                if mask.shape != image.shape[:2]:
                    raise DatasetError(
                        f"{sequence.source} frame {frame.number}: the mask does not fit its image"
                    )
                write_mask(partial / "masks" / f"{frame.number:06d}.png", mask)
                annotated += 1
        with self._lock:
            self._drop_sequence_folder(key)
            target = self._sequence_folder(key)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)
            self.sequences[key] = {
                "source": sequence.source,
                "fingerprint": sequence.fingerprint,
                "updated": sequence.updated,
                "frames": len(sequence.frames),
                "annotated": annotated,
                "folder": f"sequences/{split}/{key}",
                "split": split,
            }
            self._save_sequences()
        shutil.rmtree(partial_root, ignore_errors=True)

    def remove_sequence(self, source: str) -> bool:
        """Drop the sequence of `source` (its video has no labelled frame any more)."""
        key = entry_key(source, "sequence")
        with self._lock:
            if key not in self.sequences:
                return False
            del self.sequences[key]
            self._save_sequences()  # first, as remove_missing does
            self._drop_sequence_folder(key)
        return True

    def _sequence_folder(self, key: str) -> Path:
        return self.root / "sequences" / _split(key) / key  # the split is the key's, so is the folder

    def _drop_sequence_folder(self, key: str) -> None:
        """Remove the key's folder whether or not sequences.json lists it: a process killed
        between renaming a sequence into place and saving sequences.json leaves it unlisted, and
        os.replace cannot rename the next version onto a folder that is not empty."""
        folder = self._sequence_folder(key)
        if folder.is_dir():  # renamed out of sequences/ first, so that no reader finds it half-deleted
            trash = self.root / ".partial" / f"{key}.old"
            trash.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def _save_sequences(self) -> None:
        write_atomic(
            self.root / "sequences.json", json.dumps(self.sequences, indent=1, sort_keys=True).encode()
        )

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
