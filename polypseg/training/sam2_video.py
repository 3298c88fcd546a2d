"""SAM2 video fine-tuning on sparse annotations: `polypseg finetune sam2-video`.

A training sequence is a folder (docs/training.md): `frames/` (numbered images) and `masks/`
(masks named like their frames, for the annotated frames only; the last frame must have one),
and optionally `box.json` (`{"box": [x1, y1, x2, y2]}` in pixels, the first frame's box when the
first frame has no mask). Each step takes `length` frames spread from the first frame to the
last, gives SAM2 the box on the first, runs the sequence through SAM2's memory in training
mode (`track_step`, as SAM2's own video training does), and computes the loss on the last
frame alone, or on every annotated frame with `--loss-frames annotated`. Gradients flow back
through at most `bptt` frames of memory (older memories are detached), which bounds memory use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from polypseg.datasets import PolypSample
from polypseg.errors import DatasetError
from polypseg.images import read_image, read_mask
from polypseg.masks import mask_box
from polypseg.metrics import score_masks
from polypseg.predictors.sam2 import Sam2Predictor, sam2_pixel_indices
from polypseg.prompts import Box, Prompt
from polypseg.training.augment import annotator_box
from polypseg.training.common import SeededDataset
from polypseg.training.config import Sam2VideoConfig
from polypseg.training.sam2_finetune import Sam2Run, mask_losses, normalise
from polypseg.video.evaluation import sequence_folders
from polypseg.video.frames import numbered_images
from polypseg.video.sam2_memory import Sam2MemoryTracker, empty_memory, memory_step


@dataclass(frozen=True)
class SparseSequence:
    folder: Path
    frames: list[Path]
    masks: dict[int, Path]  # frame position -> mask file, annotated frames only
    box: Box | None  # the first frame's box from box.json


def read_sequence(folder: Path) -> SparseSequence:
    frames = numbered_images(folder / "frames")
    if len(frames) < 2:
        raise DatasetError(f"{folder}: a sequence needs at least 2 frames in frames/")
    position = {number: index for index, (number, _) in enumerate(frames)}
    masks = {position[n]: p for n, p in numbered_images(folder / "masks") if n in position}
    if len(frames) - 1 not in masks:
        raise DatasetError(f"{folder}: the last frame ({frames[-1][1].name}) has no mask in masks/")
    box = None
    if (folder / "box.json").is_file():
        try:
            box = Box(*(float(v) for v in json.loads((folder / "box.json").read_text())["box"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetError(f"{folder / 'box.json'}: not {{'box': [x1, y1, x2, y2]}} ({exc})") from None
    if box is None and 0 not in masks:
        raise DatasetError(f"{folder}: the first frame needs a mask or box.json for the starting box")
    return SparseSequence(folder, [p for _, p in frames], masks, box)


def read_sequences(root: Path) -> list[SparseSequence]:
    return [read_sequence(folder) for folder in sequence_folders(root)]


class SparseSequences(SeededDataset):
    """(frames (L,3,S,S), masks (L,1,S,S), labelled (L,), box (4,)): `length` frames spread from
    the first to the last; masks are zero where a frame has none."""

    def __init__(self, sequences: list[SparseSequence], size: int, length: int, jitter: bool = True) -> None:
        self.sequences, self.size, self.length, self.jitter = sequences, size, length, jitter

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sequence = self.sequences[index]
        count = len(sequence.frames)
        picks = np.unique(np.round(np.linspace(0, count - 1, min(self.length, count))).astype(int))
        images, masks, labelled = [], [], []
        first_shape = None
        for position in picks:
            image = read_image(sequence.frames[position])
            first_shape = first_shape or image.shape[:2]
            images.append(normalise(image, self.size))
            mask = np.zeros((self.size, self.size), dtype=np.float32)
            if position in sequence.masks:
                full = read_mask(sequence.masks[position]).astype(np.uint8)
                mask = cv2.resize(full, (self.size, self.size), interpolation=cv2.INTER_NEAREST).astype(
                    np.float32
                )
            masks.append(torch.from_numpy(mask)[None])
            labelled.append(position in sequence.masks)
        return (
            torch.stack(images),
            torch.stack(masks),
            torch.tensor(labelled),
            self._box(sequence, masks[0], first_shape, self.draws(index)),
        )

    def _box(
        self,
        sequence: SparseSequence,
        first_mask: torch.Tensor,
        shape: tuple[int, int] | None,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        mask = first_mask[0].numpy() > 0
        box = None
        if 0 in sequence.masks and mask.any():
            box = annotator_box(mask, rng) if self.jitter else mask_box(mask)
        elif sequence.box is not None and shape is not None:
            sx, sy = self.size / shape[1], self.size / shape[0]
            b = sequence.box
            box = Box(b.x1 * sx, b.y1 * sy, b.x2 * sx, b.y2 * sy)
        if box is None:
            raise DatasetError(f"{sequence.folder}: the first frame's mask is empty and there is no box.json")
        return torch.from_numpy(np.clip(box.as_array(), 0, self.size).astype(np.float32))


def _detached(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        key: [v.detach() for v in value] if isinstance(value, list) else value.detach()
        for key, value in entry.items()
        if value is not None
    }


def sequence_loss(
    model: Any,
    frames: torch.Tensor,
    masks: torch.Tensor,
    labelled: torch.Tensor,
    box: torch.Tensor,
    loss_frames: str = "last",
    bptt: int = 4,
    loss: str = "focal",
) -> torch.Tensor:
    """The loss of one sequence run through SAM2's memory from a box on its first frame: on
    the last frame only, or on every labelled frame ("annotated"); an unlabelled frame's mask
    is never read."""
    length = frames.shape[0]
    memory = empty_memory()
    counted = [t for t in range(length) if labelled[t] and (loss_frames == "annotated" or t == length - 1)]
    if length - 1 not in counted:
        raise DatasetError("the last frame of a training sequence must be labelled")
    total = frames.new_zeros(())
    for t in range(length):
        points = None
        if t == 0:
            labels = torch.tensor([[2, 3]], dtype=torch.int, device=frames.device)
            points = {"point_coords": sam2_pixel_indices(box.view(1, 2, 2), labels), "point_labels": labels}
        out = memory_step(model, memory, t, frames[t : t + 1], points, num_frames=length)
        for kind in memory.values():  # truncated back-propagation through time
            for old in kind:
                if t - old >= bptt:
                    kind[old] = _detached(kind[old])
        if t in counted:
            logits = out["pred_masks_high_res"].float()
            mask_loss, _ = mask_losses(logits, masks[t : t + 1], torch.zeros(1, device=frames.device), loss)
            total = total + mask_loss
    return total / len(counted)


class Sam2VideoRun(Sam2Run):
    loss_name = "focal + Dice on labelled frames"
    selection = "iou"

    def load_data(self) -> tuple[Any, list[PolypSample], int]:
        c = self.config
        assert isinstance(c, Sam2VideoConfig)
        if c.sequences is None:
            raise DatasetError("video fine-tuning needs --sequences")
        train = read_sequences(c.sequences)
        if c.limit:
            train = train[: c.limit]
        self.val_sequences = read_sequences(c.val_sequences) if c.val_sequences else []
        return SparseSequences(train, c.image_size, c.length), [], len(train)

    def batch_loss(self, batch: Any) -> torch.Tensor:
        c = self.config
        assert isinstance(c, Sam2VideoConfig)
        frames, masks, labelled, boxes = (t.to(self.device) for t in batch)
        losses = [
            sequence_loss(
                self.model, frames[i], masks[i], labelled[i], boxes[i], c.loss_frames, c.bptt, c.loss
            )
            for i in range(frames.shape[0])
        ]
        return torch.stack(losses).mean()

    def validate(self) -> dict[str, float]:
        """Mean IoU of the streaming SAM2 tracker on the labelled frames after the first."""
        if not self.val_sequences:
            return {}
        tracker = Sam2MemoryTracker(Sam2Predictor(self.model, self.metadata(), device=str(self.device)))
        ious = []
        for sequence in self.val_sequences:
            # read as the tracker goes: a sequence pulled from a long video need not fit in memory
            frames = ((i, read_image(p)) for i, p in enumerate(sequence.frames))
            first = read_mask(sequence.masks[0]) if 0 in sequence.masks else None
            box = (mask_box(first) if first is not None else None) or sequence.box
            if box is None:  # as in training: the first frame's box, from its mask or box.json
                raise DatasetError(
                    f"{sequence.folder}: the first frame's mask is empty and there is no box.json"
                )
            for result in tracker.track(frames, Prompt(box=box)):
                if result.index > 0 and result.index in sequence.masks:
                    ious.append(score_masks(result.mask, read_mask(sequence.masks[result.index])).iou)
        return {"iou": float(np.mean(ious)) if ious else float("nan")}


def finetune_sam2_video(config: Sam2VideoConfig) -> Path:
    return Sam2VideoRun(config).fit()
