"""CVAT exports into the dataset store: archives a user downloaded, or exports made through
cvat-sdk, of tasks, jobs and projects, image and video tasks alike.

Every frame with a polyp polygon or mask becomes a store entry (its image as stored in the
archive, its mask painted as CVAT paints it: see annotations.py and rasterise.py). A video
task's labelled frames also become one sequence (frames from the first labelled one to the
last, masks for the labelled ones), the layout that `polypseg finetune sam2-video` reads.

Pulls are incremental: a frame whose shapes, size and image (the zip's own CRC) are those the
store holds is left alone, whatever update time the export gives (an edit elsewhere in the task
moves it); each entry records the update time of its export kind (`meta/task/updated`,
`meta/job/updated`, or the project's task's). Frames no longer labelled within what the export
covers (a job covers its frames only) are removed.

A frame whose shape cannot be drawn, or whose image is missing from the archive, is skipped and
counted, its earlier version kept; the rest of the archive still comes in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from backends.cvat.annotations import IMAGES_FORMAT, Export, Frame, read_annotations, sources_by_frame
from polypseg.data_store import DatasetStore, LabelledImage, LabelledSequence, SequenceFrame
from polypseg.errors import DatasetError, PolypsegError
from polypseg.label_sources import LabelSource, PullReport, annotation_version

log = logging.getLogger(__name__)

EXPORT_KINDS = ("task", "job", "project")


class _Images:
    """The archive's images, found by their name with or without its extension (a video
    frame is `frame_000012` in the XML and `images/frame_000012.PNG` in the archive)."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        self.by_path: dict[str, zipfile.ZipInfo] = {}
        self.by_stem: dict[str, list[zipfile.ZipInfo]] = {}
        for info in archive.infolist():
            if info.is_dir():
                continue
            name = info.filename[len("images/") :] if info.filename.startswith("images/") else info.filename
            self.by_path[name] = info
            self.by_stem.setdefault(posixpath.splitext(name)[0], []).append(info)

    def find(self, frame: Frame) -> zipfile.ZipInfo | None:
        name = f"{frame.subset}/{frame.file_name}" if frame.subset else frame.file_name
        if name in self.by_path:
            return self.by_path[name]
        found = self.by_stem.get(posixpath.splitext(name)[0], []) or self.by_stem.get(name, [])
        return found[0] if len(found) == 1 else None

    def read(self, info: zipfile.ZipInfo) -> bytes:
        return self.archive.read(info)


def _suffix(info: zipfile.ZipInfo) -> str:
    return posixpath.splitext(info.filename)[1].lower()


def _open(path: Path) -> tuple[zipfile.ZipFile, Export]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: not a CVAT export archive ({exc})") from None
    try:
        xml = archive.read("annotations.xml")
    except KeyError:
        archive.close()
        raise DatasetError(
            f"{path}: no annotations.xml in it (export as '{IMAGES_FORMAT}' with images)"
        ) from None
    try:
        return archive, read_annotations(xml, path.stem)
    except DatasetError as exc:
        archive.close()
        raise DatasetError(f"{path}: {exc}") from None


def pull_cvat_archive(path: Path, store: DatasetStore, label: str = "polyp") -> PullReport:
    """Put an export's labelled frames (and its video tasks' sequences) into the store.

    Counted: new, changed, unchanged, removed (no longer labelled), skipped (a shape that cannot
    be drawn or an image missing from the archive), failed (images the store refused, with
    why), sequences (written or rewritten)."""
    counts = PullReport()
    archive, export = _open(path)
    with archive:
        images = _Images(archive)
        if not any(info.filename.startswith("images/") for info in archive.infolist()) and any(
            f.labelled(label) for f in export.frames
        ):
            raise DatasetError(f"{path}: the archive holds no images (export it with images)")
        grouped = sources_by_frame(export.frames)
        for source_id, source in export.sources.items():
            frames = grouped.get(source_id, [])
            kept, unusable = _pull_frames(
                path, store, source_id, source.updated, frames, images, label, counts
            )
            counts.removed += len(store.remove_missing(source_id, kept, within=source.covered))
            if source.video:
                usable = [f for f in frames if f.name not in unusable]
                counts.sequences += _pull_sequence(store, source_id, source.updated, usable, images, label)
    log.info("%s (%s export, %s): %s", path, export.kind, export.format, counts)
    return counts


def _pull_frames(
    path: Path,
    store: DatasetStore,
    source: str,
    updated: str,
    frames: list[Frame],
    images: _Images,
    label: str,
    counts: PullReport,
) -> tuple[set[str], set[str]]:
    """Store one source's labelled frames; the names the store keeps for it, and those of the
    frames skipped (a shape that cannot be drawn, an image missing or refused)."""
    kept: set[str] = set()
    unusable: set[str] = set()
    for frame in frames:
        if not frame.labelled(label):
            continue
        kept.add(frame.name)  # skipped frames keep their earlier version too
        fingerprint = frame.fingerprint()
        info = images.find(frame)
        if info is None:
            log.warning("%s: frame %s is not in the archive; skipped", path, frame.file_name)
            counts.skipped += 1
            unusable.add(frame.name)
            continue
        digest = f"crc32:{info.CRC:08x}:{info.file_size}"  # the zip's own checksum: no decompression
        annotation = annotation_version(fingerprint, digest)
        if store.holds(source, frame.name, annotation):  # whatever its update time says
            counts.unchanged += 1
            continue
        try:
            mask = frame.polyp_mask(label)
        except DatasetError as exc:
            log.warning("%s: frame %s skipped: %s", path, frame.file_name, exc)
            counts.skipped += 1
            unusable.add(frame.name)
            continue
        known = store.has(source, frame.name)
        item = LabelledImage(source, frame.name, annotation, updated, images.read(info), _suffix(info), mask)
        try:
            store.put(item)
        except PolypsegError as exc:  # unreadable, or not the size the XML gives
            log.warning("%s: frame %s not stored: %s", path, frame.file_name, exc)
            counts.failed[f"{source}/{frame.name}"] = str(exc)
            unusable.add(frame.name)
            continue
        if known:
            counts.changed += 1
        else:
            counts.new += 1
    return kept, unusable


def _pull_sequence(
    store: DatasetStore, source: str, updated: str, frames: list[Frame], images: _Images, label: str
) -> int:
    """A video's labelled frames as one sequence: every frame of the archive from the first
    labelled one to the last, masks on the labelled ones. 1 if it was (re)written."""
    labelled = sorted((f for f in frames if f.labelled(label)), key=lambda f: f.number)
    by_number = {f.number: f for f in labelled}
    in_range: list[tuple[int, zipfile.ZipInfo, Frame | None]] = []
    if labelled:
        for number, info in _video_frames(images, frames, labelled[0].number, labelled[-1].number):
            in_range.append((number, info, by_number.get(number)))
    while in_range and in_range[-1][2] is None:  # a labelled frame's image missing: end earlier
        in_range.pop()
    while in_range and in_range[0][2] is None:
        in_range.pop(0)
    if len(in_range) < 2:  # no labelled stretch of two frames or more (any more)
        store.remove_sequence(source)
        return 0
    parts = [f"{n}:{i.CRC:08x}:{f.fingerprint() if f else '-'}" for n, i, f in in_range]
    fingerprint = hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]
    if store.sequence_is_current(source, fingerprint):
        return 0

    def mask_of(frame: Frame) -> Callable[[], np.ndarray]:
        return lambda: frame.polyp_mask(label)

    def image_of(info: zipfile.ZipInfo) -> Callable[[], bytes]:
        return lambda: images.read(info)

    sequence = LabelledSequence(
        source,
        fingerprint,
        updated,
        [
            SequenceFrame(n, _suffix(i), image_of(i), mask_of(f) if f is not None else None)
            for n, i, f in in_range
        ],
    )
    try:
        store.put_sequence(sequence)
    except PolypsegError as exc:
        log.warning("%s: sequence not stored: %s", source, exc)
        return 0
    return 1


def _video_frames(
    images: _Images, frames: list[Frame], first: int, last: int
) -> list[tuple[int, zipfile.ZipInfo]]:
    """The archive's images of the frames first..last of a video, in order; a labelled frame
    gives the naming (`frame_` + number, shifted in project exports) and the folder."""
    template = frames[0]
    try:
        shift = int(template.file_name[len("frame_") :]) - template.number
    except ValueError:
        return []
    found = []
    for number in range(first, last + 1):
        probe = Frame(template.source, number, "", f"frame_{number + shift:06d}", template.subset, 0, 0)
        info = images.find(probe)
        if info is not None:
            found.append((number, info))
    return found


def export_from_cvat(
    host: str,
    kind: str,
    resource_id: int,
    folder: Path,
    *,
    access_token: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> Path:
    """A task, job or project exported through cvat-sdk as a "CVAT for images 1.1" archive with
    images (the format that names every frame, image and video tasks alike)."""
    if kind not in EXPORT_KINDS:
        raise PolypsegError(f"{kind!r} is not one of {', '.join(EXPORT_KINDS)}")
    if not access_token and not credentials:
        raise PolypsegError(
            "no CVAT credentials: set CVAT_ACCESS_TOKEN (a personal access token), "
            "or CVAT_USERNAME and CVAT_PASSWORD"
        )
    import urllib3
    from cvat_sdk import make_client
    from cvat_sdk.api_client.exceptions import ApiException
    from cvat_sdk.core.exceptions import CvatSdkException

    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / f"cvat-{kind}-{resource_id}.zip"
    try:
        if access_token:
            client = make_client(host, access_token=access_token)
        else:
            client = make_client(host, credentials=credentials)
        with client:
            proxy = {"task": client.tasks, "job": client.jobs, "project": client.projects}[kind]
            # The archive is written beside its final name, so that a broken download never
            # looks like a whole export.
            fd, partial = tempfile.mkstemp(prefix=f".{archive.name}.", suffix=".part", dir=folder)
            os.close(fd)
            try:
                proxy.retrieve(resource_id).export_dataset(IMAGES_FORMAT, partial, include_images=True)
                os.replace(partial, archive)
            finally:
                Path(partial).unlink(missing_ok=True)
    except ApiException as exc:
        raise PolypsegError(
            f"CVAT at {host} refused the {kind} {resource_id} export: {exc.status} {exc.reason}"
        ) from None
    except CvatSdkException as exc:  # a host that is no CVAT, an export that failed on the server
        raise PolypsegError(f"CVAT at {host}: the {kind} {resource_id} export failed ({exc})") from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, unknown host, timed out
        reason = getattr(exc, "reason", None) or exc  # MaxRetryError keeps the cause in .reason
        raise PolypsegError(f"CVAT at {host} cannot be reached ({reason})") from None
    return archive


def cvat_credentials_from_env() -> tuple[str | None, tuple[str, str] | None]:
    """A personal access token from CVAT_ACCESS_TOKEN (the variable cvat-cli reads), else a
    user name and password from CVAT_USERNAME and CVAT_PASSWORD."""
    token = os.environ.get("CVAT_ACCESS_TOKEN")
    user, password = os.environ.get("CVAT_USERNAME"), os.environ.get("CVAT_PASSWORD")
    if token:
        return token, None
    if user and password:
        return None, (user, password)
    raise PolypsegError(
        "no CVAT credentials: set CVAT_ACCESS_TOKEN (a personal access token), "
        "or CVAT_USERNAME and CVAT_PASSWORD"
    )


def pull_cvat_server(
    host: str,
    kind: str,
    resource_id: int,
    store: DatasetStore,
    access_token: str | None = None,
    credentials: tuple[str, str] | None = None,
    label: str = "polyp",
) -> PullReport:
    """Export a task, job or project from a CVAT server and pull it as an archive would be."""
    with tempfile.TemporaryDirectory(prefix="polypseg-cvat-") as folder:
        archive = export_from_cvat(
            host, kind, resource_id, Path(folder), access_token=access_token, credentials=credentials
        )
        return pull_cvat_archive(archive, store, label)


class CvatArchive(LabelSource):
    """An export archive a user downloaded from CVAT (task, job or project)."""

    def __init__(self, path: Path, label: str = "polyp") -> None:
        self.path, self.label = path, label

    @property
    def name(self) -> str:
        return f"CVAT archive {self.path}"

    def pull(self, store: DatasetStore) -> PullReport:
        return pull_cvat_archive(self.path, store, self.label)


class CvatServerExport(LabelSource):
    """A task, job or project exported from a CVAT server through cvat-sdk at each pull."""

    def __init__(
        self,
        host: str,
        kind: str,
        resource_id: int,
        access_token: str | None = None,
        credentials: tuple[str, str] | None = None,
        label: str = "polyp",
    ) -> None:
        self.host, self.kind, self.resource_id = host, kind, resource_id
        self.access_token, self.credentials, self.label = access_token, credentials, label

    @property
    def name(self) -> str:
        return f"CVAT {self.kind} {self.resource_id} at {self.host}"

    def pull(self, store: DatasetStore) -> PullReport:
        return pull_cvat_server(
            self.host, self.kind, self.resource_id, store, self.access_token, self.credentials, self.label
        )
