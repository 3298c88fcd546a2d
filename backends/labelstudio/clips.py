"""A colonoscopy video as Label Studio clip tasks (paged frames, `configs/polyp-video-masks.xml`),
and the masks of submitted clips back out as per-frame PNGs.

    polypseg video-tasks VIDEO --out DIR [--clip-frames 30] [--stride 1]
    polypseg export-video-masks --label-studio-project P --out DIR

`video-tasks` writes the frames as DIR/<video>/<frame>.jpg and the tasks as
DIR/<video>-tasks.json, one task per clip: `data.frames` (the frames' URLs, one page each),
`video`, `frame_start`, `frame_step` (the stride) and `fps`. Page k of a clip shows the video's
frame `frame_start + k * frame_step`. URLs are Label Studio local-files paths (relative to its
LOCAL_FILES_DOCUMENT_ROOT, `--files-root`, default `/`; the project needs a local-files storage
over DIR for Label Studio to serve them), or `--frames-url PREFIX` + the path inside DIR for
frames served by any web server.

Why 30 frames a clip by default: the backend answers a box with the track through the whole
clip in one request, and 30 frames take about 7 s on 2 CPU cores (docs/benchmarks.md), well
inside Label Studio's time-out; 30 pages are also what an annotator reviews with the arrow
keys in about a minute, and at 25 frames per second they are 1.2 s of video, short enough for
one box to hold the polyp through the clip.

`export-video-masks` writes every submitted clip (its latest annotation that is not cancelled)
as a sequence folder, DIR/<video>-<frame_start>/frames/<frame>.jpg and masks/<frame>.png, named
by the video's frame numbers: the layout `polypseg evaluate-video` and `polypseg finetune
sam2-video` read, and, folder by folder, images and masks that pair by name (stills). Every page
of a submitted clip gets a mask, empty where the annotation has no region: a page the annotator
reviewed and left without a region says the polyp is not in view there.
"""

from __future__ import annotations

import json
import logging
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from backends.labelstudio.export import LabelStudioProject, page_masks
from backends.labelstudio.regions import latest_annotation
from backends.request_errors import RequestError
from polypseg.atomic import write_atomic
from polypseg.errors import PolypsegError
from polypseg.images import read_image, write_mask
from polypseg.video.clips import Clip, cut_clips
from polypseg.video.frames import VideoFileSource

log = logging.getLogger(__name__)

CLIP_FRAMES = 30


def frame_url(path: Path, files_root: Path, frames_url: str | None, out: Path) -> str:
    """The URL Label Studio loads a frame from."""
    if frames_url:
        return frames_url.rstrip("/") + "/" + urllib.parse.quote(path.relative_to(out).as_posix())
    try:
        relative = path.resolve().relative_to(files_root.resolve())
    except ValueError:
        raise PolypsegError(
            f"{path}: not inside --files-root {files_root} (Label Studio's LOCAL_FILES_DOCUMENT_ROOT)"
        ) from None
    return "/data/local-files/?d=" + urllib.parse.quote(relative.as_posix())


def clip_task(clip: Clip, video: Path, fps: float, urls: list[str]) -> dict[str, Any]:
    return {
        "data": {
            "frames": urls,
            "video": video.name,
            "frame_start": clip.frame_start,
            "frame_step": clip.frame_step,
            "fps": fps,
        }
    }


def video_tasks(
    video: Path,
    out: Path,
    clip_frames: int = CLIP_FRAMES,
    stride: int = 1,
    files_root: Path = Path("/"),
    frames_url: str | None = None,
) -> Path:
    """Cut `video` into clip tasks (see the module's doc); the tasks file written."""
    source = VideoFileSource(video)
    folder = out / video.stem
    tasks = []
    for clip in cut_clips(source, folder, clip_frames, stride):
        urls = [frame_url(p, files_root, frames_url, out) for p in clip.paths]
        tasks.append(clip_task(clip, video, source.info.fps, urls))
    path = out / f"{video.stem}-tasks.json"
    write_atomic(path, json.dumps(tasks, indent=1).encode())
    log.info("%d clip tasks of up to %d frames in %s (frames in %s)", len(tasks), clip_frames, path, folder)
    return path


def export_video_masks(project: LabelStudioProject, out: Path) -> int:
    """Every submitted clip of `project` as a sequence folder in `out`; how many were written."""
    config, tasks = project.export()
    if not config.paged:
        raise PolypsegError(f"{project.name}: not a clip project (its <Image> has no valueList)")
    written = 0
    for task in tasks:
        annotation, frames = latest_annotation(task), (task.get("data") or {}).get("frames")
        if annotation is None or not isinstance(frames, list):
            continue
        try:
            _write_clip(project, task, page_masks(annotation["result"], config.object_name, len(frames)), out)
            written += 1
        except (RequestError, PolypsegError, OSError) as exc:
            log.warning("task %s skipped: %s", task.get("id"), getattr(exc, "reason", exc))
    log.info("%d submitted clips written to %s", written, out)
    return written


def _write_clip(project: LabelStudioProject, task: dict[str, Any], masks: dict[int, Any], out: Path) -> None:
    data = task["data"]
    start, step = int(data.get("frame_start", 0)), int(data.get("frame_step", 1))
    video = Path(str(data.get("video") or f"task-{task['id']}")).stem
    folder = out / f"{video}-{start:06d}"
    partial = out / f".{folder.name}.partial"  # written whole, then renamed: never half a clip
    shutil.rmtree(partial, ignore_errors=True)
    for page, url in enumerate(data["frames"]):
        frame = start + page * step
        image = project.fetcher.fetch(url, task["id"])
        pixels = read_image(image)
        mask = masks.get(page, np.zeros(pixels.shape[:2], bool))  # no region: the polyp is not in view
        if mask.shape != pixels.shape[:2]:
            raise PolypsegError(f"page {page + 1}: the mask is not the frame's size")
        (partial / "frames").mkdir(parents=True, exist_ok=True)
        suffix = ".png" if image.startswith(b"\x89PNG") else ".jpg"
        (partial / "frames" / f"{frame:06d}{suffix}").write_bytes(image)
        write_mask(partial / "masks" / f"{frame:06d}.png", mask)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
