"""SAM2 fine-tuning (images with boxes and clicks; video with sparse labels) from a random-weight
checkpoint in the official format, on real Kvasir-SEG frames and synthetic sequences made from them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import ONE_POLYP
from polypseg.checkpoints import load_checkpoint
from polypseg.datasets import load_folder_dataset
from polypseg.errors import DatasetError, ModelError
from polypseg.images import read_image, read_mask
from polypseg.masks import mask_box
from polypseg.predictors import build_predictor
from polypseg.predictors.sam2 import Sam2Predictor
from polypseg.prompts import Box, Prompt
from polypseg.training.sam2_finetune import (
    Sam2FinetuneConfig,
    Sam2Run,
    correction_clicks,
    load_sam2,
    normalise,
    prompted_losses,
    trainable_parts,
)
from polypseg.training.sam2_video import SparseSequences, read_sequences, sequence_loss
from polypseg.video.synthetic import write_sequences
from polypseg.video.tracking_job import build_tracker

SIZE = 256


def fixed_batch(kvasir: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, targets, boxes = [], [], []
    for sample in load_folder_dataset(kvasir / "images", kvasir / "masks", None, names):
        mask = cv2.resize(
            read_mask(sample.mask_path).astype(np.uint8), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST
        )
        images.append(normalise(read_image(sample.image_path), SIZE))
        targets.append(torch.from_numpy(mask.astype(np.float32))[None])
        boxes.append(torch.from_numpy(mask_box(mask > 0).as_array().astype(np.float32)))
    return torch.stack(images), torch.stack(targets), torch.stack(boxes)


def test_image_finetuning_lowers_the_loss(kvasir: Path, sam2_checkpoint: Path) -> None:
    names = sorted(p.stem for p in (kvasir / "images").iterdir())[:3]
    images, targets, boxes = fixed_batch(kvasir, names)
    torch.manual_seed(0)
    model, source = load_sam2(sam2_checkpoint, "t", SIZE)  # the official file format
    assert source["config"].endswith("sam2.1_hiera_t.yaml")
    model.train()
    encoder, others = trainable_parts(model, ("image-encoder", "prompt-encoder", "mask-decoder"))
    assert encoder and others
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith("memory_attention"))
    optimizer = torch.optim.AdamW([{"params": others, "lr": 1e-4}, {"params": encoder, "lr": 1e-5}])
    config = Sam2FinetuneConfig(out=Path("unused"), clicks=1)
    losses = []
    for _ in range(5):
        loss = prompted_losses(model, images, targets, boxes, config)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    with pytest.raises(ModelError, match="--train"):
        trainable_parts(model, ("decoder",))


def test_correction_clicks_land_in_the_error() -> None:
    target = torch.zeros(2, 1, 32, 32)
    target[:, :, 8:24, 8:24] = 1
    logits = torch.full((2, 1, 32, 32), -5.0)
    logits[1, :, 0:32, 0:32] = 5.0  # the second answer paints everything
    logits[1, :, 8:24, 8:24] = 5.0
    points, labels = correction_clicks(logits, target)
    (x0, y0), (x1, y1) = points[0, 0].tolist(), points[1, 0].tolist()
    assert labels.tolist() == [[1], [0]]
    assert 8 <= x0 < 24 and 8 <= y0 < 24  # missed polyp: a positive click inside it
    assert not (8 <= x1 < 24 and 8 <= y1 < 24)  # false polyp: a negative click outside it


@pytest.mark.slow
def test_finetune_sam2_command_end_to_end(kvasir: Path, sam2_checkpoint: Path, tmp_path: Path) -> None:
    names = sorted(p.stem for p in (kvasir / "images").iterdir())
    val = tmp_path / "val.txt"
    val.write_text("\n".join(names[:2]))
    data = ["--images", str(kvasir / "images"), "--masks", str(kvasir / "masks"), "--val-list", str(val)]
    model = ["--checkpoint", str(sam2_checkpoint), "--image-size", str(SIZE), "--device", "cpu"]
    run = [*data, *model, "--boxes", str(kvasir / "bboxes.json"), "--limit", "4", "--batch-size", "2"]
    command = [sys.executable, "-m", "polypseg.cli", "finetune", "sam2", *run, "--out", str(tmp_path / "run")]
    subprocess.run([*command, "--epochs", "1"], check=True, capture_output=True, timeout=900)
    _, metadata, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert metadata["architecture"] == "sam2" and metadata["image_size"] == SIZE
    assert {"iou@0", "iou@0.1"} <= set(metadata["metrics"])
    predictor = build_predictor(None, tmp_path / "run" / "best.pt", "cpu")
    assert predictor.name == "sam2" and predictor.version == metadata["version"]
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    assert predictor.predict(image, Prompt(box=Box(38, 5, 430, 338))).mask.shape == image.shape[:2]
    tracked = list(
        build_tracker("sam2", predictor).track([(0, image), (1, image)], Prompt(box=Box(38, 5, 430, 338)))
    )
    assert len(tracked) == 2
    # --resume continues where the run stopped (one more epoch, one more step count)
    subprocess.run([*command, "--epochs", "2", "--resume"], check=True, capture_output=True, timeout=900)
    _, _, extra = load_checkpoint(tmp_path / "run" / "last.pt")
    assert extra["position"]["epoch"] == 2 and len(extra["history"]) == 2


def test_every_sam2_path_gives_the_prompt_encoder_the_same_pixel_indices(sam2_checkpoint: Path) -> None:
    """Image fine-tuning, video fine-tuning and serving all hand SAM2 the box (10, 20, 30, 60)
    (polypseg's: x2 and y2 its edges) as the pixel indices of its first and last pixels, on a
    frame at the model's own size, so that a fine-tune learns what it is served."""
    model, _ = load_sam2(sam2_checkpoint, "t", SIZE)
    model.eval()
    corners: list[list[list[float]]] = []

    def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        coords, labels = kwargs["points"]
        if (labels == 2).any():  # a prompted frame (a tracked one gets a padding point)
            corners.append(coords[0, :2].tolist())

    model.sam_prompt_encoder.register_forward_pre_hook(record, with_kwargs=True)
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    target = torch.zeros(1, 1, SIZE, SIZE)
    target[..., 20:60, 10:30] = 1
    with torch.no_grad():
        prompted_losses(
            model, torch.zeros(1, 3, SIZE, SIZE), target, box, Sam2FinetuneConfig(out=Path("unused"))
        )
        frames, masks = torch.zeros(2, 3, SIZE, SIZE), target.expand(2, -1, -1, -1)
        sequence_loss(model, frames, masks, torch.ones(2, dtype=torch.bool), box[0])
    served = Sam2Predictor(model, {"config": "test"}).prompt_points(
        Prompt(box=Box(10, 20, 30, 60)), SIZE, SIZE
    )
    assert served is not None
    expected = [[10.0, 20.0], [29.0, 59.0]]
    assert corners[0] == corners[-1] == served[0][0, :2].tolist() == expected


@pytest.fixture(scope="module")
def sparse_sequences(kvasir: Path, tmp_path_factory) -> Path:
    """Two synthetic sequences of 6 frames whose middle frames have lost their masks."""
    samples = load_folder_dataset(
        kvasir / "images", kvasir / "masks", None, [ONE_POLYP, "cju0qoxqj9q6s0835b43399p4"]
    )
    root = tmp_path_factory.mktemp("sparse")
    for folder in write_sequences(samples, root, length=6, seed=1):
        for mask in sorted((folder / "masks").iterdir())[1:-1]:
            mask.unlink()
    return root


def test_sparse_loss_reads_only_labelled_frames(sparse_sequences: Path, sam2_checkpoint: Path) -> None:
    sequences = read_sequences(sparse_sequences)
    assert sorted(sequences[0].masks) == [0, 5]
    frames, masks, labelled, box = SparseSequences(sequences, SIZE, length=4, jitter=False)[0]
    assert labelled.tolist() == [True, False, False, True]
    model, _ = load_sam2(sam2_checkpoint, "t", SIZE)
    model.train()

    def loss(m: torch.Tensor, flags: torch.Tensor, frames_mode: str = "last") -> float:
        torch.manual_seed(0)  # the memory attention's dropout draws the same
        with torch.no_grad():
            return sequence_loss(model, frames, m, flags, box, frames_mode).item()

    garbage = masks.clone()
    garbage[1:3] = torch.rand_like(garbage[1:3]).round()
    base = loss(masks, labelled)
    assert loss(garbage, labelled) == base  # an absent label's content changes nothing
    assert loss(garbage, torch.tensor([True, True, True, True])) == base  # "last": middle labels unread
    assert loss(garbage, torch.tensor([True, True, True, True]), "annotated") != base  # sanity: it could
    with pytest.raises(DatasetError, match="last frame"):
        sequence_loss(model, frames, masks, torch.tensor([True, True, True, False]), box)


def test_video_finetuning_lowers_the_loss(sparse_sequences: Path, sam2_checkpoint: Path) -> None:
    frames, masks, labelled, box = SparseSequences(read_sequences(sparse_sequences), SIZE, 3, jitter=False)[0]
    model, _ = load_sam2(sam2_checkpoint, "t", SIZE)
    model.train()
    encoder, others = trainable_parts(model, ("image-encoder", "prompt-encoder", "mask-decoder", "memory"))
    optimizer = torch.optim.AdamW([{"params": others, "lr": 1e-4}, {"params": encoder, "lr": 1e-5}])
    losses = []
    for _ in range(4):
        torch.manual_seed(0)
        loss = sequence_loss(model, frames, masks, labelled, box, bptt=2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.slow
def test_finetune_sam2_video_command(sparse_sequences: Path, sam2_checkpoint: Path, tmp_path: Path) -> None:
    val = tmp_path / "val"
    shutil.copytree(sparse_sequences, val)
    command = [
        sys.executable, "-m", "polypseg.cli", "finetune", "sam2-video", "--sequences", str(sparse_sequences),
        "--val-sequences", str(val), "--checkpoint", str(sam2_checkpoint), "--image-size", str(SIZE),
        "--length", "3", "--epochs", "1", "--out", str(tmp_path / "run"), "--device", "cpu",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=900)
    _, metadata, _ = load_checkpoint(tmp_path / "run" / "best.pt")
    assert "iou" in metadata["metrics"] and metadata["training"]["kind"] == "Sam2VideoRun"
    tracker = build_tracker("sam2", build_predictor(None, tmp_path / "run" / "best.pt", "cpu"))
    frames = [(i, read_image(p)) for i, p in enumerate(read_sequences(sparse_sequences)[0].frames[:3])]
    assert len(list(tracker.track(frames, Prompt(box=Box(10, 10, 200, 200))))) == 3


@pytest.mark.slow
def test_sam2_finetuning_under_torchrun(kvasir: Path, sam2_checkpoint: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo): each trains on its half of the data, so an epoch takes half the
    steps it takes one process."""
    import os

    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun comes with torch"
    data = ["--images", str(kvasir / "images"), "--masks", str(kvasir / "masks"), "--limit", "4"]
    model = ["--checkpoint", str(sam2_checkpoint), "--image-size", str(SIZE), "--device", "cpu"]
    run = ["--batch-size", "1", "--epochs", "1", "--clicks", "0", "--out", str(tmp_path / "ddp")]
    command = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "polypseg.cli", "finetune", "sam2"]
    subprocess.run([*command, *data, *model, *run], check=True, capture_output=True, timeout=900)
    _, _, extra = load_checkpoint(tmp_path / "ddp" / "last.pt")
    alone = Sam2Run(
        Sam2FinetuneConfig(
            out=tmp_path / "one",
            images=kvasir / "images",
            masks=kvasir / "masks",
            checkpoint=sam2_checkpoint,
            image_size=SIZE,
            limit=4,
            device="cpu",
        )
    )
    assert len(alone.data) >= 4 and extra["position"]["step"] == len(alone.data) // 2
