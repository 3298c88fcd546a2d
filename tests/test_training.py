"""U-Net training on a handful of real images: it learns, resumes, and runs under torchrun."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import ONE_POLYP
from polypseg.box_input import BoxInputGeometry
from polypseg.checkpoints import load_checkpoint
from polypseg.datasets import load_folder_dataset, polyp_targets
from polypseg.errors import DatasetError
from polypseg.images import read_image, read_mask
from polypseg.predictors import build_predictor
from polypseg.predictors.box_channel import create_box_channel_model
from polypseg.prompts import Box
from polypseg.training.losses import bce_dice_loss
from polypseg.training.unet import UnetTrainConfig, train_unet

SIZE = 64


def config(kvasir: Path, out: Path, **overrides) -> UnetTrainConfig:
    settings = dict(
        images=kvasir / "images",
        masks=kvasir / "masks",
        boxes=kvasir / "bboxes.json",
        out=out,
        encoder="resnet18",
        size=SIZE,
        epochs=8,
        batch_size=2,
        limit=6,
        workers=0,
        lr=3e-3,
    )
    return UnetTrainConfig(**{**settings, **overrides})


def fixed_batch(kvasir: Path, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images with their tight boxes, not augmented."""
    geometry = BoxInputGeometry("crop", SIZE, 0.25)
    xs, ys = [], []
    for sample in load_folder_dataset(kvasir / "images", kvasir / "masks", kvasir / "bboxes.json")[:n]:
        image, mask = read_image(sample.image_path), read_mask(sample.mask_path)
        box, target = polyp_targets(mask, sample.boxes)[0]
        window = geometry.window(box, image.shape[1], image.shape[0])
        xs.append(geometry.make_input(image, box, window))
        crop = target[int(window.y1) : int(window.y2), int(window.x1) : int(window.x2)].astype(np.float32)

        ys.append(cv2.resize(crop, (SIZE, SIZE))[None])
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def test_a_box_reaching_past_the_frame_is_clipped_not_wrapped_around() -> None:
    mask = np.zeros((50, 60), bool)
    mask[10:30, 0:20] = True  # a polyp at the left edge, its box drawn 2 px past it
    ((box, target),) = polyp_targets(mask, (Box(-2, 8, 22, 32),))
    assert box == Box(0, 8, 22, 32) and np.array_equal(target, mask)
    with pytest.raises(DatasetError, match=r"box \(70,0,90,10\) lies outside the 60x50 image"):
        polyp_targets(mask, (Box(70, 0, 90, 10),))


def test_an_official_box_too_thin_to_hold_a_polyp_is_no_polyp(kvasir: Path) -> None:
    """Kvasir-SEG's own boxes for this frame: two polyps and a 3 x 134 strip of mask along the
    frame's right edge, which an evaluation would count as a polyp that no model can find."""
    name = "cju0roawvklrq0799vmjorwfv"
    (sample,) = load_folder_dataset(kvasir / "images", kvasir / "masks", kvasir / "bboxes.json", [name])
    mask = read_mask(sample.mask_path)
    assert len(sample.boxes) == 3 and min(sample.boxes[2].width, sample.boxes[2].height) == 3
    targets = polyp_targets(mask, sample.boxes)
    assert [box for box, _ in targets] == list(sample.boxes[:2])
    assert all(target.sum() > 5000 for _, target in targets)
    # Without the boxes, from the mask's components, the strip is no polyp either.
    components = [box for box, _ in polyp_targets(mask, None)]
    assert len(components) == 2
    assert all(max(box.iou(official) for official in sample.boxes[:2]) > 0.95 for box in components)


def test_a_version_says_what_the_model_is_and_what_it_was_fine_tuned_from() -> None:
    from polypseg.training.common import version_name

    fresh = ["clickunet", "resnet18", "crop224"]
    tags = {"shifts": 0.5, "camera": 0.0}
    assert version_name(fresh, None, False, tags, 6) == "clickunet-resnet18-crop224-shifts-e6"
    shipped = {"version": "clickunet-resnet18-crop224-shifts-e6"}
    camera = {"shifts": 0.5, "camera": 0.5}  # the shifts were in the base already: said once
    assert version_name(fresh, shipped, True, camera, 3) == "clickunet-resnet18-crop224-shifts-e6-camera-e3"
    # Retrained day after day with nothing added: counted, not stacked.
    retrained = version_name(
        fresh, {"version": "clickunet-resnet18-crop224-shifts-e6-camera-e3"}, True, camera, 3
    )
    assert retrained == "clickunet-resnet18-crop224-shifts-e6-camera-e3-ft1-e3"
    again = version_name(fresh, {"version": retrained}, True, tags, 2)
    assert again == "clickunet-resnet18-crop224-shifts-e6-camera-e3-ft2-e2"
    # Started from another kind (a box U-Net widened to take clicks): named afresh.
    box = {"version": "unet-resnet18-crop224-shifts-e6"}
    assert version_name(fresh, box, False, tags, 2) == "clickunet-resnet18-crop224-shifts-e2"


def loss_of(state_dict, batch) -> float:
    """The loss of the weights on a fixed batch. Batch-norm statistics come from the batch
    itself: the running ones after a couple of dozen steps of batch 2 say little."""
    model = create_box_channel_model("unet", "resnet18")
    model.load_state_dict({k: v.float() for k, v in state_dict.items()})
    model.train()
    with torch.no_grad():
        return float(bce_dice_loss(model(batch[0]), batch[1]))


def test_a_few_steps_lower_the_loss(tmp_path, kvasir):
    batch = fixed_batch(kvasir)
    torch.manual_seed(0)
    before = loss_of(create_box_channel_model("unet", "resnet18").state_dict(), batch)
    best = train_unet(config(kvasir, tmp_path / "run"))
    state, metadata, _ = load_checkpoint(tmp_path / "run" / "last.pt")
    after = loss_of(state, batch)
    assert after < before - 0.1, (before, after)
    assert metadata["architecture"] == "unet" and metadata["input"]["size"] == SIZE
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 9  # header + 8 epochs
    assert (tmp_path / "run" / "curves.png").is_file()
    assert build_predictor(checkpoint=best).name == "unet"  # the file alone rebuilds the model


def test_a_run_stopped_before_any_validation_leaves_its_weights_alone(tmp_path, kvasir):
    out = tmp_path / "run"
    kept = train_unet(config(kvasir, out, epochs=3, max_steps=1))  # an epoch has 2 steps or more
    assert kept == out / "final.pt" and not (out / "best.pt").exists()
    state, metadata, extra = load_checkpoint(kept)
    assert not extra and all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    assert metadata["architecture"] == "unet" and build_predictor(checkpoint=kept).name == "unet"
    _, _, resumable = load_checkpoint(out / "last.pt")  # --resume still has everything
    assert resumable["position"]["step"] == 1 and "optimizer" in resumable


def test_resume_continues_from_the_saved_step(tmp_path, kvasir):
    out = tmp_path / "run"
    train_unet(config(kvasir, out, epochs=3, max_steps=4))
    _, _, extra = load_checkpoint(out / "last.pt")
    assert extra["position"]["step"] == 4
    train_unet(config(kvasir, out, epochs=3, resume=True))
    _, _, extra = load_checkpoint(out / "last.pt")
    total = 3 * extra["history"][0]["step"]  # the first epoch's row counts its steps
    assert total > 4
    assert extra["position"] == {"epoch": 3, "batch": 0, "step": total, "best": extra["position"]["best"]}
    # AdamW counted every step, those before the interruption too: its state was restored.
    assert int(extra["optimizer"]["state"][0]["step"]) == total
    assert len(extra["history"]) == 3


def test_validation_split_is_never_trained_on(tmp_path, kvasir):
    names = sorted(p.stem for p in (kvasir / "images").iterdir())[:8]
    val_list = tmp_path / "val.txt"
    val_list.write_text("\n".join(names[:2]))
    from polypseg.training.unet import UnetRun

    run = UnetRun(config(kvasir, tmp_path / "run", val_list=val_list, limit=None, epochs=1))
    trained = {s.name for s in run.train_samples}
    assert not trained & set(names[:2]) and {s.name for s in run.val_samples} == set(names[:2])


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path, kvasir):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun, "torchrun comes with torch"
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "polypseg.cli",
            "train",
            "unet",
            "--images",
            kvasir / "images",
            "--masks",
            kvasir / "masks",
            "--boxes",
            kvasir / "bboxes.json",
            "--out",
            out,
            "--size",
            str(SIZE),
            "--epochs",
            "2",
            "--batch-size",
            "2",
            "--limit",
            "8",
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    _, _, extra = load_checkpoint(out / "last.pt")
    # 8 polyps over 2 ranks in batches of 2: 2 steps an epoch, each step seeing 4 samples.
    assert extra["position"]["step"] == 4 and len(extra["history"]) == 2


def test_fewer_samples_than_a_batch_still_train(tmp_path, kvasir):
    """A small retraining set (3 polyps, batch 8, accumulating 4) trains in one smaller batch
    per epoch, one optimiser step each."""
    train_unet(config(kvasir, tmp_path / "run", limit=3, batch_size=8, epochs=2, accumulate=4))
    _, _, extra = load_checkpoint(tmp_path / "run" / "last.pt")
    assert extra["position"]["step"] == 2


def test_accumulation_never_carries_gradients_into_the_next_epoch(tmp_path, kvasir):
    """5 batches an epoch, 2 per step: each epoch is 2 whole steps (4 batches), and no step
    mixes the gradients of two epochs."""
    from polypseg.training.unet import UnetRun

    run = UnetRun(config(kvasir, tmp_path / "run", limit=8, batch_size=2, epochs=2, accumulate=2))
    assert len(run.data) // 2 == 5 and (run.steps_per_epoch, run.batches_per_epoch) == (2, 4)
    run.fit()
    assert run.step == 4 and all(p.grad is None for p in run.model.parameters())


def test_a_runs_draws_depend_on_seed_epoch_and_item_alone(kvasir):
    """Augmentations, boxes and negatives drawn for an item are the same with or without
    data-loader workers (forked afresh every epoch) and after a resume, and new each epoch."""
    from polypseg.training.unet import PolypRegions

    samples = load_folder_dataset(kvasir / "images", kvasir / "masks", kvasir / "bboxes.json")[:3]
    data = PolypRegions(samples, BoxInputGeometry("crop", SIZE, 0.25), 0.3, 0.5, 0.5)

    def epoch(number: int, workers: int) -> torch.Tensor:
        data.seed, data.epoch = 7, number
        return torch.cat([x for x, _ in DataLoader(data, batch_size=2, num_workers=workers)])

    first = epoch(0, 0)
    assert torch.equal(first, epoch(0, 2)) and torch.equal(first, epoch(0, 0))
    assert not torch.equal(first, epoch(1, 0))
    data.seed = 8
    assert not torch.equal(first, torch.cat([x for x, _ in DataLoader(data, batch_size=2)]))


def test_an_annotators_box_stays_in_the_frame_and_holds_the_polyp_mostly(kvasir):
    """Boxes drawn around a polyp cut by the frame's edge (tight, loose or jittered) never
    leave the frame nor lose their area, and still cover most of the polyp."""
    from polypseg.masks import mask_box
    from polypseg.training.augment import annotator_box

    mask = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
    box = mask_box(mask)
    assert box is not None
    # Its lower right part, cut by the frame's top and left edges.
    edge = mask[int(box.y1) :, int((box.x1 + box.x2) / 2) :]
    height, width = edge.shape
    rng = np.random.default_rng(0)
    for _ in range(300):
        drawn = annotator_box(edge, rng)
        assert (
            drawn is not None and drawn.x1 >= 0 and drawn.x2 <= width and drawn.y1 >= 0 and drawn.y2 <= height
        )
        assert drawn.width >= 1 and drawn.height >= 1
        inside = edge[int(drawn.y1) : int(drawn.y2), int(drawn.x1) : int(drawn.x2)].sum()
        assert inside >= 0.5 * edge.sum()
    assert annotator_box(np.zeros_like(edge), rng) is None


def test_training_flags_that_cannot_work_are_clear_errors(tmp_path, kvasir, unet_checkpoint):
    from polypseg.errors import CheckpointError, ModelError

    with pytest.raises(ModelError, match="input size 100 is not a positive multiple of 32"):
        BoxInputGeometry(size=100)
    with pytest.raises(CheckpointError, match="do not fit a unet with a resnet34 encoder"):
        train_unet(config(kvasir, tmp_path / "run", encoder="resnet34", init=unet_checkpoint, epochs=1))
    from polypseg.errors import DatasetError
    from polypseg.images import write_mask
    from polypseg.training.click_unet import ClickUnetTrainConfig, train_click_unet

    # Masks without a polyp leave nothing to train on: said so, not a run of empty epochs.
    empty = tmp_path / "empty-masks"
    empty.mkdir()
    for sample in load_folder_dataset(kvasir / "images", kvasir / "masks")[:3]:
        write_mask(empty / f"{sample.name}.png", np.zeros_like(read_mask(sample.mask_path)))
    with pytest.raises(DatasetError, match="0 training items .* nothing to train on"):
        train_unet(config(kvasir, tmp_path / "none", masks=empty, boxes=None, limit=0, epochs=1))
    assert not (tmp_path / "none" / "last.pt").exists()
    worst_shift = ClickUnetTrainConfig(
        images=kvasir / "images",
        masks=kvasir / "masks",
        out=tmp_path / "click",
        size=SIZE,
        select="worst-shift",
    )
    with pytest.raises(ModelError, match="--select worst-shift is for the box U-Net"):
        train_click_unet(worst_shift)
