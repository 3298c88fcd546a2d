"""A polyp mask on every frame of a CVAT task where a polyp rectangle is, for any CVAT
(open-source included): annotators box the polyp (a tracked or interpolated rectangle track
covers a whole video), then one command outlines it on every frame.

    python -m backends.cvat.boxes_to_masks --server-host https://cvat.example.org --task 42 \\
        --user annotator [--label polyp] [--mask-label polyp] [--checkpoint FILE]

(the password is read from CVAT_PASSWORD, else asked for). The task's rectangles with
`--label` are read as CVAT itself expands them: standalone shapes, and tracks on every frame
they cover (keyframes, the frames CVAT interpolates between them, and the frames after the last
keyframe up to the task's end, none where the track is outside). Only the frames that have a
box are fetched, one at a time, so video tasks work too. Masks are added beside the boxes
(source "auto"); nothing is deleted.

With `--detect [--min-score S] [--detector FILE]` every frame is fetched, and on the frames
without a box the polyp detector looks for polyps, each outlined the same way: a task with no
boxes at all is pre-annotated (a video task included).

`BoxesToMasks` is a `cvat_sdk.auto_annotation` detection function, but it is driven here rather
than by `cvat-cli task auto-annotate`: cvat_sdk 2.80's `annotate_task` hands a function only the
frame's file name, which is the same for every frame of a video task, and downloads every
chunk first, refusing tasks stored as video chunks (cvat_sdk/auto_annotation/driver.py,
cvat_sdk/datasets/task_dataset.py). Here the context also carries the frame's index.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import PIL.Image
from cvat_sdk import models
from cvat_sdk.auto_annotation import (
    DetectionFunctionContext,
    DetectionFunctionSpec,
    label_spec,
)

from backends.cvat.agent_detector import shapes_of
from polypseg.cli.options import min_score
from polypseg.detection_job import find_polyps
from polypseg.detector import PolypDetector
from polypseg.errors import PolypsegError
from polypseg.images import as_rgb
from polypseg.predictors.base import ImagePredictor
from polypseg.prompts import Box, Prompt

log = logging.getLogger("polypseg.cvat")

UPLOAD_EVERY = 100  # frames of masks per request, as CVAT's own auto-annotation batches them


class FrameContext(DetectionFunctionContext):
    """What a detection function is told about a frame, with the frame's index in the task."""

    def __init__(
        self,
        frame_index: int,
        frame_name: str,
        conf_threshold: float | None = None,
        conv_mask_to_poly: bool = False,
    ) -> None:
        self._frame_index, self._frame_name = frame_index, frame_name
        self._conf_threshold, self._conv_mask_to_poly = conf_threshold, conv_mask_to_poly

    @property
    def frame_index(self) -> int:
        return self._frame_index

    @property
    def frame_name(self) -> str:
        return self._frame_name

    @property
    def conf_threshold(self) -> float | None:
        return self._conf_threshold

    @property
    def conv_mask_to_poly(self) -> bool:
        return self._conv_mask_to_poly


class BoxesToMasks:
    """A detection function that knows the task's polyp rectangles by frame index and answers
    each frame with one mask (or polygon, where the caller asks) per rectangle. Given a
    `detector`, a frame without a rectangle gets one per polyp the detector finds there
    (scoring at least the context's conf_threshold, else `min_score`, else the detector's own
    floor)."""

    def __init__(
        self,
        predictor: ImagePredictor,
        boxes: Mapping[int, list[Box]],
        label: str = "polyp",
        detector: PolypDetector | None = None,
        min_score: float | None = None,
    ) -> None:
        self.predictor = predictor
        self.boxes = boxes
        self.detector, self.min_score = detector, min_score
        self.spec = DetectionFunctionSpec(labels=[label_spec(label, 0, type="mask")])

    def detect(
        self, context: DetectionFunctionContext, image: PIL.Image.Image
    ) -> list[models.LabeledShapeRequest]:
        index = getattr(context, "frame_index", None)
        if not isinstance(index, int):
            # A bare frame name cannot tell the frames of a video task apart (see module doc).
            raise PolypsegError("boxes_to_masks needs the frame's index: run it with FrameContext")
        frame = as_rgb(np.asarray(image))
        boxes = self.boxes.get(index, [])
        if boxes:
            prepared = self.predictor.prepare(frame)
            masks = [self.predictor.segment(prepared, Prompt(box=box)).mask for box in boxes]
        elif self.detector is not None:
            floor = context.conf_threshold if context.conf_threshold is not None else self.min_score
            masks = [polyp.mask for polyp in find_polyps(self.detector, self.predictor, frame, floor).polyps]
        else:
            return []
        return shapes_of(masks, context.conv_mask_to_poly)  # as the detector function gives them


def _rectangle(points: Iterable[float]) -> Box | None:
    x1, y1, x2, y2 = (float(v) for v in points)
    box = Box(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    return box if box.width > 0 and box.height > 0 else None


def track_boxes(track: models.LabeledTrack, frame_count: int) -> dict[int, Box]:
    """A rectangle track's box on every frame where CVAT shows it: keyframes not outside, the
    frames between a visible keyframe and the next (points interpolated linearly, as CVAT's
    dataset manager does), and after the last keyframe, if visible, up to the task's end."""
    keyframes = sorted((s for s in track.shapes if s.type.value == "rectangle"), key=lambda s: s.frame)
    boxes: dict[int, Box] = {}
    for current, following in zip(keyframes, [*keyframes[1:], None], strict=True):
        if current.outside:
            continue
        start = np.asarray(current.points, dtype=np.float64)
        if following is None:
            stop_frame, change = frame_count, np.zeros(4)
        else:
            stop_frame = following.frame
            change = (np.asarray(following.points, dtype=np.float64) - start) / (
                following.frame - current.frame
            )
        for frame in range(current.frame, min(stop_frame, frame_count)):
            box = _rectangle(start + change * (frame - current.frame))
            if box is not None and frame >= track.frame:
                boxes[frame] = box
    return boxes


def task_boxes(
    annotations: models.LabeledData, label_ids: set[int], frame_count: int
) -> dict[int, list[Box]]:
    """The polyp rectangles on each frame of a task: its rectangle shapes and rectangle tracks
    with one of `label_ids`, keyed by frame index."""
    boxes: dict[int, list[Box]] = defaultdict(list)
    for shape in annotations.shapes:
        if shape.label_id in label_ids and shape.type.value == "rectangle" and 0 <= shape.frame < frame_count:
            box = _rectangle(shape.points)
            if box is not None:
                boxes[shape.frame].append(box)
    for track in annotations.tracks:
        if track.label_id in label_ids:
            for frame, box in track_boxes(track, frame_count).items():
                boxes[frame].append(box)
    return dict(boxes)


def mask_shapes(
    function: BoxesToMasks,
    frames: Iterable[int],
    load_frame: Callable[[int], PIL.Image.Image],
    label_id: int,
    frame_name: Callable[[int], str] = str,
) -> Iterable[list[models.LabeledShapeRequest]]:
    """Run the function on each of `frames` (fetched one at a time), yielding each frame's
    shapes labelled with `label_id`, ready to upload."""
    for frame in frames:
        context = FrameContext(frame, frame_name(frame))
        found = function.detect(context, load_frame(frame))
        yield [
            models.LabeledShapeRequest(
                type=shape.type,
                frame=frame,
                label_id=label_id,
                points=shape.points,
                source="auto",
                occluded=False,
                z_order=0,
                attributes=[],
            )
            for shape in found
        ]


def annotate(
    client: Any,
    task_id: int,
    predictor: ImagePredictor,
    label: str,
    mask_label: str,
    detector: PolypDetector | None = None,
    min_score: float | None = None,
) -> int:
    """Add a mask for every `label` rectangle of a task, and with a `detector` for every polyp
    it finds on the frames without one; the number of masks added."""
    from cvat_sdk.datasets import MediaDownloadPolicy, TaskDataset

    dataset = TaskDataset(
        client,
        task_id,
        load_annotations=False,
        media_download_policy=MediaDownloadPolicy.FETCH_FRAMES_ON_DEMAND,
    )
    samples = {sample.frame_index: sample for sample in dataset.samples}  # deleted frames are left out
    box_labels = {lb.id for lb in dataset.labels if lb.name == label}
    mask_labels = [lb.id for lb in dataset.labels if lb.name == mask_label]
    if not box_labels or not mask_labels:
        names = ", ".join(sorted(lb.name for lb in dataset.labels))
        raise PolypsegError(f"task {task_id} has no label {label!r} or {mask_label!r} (its labels: {names})")
    task = client.tasks.retrieve(task_id)
    annotations = task.get_annotations()
    boxes = task_boxes(annotations, box_labels, task.size)
    if detector is not None:
        frames = sorted(samples)
        log.info("task %d: %d frames, %d with %s boxes", task_id, len(frames), len(boxes), label)
    else:
        frames = sorted(frame for frame in boxes if frame in samples)
        log.info("task %d: %d frames with %s boxes", task_id, len(frames), label)
    # A run that stopped part-way is taken up where it stopped: frames that already hold an
    # automatic mask of `mask_label` are not given a second one.
    masked = {
        shape.frame
        for shape in annotations.shapes
        if shape.label_id in mask_labels
        and shape.source == "auto"
        and shape.type.value in ("mask", "polygon")
    } & set(frames)
    if masked:
        log.info("%d of them have masks from an earlier run: left as they are", len(masked))
        frames = [frame for frame in frames if frame not in masked]
    function = BoxesToMasks(predictor, boxes, mask_label, detector, min_score)
    batch: list[models.LabeledShapeRequest] = []
    added = 0
    shapes_by_frame = mask_shapes(
        function,
        frames,
        lambda frame: samples[frame].media.load_image(),
        mask_labels[0],
        lambda frame: samples[frame].frame_name,
    )
    for done, shapes in enumerate(shapes_by_frame, start=1):
        batch += shapes
        if done % UPLOAD_EVERY == 0 or done == len(frames):
            if batch:
                client.tasks.api.partial_update_annotations(
                    "create",
                    task_id,
                    patched_labeled_data_request=models.PatchedLabeledDataRequest(shapes=batch),
                )
            added += len(batch)
            log.info("%d/%d frames done, %d masks added", done, len(frames), added)
            batch = []
    return added


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server-host", required=True)
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--label", default="polyp", help="label of the boxes (default polyp)")
    parser.add_argument("--mask-label", help="label given to the masks (default: --label)")
    parser.add_argument("--checkpoint", help="box model (default: the shipped U-Net)")
    parser.add_argument(
        "--detect",
        action="store_true",
        help="also outline the polyps the detector finds on frames without a box",
    )
    parser.add_argument(
        "--min-score", type=min_score, help="with --detect: lowest detection score kept (0..1)"
    )
    parser.add_argument("--detector", help="with --detect: detector file (default: the shipped one)")
    args = parser.parse_args(argv)
    if (args.min_score is not None or args.detector) and not args.detect:
        parser.error("--min-score and --detector go with --detect")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cvat_sdk import make_client
    from cvat_sdk.datasets import UnsupportedDatasetError
    from cvat_sdk.exceptions import ApiException

    from polypseg.detection_job import build_detector
    from polypseg.predictors import build_predictor

    password = os.environ.get("CVAT_PASSWORD") or getpass.getpass(f"CVAT password for {args.user}: ")
    try:
        with make_client(args.server_host, credentials=(args.user, password)) as client:
            added = annotate(
                client,
                args.task,
                build_predictor(None, args.checkpoint),
                args.label,
                args.mask_label or args.label,
                build_detector(args.detector) if args.detect else None,
                args.min_score,
            )
    except (PolypsegError, ApiException, UnsupportedDatasetError) as exc:
        log.error("boxes_to_masks: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return 1
    log.info("%d masks added to task %d", added, args.task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
