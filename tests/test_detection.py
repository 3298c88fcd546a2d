"""Detection: regions of a probability map as scored boxes, the matching and AP arithmetic on
hand-made cases, and the detector's commands on real frames."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ROOT
from polypseg.detection_metrics import (
    ImageDetections,
    average_precision,
    best_threshold,
    precision_recall,
    recall_at_precision,
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
    assert truth_a.iou(Box(0, 0, 10, 11)) == pytest.approx(100 / 110)
    assert precision_recall(images, min_score=0.85) == (1.0, 0.5)
    assert precision_recall(images, min_score=0.5) == pytest.approx((2 / 3, 1.0))
    # ranked: 0.9 hit, 0.8 false, 0.6 hit, 0.3 false -> precision envelope 1.0 up to recall
    # 0.5, then 2/3 up to recall 1.0: AP = (51 * 1.0 + 50 * 2/3) / 101
    assert average_precision(images, 0.5) == pytest.approx((51 + 50 * 2 / 3) / 101)
    # F1 at the floors 0.9, 0.8, 0.6, 0.3: 0.667, 0.5, 0.8, 0.667
    floor, precision, recall = best_threshold(images)
    assert (floor, precision, recall) == pytest.approx((0.6, 2 / 3, 1.0))
    # The most recall with precision >= 0.85: the 0.9 floor's 0.5; with >= 0.6, the 0.6 floor's 1.
    assert recall_at_precision(images, 0.85) == 0.5 and recall_at_precision(images, 0.6) == 1.0
    assert recall_at_precision(images[:0], 0.85) == 0.0


def test_a_floor_keeps_the_detection_it_comes_from_and_outlines_match_as_recall_counts() -> None:
    # A floor rounded up from 0.6666 (0.667) would drop the only hit.
    alone = [ImageDetections("one", ((Box(0, 0, 10, 10), 0.6666),), (Box(0, 0, 10, 10),))]
    floor, precision, recall = best_threshold(alone)
    assert floor <= 0.6666 and (precision, recall) == (1.0, 1.0)
    # Two polyps side by side: the better detection (0.9) finds the second, the other the
    # first; the outlines take these pairs, so no polyp found for recall is scored as missed.
    two = ImageDetections(
        "two",
        ((Box(-3, 0, 7, 10), 0.8), (Box(2, 0, 12, 10), 0.9)),
        (Box(0, 0, 10, 10), Box(3, 0, 13, 10)),
    )
    assert two.assignments(0.5) == [(1, 1), (0, 0)]
    assert two.matches(0.5) == [(0.9, True), (0.8, True)]
    assert two.assignments(0.5, min_score=0.85) == [(1, 1)]


def test_the_ranking_check_scores_only_images_with_a_polyp() -> None:
    from polypseg.detection_job import DetectionScores

    none = ImageDetections("none", (), ())
    one = ImageDetections("one", (), (Box(0, 0, 10, 10),))
    scores = DetectionScores(
        [none, one, one, one, one], [[], [0.2], [0.9], [0.8], [0.7]], 0.5, [0.9, 0.8, 0.1, 0.2, 0.3]
    )
    assert scores.ranking_check() == pytest.approx((0.2, 0.9))
    assert scores.mean_polyp_iou == pytest.approx(0.65)


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


def test_two_inputs_of_one_name_are_one_line(kvasir, tmp_path, caplog) -> None:
    """Their masks and overlays would overwrite each other: refused before any work."""
    from polypseg.cli import main

    name = sorted((kvasir / "images").iterdir())[0]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name.name).write_bytes(name.read_bytes())
    args = ["detect", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(tmp_path / "out.json")]
    assert main(args) != 0
    assert f"share the name {name.stem!r}" in caplog.text
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
        assert 0 <= body["recall@0.5_at_precision_0.85"] <= 1
        per_image = sorted(body["per_image"], key=lambda entry: -entry["uncertainty"])
        ious = [float(np.mean(e["refined_iou"])) if e["refined_iou"] else 0.0 for e in per_image]
        assert body["refined_iou_most_uncertain_quarter"] == pytest.approx(np.mean(ious[:2]))
        assert body["refined_iou_least_uncertain_quarter"] == pytest.approx(np.mean(ious[-2:]))
    assert main([*args, "--shift", "sepia"]) != 0
    assert "unknown shift 'sepia'; known: downscale-0.5" in caplog.text


def test_the_box_detector_starts_from_another_models_encoder() -> None:
    """`train detector --model fcos --init box-unet.pt`: the ResNet under FCOS's feature
    pyramid gets the box U-Net's encoder weights, name for name (the box channel of the first
    convolution dropped); the pyramid and the heads keep their own."""
    import torch

    from polypseg.checkpoints import load_checkpoint
    from polypseg.detector import create_fcos_model
    from polypseg.training.detector import fcos_state_from

    model = create_fcos_model("resnet18", 128)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    shipped, _, _ = load_checkpoint(ROOT / "polypseg/models/box-unet.pt")
    model.load_state_dict(fcos_state_from(shipped, model))
    state = model.state_dict()
    encoder = [k for k in shipped if k.startswith("encoder.")]
    assert len(encoder) == 120
    for key in encoder:
        expected = shipped[key].float()[:, :3] if key == "encoder.conv1.weight" else shipped[key].float()
        assert torch.equal(state["backbone.body." + key.removeprefix("encoder.")], expected)
    assert torch.equal(
        state["head.classification_head.cls_logits.weight"], own["head.classification_head.cls_logits.weight"]
    )


@pytest.mark.parametrize("design", ["unet", "fcos"])
def test_both_detector_designs_train_and_their_checkpoint_detects(kvasir, tmp_path, design) -> None:
    """One short run of each design on real frames (the box detector's targets are the boxes
    of the augmented masks' polyps); the kept checkpoint loads as its own family and finds
    boxes in a frame, with a threshold chosen on the validation images."""
    import torch

    from polypseg.cli import main
    from polypseg.detection_job import build_detector
    from polypseg.images import read_image
    from polypseg.training.detector import mask_boxes

    mask = torch.zeros(1, 64, 64)
    mask[0, 10:20, 30:50] = 1
    mask[0, 40:60, 5:15] = 1
    mask[0, 0, 0] = 1  # a speck: not a polyp
    assert sorted(mask_boxes(mask).tolist()) == [[5.0, 40.0, 15.0, 60.0], [30.0, 10.0, 50.0, 20.0]]

    names = sorted(p.stem for p in (kvasir / "images").iterdir())
    val = tmp_path / "val.txt"
    val.write_text("\n".join(names[:2]))
    out = tmp_path / design
    args = ["train", "detector", "--images", str(kvasir / "images"), "--masks", str(kvasir / "masks")]
    args += ["--val-list", str(val), "--limit", "6", "--epochs", "1", "--batch-size", "3", "--size", "128"]
    args += ["--camera-augment", "0.5"]  # half the frames seen as by a moving camera
    assert main([*args, "--model", design, "--out", str(out), "--workers", "0"]) == 0
    detector = build_detector(out / "best.pt")
    assert detector.metadata["training"]["config"]["camera_augment"] == 0.5
    assert detector.metadata["architecture"] == ("fcos-detector" if design == "fcos" else "detector")
    assert 0 <= detector.threshold <= 1
    image = read_image(kvasir / "images" / f"{names[0]}.jpg")
    found, uncertainty = detector.find(image, min_score=0.0 if design == "unet" else 0.05)
    height, width = image.shape[:2]
    for detection in found:
        b = detection.box
        assert -1 <= b.x1 < b.x2 <= width + 1 and -1 <= b.y1 < b.y2 <= height + 1
    assert uncertainty >= 0
    if design == "unet":  # test-time augmentation: its map and its mirror image's, averaged
        x = detector._input(image)
        with torch.no_grad():
            plain = torch.sigmoid(detector.model(x)[0, 0])
            mirror = torch.sigmoid(detector.model(x.flip(-1))[0, 0]).flip(-1)
        detector.tta = True
        np.testing.assert_allclose(detector.probability(image), ((plain + mirror) / 2).numpy(), atol=1e-5)


def test_box_detector_uncertainty_is_zero_when_decided_and_grows_with_doubt() -> None:
    from polypseg.detector import score_uncertainty

    assert score_uncertainty([]) == 0.0
    assert score_uncertainty([0.999999, 0.000001]) == pytest.approx(0.0, abs=1e-4)
    one = score_uncertainty([0.7])
    assert 0 < score_uncertainty([0.9]) < one < score_uncertainty([0.5]) == pytest.approx(1.0)
    assert score_uncertainty([0.9, 0.7]) == one  # the most doubtful detection decides


def test_box_detector_drops_boxes_without_area(kvasir) -> None:
    """FCOS's box sides are distances through a ReLU: with its box regression made to answer 0
    everywhere (and every location sure of a polyp), every box has no width or height, and the
    shipped detector gives none of them (a briefly trained model gave such a box)."""
    import torch

    from polypseg.detection_job import build_detector
    from polypseg.images import read_image

    detector = build_detector(device="cpu")
    image = read_image(next((kvasir / "images").iterdir()))
    assert detector.find(image)[0]  # the shipped weights find this polyp
    head = detector.model.head
    with torch.no_grad():
        head.regression_head.bbox_reg.weight.zero_()
        head.regression_head.bbox_reg.bias.fill_(-10.0)
        head.classification_head.cls_logits.bias.fill_(10.0)
    found, uncertainty = detector.find(image, min_score=0.0)
    assert found == [] and uncertainty == 0.0


def test_views_are_fused_by_weighted_boxes_and_a_one_view_polyp_scores_half() -> None:
    from polypseg.detector import Detection, fuse_views

    plain = [Detection(Box(10, 10, 50, 50), 0.8), Detection(Box(200, 200, 220, 230), 0.6)]
    mirrored = [Detection(Box(14, 10, 54, 50), 0.4), Detection(Box(12, 12, 52, 52), 0.3)]
    fused = fuse_views([plain, mirrored])
    assert [round(d.score, 3) for d in fused] == [0.6, 0.3, 0.15]
    both = fused[0].box  # the 0.8 and the 0.4 box, weighted 2:1
    assert [round(v, 3) for v in both.as_array()] == [11.333, 10, 51.333, 50]
    # A second box of the mirrored view over the same polyp is not merged into it: its own.
    assert fused[2].box == Box(12, 12, 52, 52)
    assert fused[1].box == Box(200, 200, 220, 230)  # seen in one view only: half its score
    assert fuse_views([[], []]) == []


def test_a_box_overlapping_a_better_one_by_half_is_dropped() -> None:
    from polypseg.detector import Detection, drop_overlaps

    polyp = Detection(Box(0, 0, 100, 100), 0.9)
    shifted = Detection(Box(20, 0, 120, 100), 0.7)  # IoU 0.67 with the polyp's box
    beside = Detection(Box(60, 0, 160, 100), 0.8)  # IoU 0.25: a polyp of its own
    assert drop_overlaps([shifted, beside, polyp]) == [polyp, beside]
    assert drop_overlaps([shifted, polyp], iou=0.7) == [polyp, shifted]


def test_the_shipped_detector_gives_no_two_boxes_on_one_place(kvasir) -> None:
    """FCOS's own suppression (torchvision's 0.6) leaves boxes overlapping a better one by
    0.5-0.6 on every validation image down to the 0.05 floor; the detector drops them."""
    from conftest import ONE_POLYP
    from polypseg.detection_job import build_detector
    from polypseg.images import read_image

    detector = build_detector(device="cpu")
    found, _ = detector.find(read_image(kvasir / "images" / f"{ONE_POLYP}.jpg"), min_score=0.05)
    assert len(found) > 3
    assert all(a.box.iou(b.box) < 0.5 for i, a in enumerate(found) for b in found[:i])


@pytest.mark.parametrize(
    ("setting", "detector_views", "segmenter_views"),
    [
        ("", False, False),
        ("0", False, False),
        ("1", True, True),
        ("detector", True, False),
        ("Segmenter", False, True),
    ],
)
def test_test_time_augmentation_is_chosen_per_kind_of_model(
    monkeypatch, setting: str, detector_views: bool, segmenter_views: bool
) -> None:
    """POLYPSEG_TTA=detector pays for the mirror image where it gains most (the detector's
    recall) and leaves the interactive model's latency alone."""
    from polypseg.detection_job import build_detector
    from polypseg.predictors import build_predictor

    monkeypatch.setenv("POLYPSEG_TTA", setting)
    assert build_detector(device="cpu").tta is detector_views
    assert build_predictor(device="cpu").tta is segmenter_views


def test_an_unknown_test_time_augmentation_setting_is_refused_by_name(monkeypatch) -> None:
    from polypseg.detection_job import build_detector
    from polypseg.environment import SettingsError

    monkeypatch.setenv("POLYPSEG_TTA", "yes")
    with pytest.raises(SettingsError, match="POLYPSEG_TTA='yes': one of 0, 1, detector, segmenter"):
        build_detector(device="cpu")


def test_test_time_augmentation_of_the_shipped_detector(kvasir, monkeypatch) -> None:
    """POLYPSEG_TTA=1: the frame and its mirror image in one batch, boxes turned back and
    fused; the polyp is found where it is, and a mirrored frame gives the mirrored boxes."""
    from conftest import ONE_POLYP
    from polypseg.detection_job import build_detector
    from polypseg.images import read_image, read_mask
    from polypseg.masks import mask_box

    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    truth = mask_box(read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg"))
    plain_floor = build_detector(device="cpu").threshold
    monkeypatch.setenv("POLYPSEG_TTA", "1")
    detector = build_detector(device="cpu")
    assert detector.tta and detector._input(image).shape[0] == 2
    # Fused scores have their own floor, chosen on the validation images as the plain one was.
    assert detector.threshold == detector.metadata["tta_threshold"] != plain_floor
    found = detector.detect(image, min_score=0.3)
    assert found and found[0].box.iou(truth) > 0.5
    width = image.shape[1]
    mirrored = detector.detect(np.ascontiguousarray(image[:, ::-1]), min_score=0.3)
    assert len(mirrored) == len(found)
    for a, b in zip(found, mirrored, strict=True):
        assert abs(a.score - b.score) < 0.02
        assert abs(a.box.x1 - (width - b.box.x2)) < 2 and abs(a.box.y1 - b.box.y1) < 2


def test_a_deeper_box_detector_starts_out_answering_as_the_trained_one(kvasir) -> None:
    """resnet34 from a resnet18 detector (here one whose ResNet is the shipped box U-Net's
    trained encoder): the blocks resnet18 lacks start as the identity, so the deeper network's
    feature pyramid, and so its boxes and scores, are the same before any training."""
    import torch

    from polypseg.checkpoints import load_checkpoint
    from polypseg.detector import create_fcos_model, detector_input
    from polypseg.images import read_image
    from polypseg.training.detector import deepened_state, fcos_state_from

    shallow = create_fcos_model("resnet18", 320)
    box_unet, _, _ = load_checkpoint(ROOT / "polypseg/models/box-unet.pt")
    shallow.load_state_dict(fcos_state_from(box_unet, shallow))
    deeper = create_fcos_model("resnet34", 320)
    deeper.load_state_dict(deepened_state(shallow.state_dict(), deeper))
    image = read_image(next((kvasir / "images").iterdir()))
    x = torch.from_numpy(detector_input(image, 320))[None]
    with torch.inference_mode():
        trained, grown = shallow.eval().backbone(x), deeper.eval().backbone(x)
    assert list(trained) == list(grown)
    for level in trained:
        assert trained[level].abs().max() > 0
        torch.testing.assert_close(grown[level], trained[level], rtol=1e-4, atol=1e-4)


def test_two_boxes_on_one_polyp_are_outlined_once(kvasir) -> None:
    """Two detections on one polyp, each a quarter of its width off to a side (box IoU 0.33:
    the detector keeps both), outline it alike: the polyp is found once, by the better."""
    from conftest import ONE_POLYP
    from polypseg.detection_job import outline
    from polypseg.detector import Detection
    from polypseg.images import read_image, read_mask
    from polypseg.masks import mask_box
    from polypseg.metrics import score_masks
    from polypseg.predictors import build_predictor

    image = read_image(kvasir / "images" / f"{ONE_POLYP}.jpg")
    truth = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg") > 0
    box = mask_box(truth)
    off = box.width / 4
    left = Detection(Box(box.x1 - off, box.y1, box.x2 - off, box.y2), 0.7)
    right = Detection(Box(box.x1 + off, box.y1, box.x2 + off, box.y2), 0.9)
    assert left.box.iou(right.box) == pytest.approx(1 / 3)
    predictor = build_predictor(None, None, "cpu")
    (found,) = outline(predictor, image, [left, right])
    assert found.detection == right and score_masks(found.mask, truth).iou > 0.6
    # Each alone is outlined.
    assert [p.detection for p in outline(predictor, image, [left])] == [left]
