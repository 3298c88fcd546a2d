"""Detection: regions of a probability map as scored boxes, the matching and AP arithmetic on
hand-made cases, and the detector's commands on real frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from polypseg.detection_metrics import (
    ImageDetections,
    average_precision,
    best_threshold,
    box_iou,
    precision_recall,
)
from polypseg.detector import REGION_THRESHOLD, detections_from_probability, frame_uncertainty
from polypseg.prompts import Box


def test_regions_become_boxes_in_frame_pixels_scored_by_their_peak() -> None:
    probability = np.zeros((100, 100), dtype=np.float32)
    probability[10:30, 20:60] = 0.9  # a confident region
    probability[70:80, 70:90] = 0.3  # a faint one
    probability[50, 50] = 0.99  # a speck: below the least area
    found = detections_from_probability(probability, width=500, height=200, min_score=REGION_THRESHOLD)
    assert len(found) == 1
    assert found[0].score == pytest.approx(0.9)
    assert (found[0].box.x1, found[0].box.y1, found[0].box.x2, found[0].box.y2) == (100, 20, 300, 60)
    both = detections_from_probability(probability, width=500, height=200, min_score=0.2)
    assert [round(d.score, 2) for d in both] == [0.9, 0.3]  # a lower floor only adds detections
    assert both[0] == found[0]


def test_uncertainty_is_zero_for_a_decided_map_and_grows_with_doubt() -> None:
    sure = np.zeros((50, 50), dtype=np.float32)
    sure[10:20, 10:20] = 1.0
    doubtful = sure.copy()
    doubtful[30:40, 30:40] = 0.5
    more_doubtful = doubtful.copy()
    more_doubtful[0:10, 30:50] = 0.4
    assert frame_uncertainty(sure) == 0.0
    assert 0 < frame_uncertainty(doubtful) < frame_uncertainty(more_doubtful)


def test_matching_precision_recall_and_ap_on_a_hand_made_case() -> None:
    truth_a, truth_b = Box(0, 0, 10, 10), Box(20, 20, 30, 30)
    images = [
        # a hit (0.9), a duplicate of it (0.8, a false positive), a miss elsewhere (0.3)
        ImageDetections(
            "one",
            ((Box(0, 0, 10, 11), 0.9), (Box(1, 0, 10, 10), 0.8), (Box(50, 50, 60, 60), 0.3)),
            (truth_a,),
        ),
        # a hit at 0.6 on the second image's polyp
        ImageDetections("two", ((Box(21, 20, 30, 30), 0.6),), (truth_b,)),
    ]
    assert box_iou(truth_a, Box(0, 0, 10, 11)) == pytest.approx(100 / 110)
    assert precision_recall(images, min_score=0.85) == (1.0, 0.5)
    assert precision_recall(images, min_score=0.5) == pytest.approx((2 / 3, 1.0))
    # ranked: 0.9 hit, 0.8 false, 0.6 hit, 0.3 false -> precision envelope 1.0 up to recall
    # 0.5, then 2/3 up to recall 1.0: AP = (51 * 1.0 + 50 * 2/3) / 101
    assert average_precision(images, 0.5) == pytest.approx((51 + 50 * 2 / 3) / 101)
    # F1 at the floors 0.9, 0.8, 0.6, 0.3: 0.667, 0.5, 0.8, 0.667
    floor, precision, recall = best_threshold(images)
    assert (floor, precision, recall) == pytest.approx((0.6, 2 / 3, 1.0))


def test_min_score_outside_zero_to_one_is_one_line(tmp_path, capsys) -> None:
    from polypseg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["detect", str(tmp_path), "--json", str(tmp_path / "out.json"), "--min-score", "1.5"])
    assert exit_info.value.code == 2
    assert "not a score between 0 and 1" in capsys.readouterr().err


def test_an_empty_folder_is_one_line(tmp_path, caplog) -> None:
    from polypseg.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "empty"), "--json", str(tmp_path / "out.json")]) != 0
    assert "no images in this folder" in caplog.text
    assert not (tmp_path / "out.json").exists()


def test_detect_writes_boxes_per_image_and_skips_an_unreadable_one(kvasir, tmp_path) -> None:
    from polypseg.cli import main
    from polypseg.detection_job import default_detector_checkpoint

    if not default_detector_checkpoint().is_file():
        pytest.fail("the shipped detector polypseg/models/detector.pt is missing")
    folder = tmp_path / "frames"
    folder.mkdir()
    names = sorted(p.name for p in (kvasir / "images").iterdir())[:3]
    for name in names:
        (folder / name).write_bytes((kvasir / "images" / name).read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "det.json"
    assert main(["detect", str(folder), "--json", str(out), "--masks", str(tmp_path / "masks")]) == 0
    body = json.loads(out.read_text())
    assert [entry["image"] for entry in body["images"]] == names
    assert body["skipped"] == ["broken.jpg"]
    for entry in body["images"]:
        for detection in entry["detections"]:
            x1, y1, x2, y2 = detection["box"]
            assert 0 <= x1 < x2 and 0 <= y1 < y2 and 0 <= detection["score"] <= 1
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [
        n.replace(".jpg", ".png") for n in names
    ]


@pytest.mark.slow
def test_evaluate_detection_under_a_shift_and_the_ranking_check(kvasir, tmp_path, capsys, caplog) -> None:
    """`evaluate-detection --shift`: a row per shift; each row's ranking check is the mean
    refined IoU of the images the detector is least and most sure about, from its own per-image
    numbers."""
    from polypseg.cli import main

    names = tmp_path / "names.txt"
    names.write_text("\n".join(sorted(p.stem for p in (kvasir / "images").iterdir())[:8]))
    out = tmp_path / "scores.json"
    args = ["evaluate-detection", "--images", str(kvasir / "images"), "--masks", str(kvasir / "masks")]
    assert main([*args, "--names", str(names), "--shift", "jpeg", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["shifts"]
    assert list(rows) == ["clean", "jpeg"]
    table = capsys.readouterr().out
    assert "| clean |" in table and "| jpeg |" in table
    for body in rows.values():
        per_image = sorted(body["per_image"], key=lambda entry: -entry["uncertainty"])
        ious = [float(np.mean(e["refined_iou"])) if e["refined_iou"] else 0.0 for e in per_image]
        assert body["refined_iou_most_uncertain_quarter"] == pytest.approx(np.mean(ious[:2]))
        assert body["refined_iou_least_uncertain_quarter"] == pytest.approx(np.mean(ious[-2:]))
    assert main([*args, "--shift", "sepia"]) != 0
    assert "unknown shift 'sepia'; known: downscale-0.5" in caplog.text


def test_fcos_trial_starts_from_the_shipped_encoder_and_trains_on_real_frames(kvasir) -> None:
    """The box-detector trial (training/fcos_trial.py, issue #16's second design): its resnet18
    holds the shipped detector's encoder weights, the target boxes are the augmented masks'
    polyps, and a training step lowers the loss on that batch."""
    import importlib.util
    from pathlib import Path

    import torch

    from polypseg.checkpoints import load_checkpoint
    from polypseg.datasets import load_folder_dataset
    from polypseg.detection_job import DEFAULT_DETECTOR

    path = Path(__file__).resolve().parents[1] / "training" / "fcos_trial.py"
    spec = importlib.util.spec_from_file_location("fcos_trial", path)
    assert spec is not None and spec.loader is not None
    trial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trial)

    torch.manual_seed(0)
    model = trial.create_fcos(128)
    assert trial.init_from_detector(model, DEFAULT_DETECTOR) == 120
    shipped, _, _ = load_checkpoint(DEFAULT_DETECTOR)
    assert torch.equal(
        model.backbone.body.layer4[1].conv2.weight, shipped["encoder.layer4.1.conv2.weight"].float()
    )

    samples = load_folder_dataset(kvasir / "images", kvasir / "masks", kvasir / "bboxes.json")[:4]
    frames = trial.WholeFrames(samples, 128, crop_fraction=0.0, shift_augment=0.0)
    images, targets = trial.collate([frames[i] for i in range(len(frames))])
    for (_, mask), target in zip((frames.frames[i] for i in range(4)), targets, strict=True):
        assert len(target["boxes"]) >= 1 and mask.any()  # every uncropped frame has its polyp
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
