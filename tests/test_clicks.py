"""Clicks: the protocol's click simulator on hand-made masks, the click-guided U-Net's replay,
cache and never-empty answer, and the IoU-after-clicks evaluation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import ONE_POLYP, ROOT
from polypseg.checkpoints import load_checkpoint, save_checkpoint
from polypseg.clicks import MAX_CLICKS, click_channels, next_click
from polypseg.datasets import load_folder_dataset
from polypseg.errors import PromptError
from polypseg.evaluation import ellipse_baseline
from polypseg.evaluation_clicks import evaluate_clicks
from polypseg.images import read_image, read_mask
from polypseg.masks import mask_box
from polypseg.metrics import score_masks
from polypseg.predictors import build_predictor
from polypseg.predictors.click_unet import ClickUnetPredictor, create_click_model, widen_box_channel_state
from polypseg.prompts import Box, Point, Prompt

# The box U-Net shipped before the click model, which starts from its weights.
BOX_UNET = ROOT / "polypseg" / "models" / "box-unet.pt"


def square(size: int, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_next_click_is_positive_in_the_middle_of_a_missed_part() -> None:
    truth = square(100, 10, 10, 60, 60)
    predicted = square(100, 10, 10, 30, 60)  # the right part (x 30..60) is missed
    click = next_click(predicted, truth)
    assert click is not None and click.positive
    # 15 px from the nearest edge: on the missed strip's middle line, never near its rim
    assert abs(click.x - 45) <= 1 and 24 <= click.y <= 46


def test_next_click_is_negative_on_a_false_part_when_that_error_is_larger() -> None:
    truth = square(100, 10, 10, 40, 40)
    predicted = truth | square(100, 50, 50, 95, 95)  # a large false region
    predicted[10:14, 10:14] = False  # a small miss
    click = next_click(predicted, truth)
    assert click is not None and not click.positive
    assert abs(click.x - 72.5) <= 1.5 and abs(click.y - 72.5) <= 1.5


def test_next_click_keeps_off_the_frame_border_and_is_none_when_all_agree() -> None:
    truth = square(50, 0, 0, 50, 50)  # a miss that touches every edge of the frame
    click = next_click(np.zeros_like(truth), truth)
    assert click is not None and 20 <= click.x <= 30 and 20 <= click.y <= 30
    assert next_click(truth, truth) is None


def test_the_outline_band_is_two_pixels_either_side_of_the_edge() -> None:
    """What --edge-weight weighs more: the band along a mask's outline, inside and out."""
    from polypseg.training.click_unet import outline_band

    band = outline_band(square(20, 5, 5, 15, 15))
    row = band[10]
    assert list(np.flatnonzero(row)) == [3, 4, 5, 6, 13, 14, 15, 16]
    assert band[10, 10] == 0 and band.sum() == 152 and outline_band(np.zeros((8, 8), bool)).sum() == 0


def test_click_channels_draw_disks_where_the_clicks_are() -> None:
    maps = click_channels([Point(25, 30, True), Point(70, 80, False)], (20.0, 20.0), (2.0, 2.0), 160)
    assert maps[0][20, 10] == 1 and maps[0].sum() > 50 and maps[0][120, 100] == 0
    assert maps[1][120, 100] == 1 and maps[1][20, 10] == 0


def test_a_click_lands_on_the_pixel_that_holds_it() -> None:
    """Clicks are pixel centres (x + 0.5): 2.5 is on pixel 2 and 3.5 on pixel 3, whichever way
    rounding would break the tie."""
    maps = click_channels([Point(2.5, 2.5, True), Point(3.5, 3.5, False)], (0.0, 0.0), (1.0, 1.0), 8, 0)
    assert np.argwhere(maps[0]).tolist() == [[2, 2]] and np.argwhere(maps[1]).tolist() == [[3, 3]]
    # Through a window: pixel 13 of the image (centre 13.5) is network pixel 7 at scale 2 from 10.
    maps = click_channels([Point(13.5, 13.5, True)], (10.0, 10.0), (2.0, 2.0), 16, 0)
    assert np.argwhere(maps[0]).tolist() == [[7, 7]]


@pytest.fixture(scope="module")
def widened_default(tmp_path_factory) -> ClickUnetPredictor:
    """The shipped box U-Net widened into a click model (zero weights on the new channels),
    saved and loaded back through the registry as any click checkpoint would be."""
    from polypseg.predictors.registry import DEFAULT_MODEL

    state, metadata, _ = load_checkpoint(DEFAULT_MODEL)
    if metadata["architecture"] == "clickunet":  # the shipped model is already one
        predictor = build_predictor(None, DEFAULT_MODEL)
        assert isinstance(predictor, ClickUnetPredictor)
        return predictor
    model = create_click_model(metadata["encoder"])
    model.load_state_dict(widen_box_channel_state(state, model))
    path = tmp_path_factory.mktemp("click") / "widened.pt"
    save_checkpoint(path, model.state_dict(), {**metadata, "architecture": "clickunet", "version": "widened"})
    predictor = build_predictor(None, path)
    assert isinstance(predictor, ClickUnetPredictor)
    return predictor


def test_a_widened_box_model_answers_a_box_exactly_as_the_box_model(kvasir, tmp_path) -> None:
    state, metadata, _ = load_checkpoint(BOX_UNET)
    box_model = build_predictor(None, BOX_UNET)
    model = create_click_model(metadata["encoder"])
    model.load_state_dict(widen_box_channel_state(state, model))
    click_model = ClickUnetPredictor(model, {**metadata, "architecture": "clickunet"})
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    truth = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
    prompt = Prompt(box=mask_box(truth))
    old, new = box_model.predict(image, prompt), click_model.predict(image, prompt)
    assert old.mask.sum() > 1000 and score_masks(old.mask, new.mask).iou == 1.0
    assert new.presence is not None and 0 <= new.presence <= 1


def test_clicks_are_replayed_in_order_and_a_session_costs_one_pass_a_click(widened_default, kvasir) -> None:
    predictor = widened_default
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    truth = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
    box = mask_box(truth)
    assert box is not None
    clicks = (Point(box.x1 + 5, box.y1 + 5, False), Point((box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2, True))
    predictor.answers.clear()
    passes = predictor.forward_passes
    cold = predictor.predict(image, Prompt(box=box, points=clicks))
    assert predictor.forward_passes - passes == 3  # the box, then each click in turn
    # A session: the same box, one click more each time, finds the earlier answers cached.
    predictor.answers.clear()
    passes = predictor.forward_passes
    for k in range(len(clicks) + 1):
        warm = predictor.predict(image, Prompt(box=box, points=clicks[:k]))
    assert predictor.forward_passes - passes == 3
    assert np.array_equal(cold.mask, warm.mask) and cold.score == pytest.approx(warm.score)
    # The same request again is answered from the cache.
    passes = predictor.forward_passes
    predictor.predict(image, Prompt(box=box, points=clicks))
    assert predictor.forward_passes == passes


def test_a_callers_previous_mask_never_changes_later_answers(widened_default, kvasir) -> None:
    """A request that brings its own previous mask is answered from it, and that answer is not
    cached: the same box and clicks without the mask still get what they alone lead to."""
    predictor = widened_default
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    truth = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
    box = mask_box(truth)
    assert box is not None
    plain = Prompt(box=box, points=(Point((box.x1 + box.x2) / 2, (box.y1 + box.y2) / 2, True),))
    predictor.answers.clear()
    alone = predictor.predict(image, plain)
    predictor.answers.clear()
    whole_frame = np.ones_like(truth)
    with_mask = predictor.predict(image, replace(plain, previous_mask=whole_frame))
    assert len(predictor.answers) == 0
    again = predictor.predict(image, plain)
    assert np.array_equal(again.mask, alone.mask) and again.score == pytest.approx(alone.score)
    assert not np.array_equal(with_mask.mask, alone.mask) or with_mask.score != pytest.approx(alone.score)


def test_a_box_is_always_answered_with_a_mask(widened_default, kvasir) -> None:
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    height, width = image.shape[:2]
    # A black frame: nothing like a polyp anywhere; the annotator still gets the best guess.
    for frame in (np.zeros_like(image), image):
        answer = widened_default.predict(frame, Prompt(box=Box(5, 5, 60, 50)))
        assert answer.mask.any() and answer.mask.shape == (height, width)
        assert answer.mask[:, 70:].sum() == 0  # and it stays near the box


def test_bad_click_requests_are_refused_with_a_reason(widened_default, kvasir) -> None:
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    with pytest.raises(PromptError, match="needs a box"):
        widened_default.predict(image, Prompt(points=(Point(100, 100, False),)))
    too_many = tuple(Point(100 + i % 10, 100, True) for i in range(MAX_CLICKS + 1))
    with pytest.raises(PromptError, match=f"at most {MAX_CLICKS}"):
        widened_default.predict(image, Prompt(box=Box(50, 50, 200, 200), points=too_many))
    with pytest.raises(PromptError, match="outside"):
        widened_default.predict(image, Prompt(box=Box(50, 50, 200, 200), points=(Point(5000, 10, True),)))


def test_a_positive_click_outside_the_box_grows_the_crop(widened_default) -> None:
    from polypseg.predictors.click_unet import click_window

    box = Box(100, 100, 200, 200)
    inside = click_window(widened_default.geometry, Prompt(box=box), 600, 500)
    grown = click_window(widened_default.geometry, Prompt(box=box, points=(Point(400, 150, True),)), 600, 500)
    negative = click_window(
        widened_default.geometry, Prompt(box=box, points=(Point(400, 150, False),)), 600, 500
    )
    assert grown.x2 > 400 > inside.x2 and negative == inside


def test_click_evaluation_counts_clicks_on_real_images(kvasir) -> None:
    samples = load_folder_dataset(kvasir / "images", kvasir / "masks", names=[ONE_POLYP])

    def truth_of(image: np.ndarray, prompt: Prompt) -> np.ndarray:
        return read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")

    curves = evaluate_clicks(
        {"truth": truth_of, "ellipse": ellipse_baseline}, samples, clicks=3, progress=False
    )
    assert curves["truth"].mean_iou_at_click == [1.0] * 4 and curves["truth"].noc(0.9) == 0
    flat = curves["ellipse"].mean_iou_at_click  # the floor: clicks change nothing
    assert len(set(flat)) == 1 and flat[0] < 0.9
    assert curves["ellipse"].noc(0.9) == 4 and curves["ellipse"].failures(0.9) == 1
    body = curves["ellipse"].as_dict()
    assert body["noc_90"] == 4 and body["failures_90"] == 1 and len(body["mean_iou_at_click"]) == 4


def tiny_click_run(kvasir, out, **settings):
    """A click-training config small enough for a test: 6 images at 96 px, one epoch."""
    from polypseg.training.click_unet import ClickUnetTrainConfig

    return ClickUnetTrainConfig(
        images=kvasir / "images",
        masks=kvasir / "masks",
        boxes=kvasir / "bboxes.json",
        out=out,
        encoder="resnet18",
        size=96,
        limit=6,
        epochs=1,
        batch_size=3,
        negative_fraction=0.3,
        device="cpu",
        **settings,
    )


def test_click_training_steps_and_its_checkpoint_serves(kvasir, tmp_path) -> None:
    """A short run validates the box, the clicks and tracking (synthetic sequences of the
    validation images, the same as make-sequences writes), and keeps the epoch by all three."""
    from polypseg.datasets import load_folder_dataset
    from polypseg.images import read_mask
    from polypseg.training.click_unet import ClickUnetRun, train_click_unet
    from polypseg.video.synthetic import sample_sequence, write_sequences

    names = sorted(p.stem for p in (kvasir / "images").iterdir())
    val = tmp_path / "val.txt"
    val.write_text("\n".join(names[:2]))
    torch.manual_seed(0)
    config = tiny_click_run(
        kvasir,
        tmp_path / "run",
        val_list=val,
        click_rounds=2,
        no_click_fraction=0.0,
        val_clicks=1,
        val_sequences=1,
        val_sequence_length=4,
        edge_weight=2.0,
    )
    best = train_click_unet(config)
    predictor = build_predictor(None, best)
    assert isinstance(predictor, ClickUnetPredictor) and predictor.metadata["architecture"] == "clickunet"
    assert predictor.metadata["training"]["config"]["edge_weight"] == 2.0
    metrics = predictor.metadata["metrics"]
    assert 0.0 <= metrics["track_iou"] <= 1.0 and "iou@0.1+1clicks" in metrics
    run = ClickUnetRun.__new__(ClickUnetRun)  # only its config is read
    run.config = config
    three = (metrics["iou@0.1"] + metrics["iou@0.1+1clicks"] + metrics["track_iou"]) / 3
    assert run.selection_score(metrics, 0.0) == pytest.approx(three)
    stills = {k: v for k, v in metrics.items() if k != "track_iou"}
    assert run.selection_score(stills, 0.0) == pytest.approx(
        (metrics["iou@0.1"] + metrics["iou@0.1+1clicks"]) / 2
    )

    sample = load_folder_dataset(kvasir / "images", kvasir / "masks", None, names[:1])
    (folder,) = write_sequences(sample, tmp_path / "seqs", length=4)
    made = [truth for _, truth in sample_sequence(sample[0], 4)]
    assert all(
        np.array_equal(read_mask(p), t)
        for p, t in zip(sorted((folder / "masks").iterdir()), made, strict=True)
    )
    # A still's sequence follows from the seed and its name, not from its place in the list.
    pair = load_folder_dataset(kvasir / "images", kvasir / "masks", None, names[1:3])
    _, second = write_sequences(pair, tmp_path / "pair", length=3)
    (alone,) = write_sequences(pair[1:], tmp_path / "alone", length=3)
    assert all(
        np.array_equal(read_mask(a), read_mask(b))
        for a, b in zip(
            sorted((second / "masks").iterdir()), sorted((alone / "masks").iterdir()), strict=True
        )
    )
    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    assert predictor.predict(image, Prompt(box=Box(50, 50, 300, 300))).mask.any()


def test_presence_training_leaves_the_masks_as_they_were(kvasir, tmp_path) -> None:
    """`--train presence` (with every draw seen by a moving camera) changes the presence head
    and nothing else: every other weight and batch-norm statistic stays bit for bit."""
    from polypseg.checkpoints import load_checkpoint
    from polypseg.training.click_unet import PRESENCE_HEAD, train_click_unet

    common = dict(click_rounds=1, val_sequences=0)
    torch.manual_seed(0)
    start = train_click_unet(tiny_click_run(kvasir, tmp_path / "start", **common))
    tuned = train_click_unet(
        tiny_click_run(
            kvasir, tmp_path / "presence", init=start, train="presence", camera_augment=1.0, lr=1e-2, **common
        )
    )
    before, after = load_checkpoint(start)[0], load_checkpoint(tuned)[0]
    head = [k for k in before if k.startswith(PRESENCE_HEAD)]
    assert head and any(not torch.equal(before[k], after[k]) for k in head)
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith(PRESENCE_HEAD))
