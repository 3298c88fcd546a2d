"""Every polyp rectangle of a CVAT task to a polyp mask, as a `cvat_sdk.auto_annotation`
detection function: annotators draw quick boxes on all frames, then one command outlines them.

    python -m serverless.cvat.boxes_to_masks --server-host https://cvat.example.org --task 42 \\
        --user annotator [--label polyp] [--checkpoint FILE]

(the password is read from CVAT_PASSWORD, else asked for). Masks are added beside the boxes,
labelled like them; nothing is deleted.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import PIL.Image
from cvat_sdk.auto_annotation import DetectionFunctionSpec, label_spec, mask

from polypseg.formats.cvat_mask import encode_cvat_mask
from polypseg.images import as_rgb
from polypseg.predictors.base import ImagePredictor
from polypseg.prompts import Box, Prompt

log = logging.getLogger("polypseg.cvat")


class BoxesToMasks:
    """A detection function that knows the task's rectangles by frame name and answers each
    frame with one mask per rectangle."""

    def __init__(self, predictor: ImagePredictor, boxes: dict[str, list[Box]], label: str = "polyp") -> None:
        self.predictor = predictor
        self.boxes = boxes
        self.spec = DetectionFunctionSpec(labels=[label_spec(label, 0, type="mask")])

    def detect(self, context: Any, image: PIL.Image.Image) -> list[Any]:
        boxes = self.boxes.get(context.frame_name, [])
        if not boxes:
            return []
        prepared = self.predictor.prepare(as_rgb(np.asarray(image)))
        shapes = []
        for box in boxes:
            found = self.predictor.segment(prepared, Prompt(box=box)).mask
            if found.any():
                shapes.append(mask(0, encode_cvat_mask(found)))
        return shapes


def task_boxes(task: Any, label: str) -> dict[str, list[Box]]:
    """The task's rectangles with `label` (shapes, and track keyframes not marked outside), by frame name."""
    label_ids = {lb.id for lb in task.get_labels() if lb.name == label}
    names = {index: frame.name for index, frame in enumerate(task.get_frames_info())}
    annotations = task.get_annotations()
    rectangles = [(s.frame, s.points) for s in annotations.shapes if s.label_id in label_ids]
    rectangles = [(f, p) for f, p in rectangles if len(p) == 4]
    for track in annotations.tracks:
        if track.label_id in label_ids:
            rectangles += [
                (s.frame, s.points) for s in track.shapes if not s.outside and s.type.value == "rectangle"
            ]
    boxes: dict[str, list[Box]] = defaultdict(list)
    for frame, (x1, y1, x2, y2) in rectangles:
        if x2 > x1 and y2 > y1 and frame in names:
            boxes[names[frame]].append(Box(x1, y1, x2, y2))
    return dict(boxes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-host", required=True)
    parser.add_argument("--task", type=int, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--label", default="polyp", help="label of the boxes, given to the masks too")
    parser.add_argument("--checkpoint", help="model (default: the shipped U-Net)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from cvat_sdk import make_client
    from cvat_sdk.auto_annotation import annotate_task

    from polypseg.predictors import build_predictor

    password = os.environ.get("CVAT_PASSWORD") or getpass.getpass(f"CVAT password for {args.user}: ")
    with make_client(args.server_host, credentials=(args.user, password)) as client:
        task = client.tasks.retrieve(args.task)
        boxes = task_boxes(task, args.label)
        log.info("task %d: %d frames with %s boxes", args.task, len(boxes), args.label)
        function = BoxesToMasks(build_predictor(None, args.checkpoint), boxes, args.label)
        annotate_task(client, args.task, function, allow_unmatched_labels=False)
    log.info("masks added to task %d", args.task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
