"""The `polypseg` command as a user runs it: a subprocess, files in and out, exit codes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import DATA, ONE_POLYP, VAL_LIST
from polypseg.images import read_image, read_mask
from polypseg.predictors import build_predictor
from polypseg.prompts import Box, Point, Prompt


def polypseg(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "polypseg.cli", *map(str, args)], capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow  # the CLI in a fresh process, and a checkpoint written first
def test_segment_writes_mask_and_overlay(tmp_path, kvasir, unet_checkpoint):
    image = kvasir / "images" / f"{ONE_POLYP}.jpg"
    polypseg(
        "segment",
        image,
        "--box",
        "38,5,430,338",
        "--checkpoint",
        unet_checkpoint,
        "--out",
        tmp_path / "mask.png",
        "--overlay",
        tmp_path / "overlay.JPG",
    )
    expected = build_predictor(checkpoint=unet_checkpoint, device="cpu").predict(
        read_image(image), Prompt(box=Box(38, 5, 430, 338))
    )
    assert np.array_equal(read_mask(tmp_path / "mask.png"), expected.mask)  # the model's answer, as is
    assert (tmp_path / "overlay.JPG").read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG, as named
    assert read_image(tmp_path / "overlay.JPG").shape == (529, 622, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.png", "overlay.JPG"]  # no temporary left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["segment", "IMAGE", "--box", "1,1,50,50", "--out", "mask"], "'mask': a mask is written as PNG"),
        (["segment", "IMAGE", "--box", "1,1,5,5", "--out", "m.png", "--overlay", "o.gif"], "NAME.jpg"),
        (["evaluate-detection", "--images", "I", "--masks", "M", "--limit", "0"], "'0' is not a whole"),
    ],
)
def test_output_names_and_counts_are_checked_before_anything_runs(tmp_path, kvasir, args, message):
    args = [str(kvasir / "images" / f"{ONE_POLYP}.jpg") if a == "IMAGE" else a for a in args]
    result = polypseg(*args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.slow  # builds SAM2 in a fresh process
def test_segment_with_sam2_clicks(tmp_path, kvasir, sam2_checkpoint):
    image = kvasir / "images" / f"{ONE_POLYP}.jpg"
    polypseg(
        "segment",
        image,
        "--point",
        "200,150",
        "--point",
        "20,500,0",
        "--model",
        "sam2",
        "--checkpoint",
        sam2_checkpoint,
        "--out",
        tmp_path / "mask.png",
    )
    clicks = Prompt(points=(Point(200, 150, True), Point(20, 500, False)))
    expected = build_predictor("sam2", sam2_checkpoint, "cpu").predict(read_image(image), clicks).mask
    assert np.array_equal(read_mask(tmp_path / "mask.png"), expected)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jpg", "--box", "1,1,5,5"], "missing.jpg: no such file"),
        (["IMAGE", "--box", "1,1,5"], "box '1,1,5' is not X1,Y1,X2,Y2"),
        (["IMAGE", "--box", "700,600,800,700"], "lies outside the 622x529 image"),
        (["IMAGE", "--box", "10,10,10,40"], "has no area"),
        (["IMAGE", "--point", "10,10"], "needs a box around the polyp"),
        (
            ["IMAGE", "--box", "1,1,50,50", "--checkpoint", "nothere.pt"],
            "nothere.pt: no such checkpoint file",
        ),
        (["IMAGE", "--box", "1,1,50,50", "--model", "sam2"], "holds a unet model, not sam2"),
        (["IMAGE", "--box", "1,1,50,50", "--device", "gpu"], "device 'gpu' (--device or DEVICE): one of"),
    ],
)
def test_segment_bad_input_is_one_clear_line(tmp_path, kvasir, unet_checkpoint, args, message):
    args = [str(kvasir / "images" / f"{ONE_POLYP}.jpg") if a == "IMAGE" else a for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(unet_checkpoint)]
    result = polypseg("segment", *args, "--out", tmp_path / "m.png", check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # evaluates a dataset in a fresh process
def test_evaluate_prints_table_and_writes_json_and_report(tmp_path, kvasir, unet_checkpoint):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(VAL_LIST.read_text().split()[:6]))
    result = polypseg(
        "evaluate",
        "--images",
        kvasir / "images",
        "--masks",
        kvasir / "masks",
        "--boxes",
        kvasir / "bboxes.json",
        "--names",
        names,
        "--box-noise",
        "0.1",
        "--checkpoint",
        unet_checkpoint,
        "--json",
        tmp_path / "scores.json",
        "--report",
        tmp_path / "report",
    )
    assert "ellipse in box" in result.stdout and "mean IoU" in result.stdout
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["n"] == 6 and len(scores["per_image"]) == 6
    # The same scores as the library's evaluate() in this process, on the same noisy boxes.
    from polypseg.datasets import load_folder_dataset
    from polypseg.evaluation import evaluate
    from polypseg.predictors import build_predictor

    predictor = build_predictor(checkpoint=unet_checkpoint, device="cpu")
    samples = load_folder_dataset(
        kvasir / "images", kvasir / "masks", kvasir / "bboxes.json", names.read_text().split()
    )
    segment = {"m": lambda image, prompt: predictor.predict(image, prompt).mask}
    mean = evaluate(segment, samples, box_noise=0.1, seed=0, progress=False)["m"].mean
    for key, value in (("mean_iou", mean.iou), ("mean_dice", mean.dice), ("mean_recall", mean.recall)):
        assert scores[key] == pytest.approx(value, abs=1e-4), key
    # The baseline is scored on the same boxes: about 0.7-0.8 IoU on Kvasir-SEG at noise 0.1.
    assert 0.55 < scores["baseline"]["mean_iou"] < 0.9
    assert (tmp_path / "report" / "worst.png").stat().st_size > 10_000
    assert "| ellipse in box | 6 |" in (tmp_path / "report" / "summary.md").read_text()


def test_evaluate_boxes_from_mask_components(tmp_path, kvasir, unet_checkpoint, two_polyp_name):
    """Without a boxes file, each connected component of the true mask is a polyp to box."""
    names = tmp_path / "names.txt"
    names.write_text(two_polyp_name)
    polypseg(
        "evaluate",
        "--images",
        kvasir / "images",
        "--masks",
        kvasir / "masks",
        "--names",
        names,
        "--checkpoint",
        unet_checkpoint,
        "--json",
        tmp_path / "s.json",
    )
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["per_image"][0]["polyps"] == 2


def test_evaluate_bad_folders(tmp_path, unet_checkpoint):
    (tmp_path / "images").mkdir()
    result = polypseg(
        "evaluate",
        "--images",
        tmp_path / "images",
        "--masks",
        tmp_path / "nomasks",
        "--checkpoint",
        unet_checkpoint,
        check=False,
    )
    assert result.returncode == 2 and "nomasks: no such folder" in result.stderr


def test_evaluate_names_the_image_whose_box_misses_it(tmp_path, kvasir, unet_checkpoint):
    import shutil

    for kind in ("images", "masks"):
        (tmp_path / kind).mkdir()
        shutil.copy(kvasir / kind / f"{ONE_POLYP}.jpg", tmp_path / kind)
    boxes = {
        ONE_POLYP: {
            "height": 529,
            "width": 622,
            "bbox": [{"label": "polyp", "xmin": 900, "ymin": 900, "xmax": 990, "ymax": 990}],
        }
    }
    (tmp_path / "bboxes.json").write_text(json.dumps(boxes))
    result = polypseg(
        "evaluate", "--images", tmp_path / "images", "--masks", tmp_path / "masks",
        "--boxes", tmp_path / "bboxes.json", "--checkpoint", unet_checkpoint, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{ONE_POLYP}.jpg: box (900,900,990,990) lies outside the 622x529 image" in result.stderr


def test_box_noise_is_seeded_and_moves_boxes(tmp_path, kvasir):
    from polypseg.datasets import load_folder_dataset
    from polypseg.evaluation import polyp_prompts

    sample = load_folder_dataset(kvasir / "images", kvasir / "masks", kvasir / "bboxes.json", [ONE_POLYP])[0]
    truth = read_mask(sample.mask_path)
    first = polyp_prompts(sample, truth, 0.1, seed=0)[0].box
    assert first == polyp_prompts(sample, truth, 0.1, seed=0)[0].box
    assert first != polyp_prompts(sample, truth, 0.0, seed=0)[0].box
    exact = polyp_prompts(sample, truth, 0.0, seed=0)[0].box
    assert abs(first.x1 - exact.x1) <= 0.1 * exact.width + 1e-6
    assert np.isclose(exact.x1, 38)


def test_a_file_that_is_not_a_checkpoint_is_one_line(tmp_path, kvasir):
    from conftest import ROOT

    image = kvasir / "images" / f"{ONE_POLYP}.jpg"
    args = ["--box", "1,1,50,50", "--checkpoint", ROOT / "README.md", "--out", tmp_path / "m.png"]
    result = polypseg("segment", image, *args, check=False)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()  # one line: no torch advice, no warning
    assert "README.md: not a readable PyTorch checkpoint (it is not a file written by torch.save)" in line
    assert "expected a .pt file" in line and not (tmp_path / "m.png").exists()


CLIP = DATA / "video" / "colonoscopy-clip-1.mp4"  # 181 frames


def test_track_refuses_a_frame_the_video_lacks_before_making_anything(tmp_path, unet_checkpoint):
    out = tmp_path / "out"
    for bad in (["--frame", "500"], ["--frame", "3", "--correct", "181:10,10,60,60"]):
        result = polypseg(
            "track", CLIP, *bad, "--box", "10,10,60,60", "--checkpoint", unet_checkpoint, "--out", out,
            check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.strip().splitlines()  # no progress bar before it
        assert "outside the video's 181 frames (0 to 180)" in line and "tracking" not in result.stderr
        assert not out.exists()


def test_track_on_a_broken_video_says_so_without_the_decoders_noise(tmp_path, unet_checkpoint):
    broken = tmp_path / "cut.mp4"
    broken.write_bytes(CLIP.read_bytes()[:50_000])  # a copy cut short: no index ("moov atom")
    result = polypseg(
        "track", broken, "--frame", "0", "--box", "10,10,60,60", "--checkpoint", unet_checkpoint,
        "--out", tmp_path / "out", check=False,
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "cut.mp4: not a video that OpenCV can decode" in line and "moov" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_models_list_on_an_empty_store_says_where_it_looked(tmp_path):
    result = polypseg("models", "list", "--model-dir", tmp_path / "models")
    assert result.stdout == ""
    assert f"no model versions in {tmp_path / 'models'} (looked in {tmp_path / 'models' / 'versions'})" in (
        result.stderr
    )
    helped = polypseg("models", "--help").stdout
    for action in ("list:", "promote VERSION:", "rollback:"):
        assert action in helped


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (
            ["evaluate", "--images", "x", "--masks", "y", "--box-noise", "nan"],
            "'nan' is not a finite number from 0 to 1",
        ),
        (
            ["evaluate", "--images", "x", "--masks", "y", "--box-noise", "-0.1"],
            "is not a finite number from 0 to 1",
        ),
        (
            ["retrain", "--model-dir", "m", "--dataset", "d", "--tolerance", "inf"],
            "'inf' is not a finite number from 0 to 1",
        ),
        (
            ["retrain", "--model-dir", "m", "--dataset", "d", "--lr", "0"],
            "'0' is not a finite number above 0",
        ),
        (
            ["retrain", "--model-dir", "m", "--dataset", "d", "--max-steps", "0"],
            "not a whole number of at least 1",
        ),
        (
            ["track", "clip.mp4", "--frame", "1", "--box", "1,1,5,5", "--out", "o", "--sam2-size", "-64"],
            "'-64' is not a positive multiple of 64",
        ),
        (
            ["train", "unet", "--images", "x", "--masks", "y", "--out", "o", "--lr", "nan"],
            "'nan' is not a finite number above 0",
        ),
    ],
)
def test_numbers_out_of_range_are_refused_by_argparse(capsys, command, message) -> None:
    from polypseg.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(command)
    assert stopped.value.code == 2 and message in capsys.readouterr().err
