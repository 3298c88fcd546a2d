"""Both evaluation protocols on hand-made masks: images with no polyp to prompt, checks on each
image, how clicks are counted on two polyps; and `polypseg evaluate`'s flags and files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import ONE_POLYP
from polypseg.cli import build_parser, main
from polypseg.datasets import PolypSample, load_folder_dataset
from polypseg.errors import DatasetError, PromptError
from polypseg.evaluation import ellipse_baseline, evaluate
from polypseg.evaluation_clicks import evaluate_clicks
from polypseg.images import write_image, write_mask
from polypseg.metrics import score_masks
from polypseg.prompts import Box, Prompt

SIZE = 40


def square(x1: int, y1: int, x2: int, y2: int, width: int = SIZE) -> np.ndarray:
    mask = np.zeros((SIZE, width), dtype=bool)
    mask[y1:y2, x1:x2] = True
    return mask


def dataset(folder: Path, masks: dict[str, np.ndarray]) -> list[PolypSample]:
    """Grey 40x40 images with the given masks, loaded as any image/mask folder is."""
    for name, mask in masks.items():
        write_image(folder / "images" / f"{name}.png", np.full((SIZE, SIZE, 3), 128, np.uint8), "PNG")
        write_mask(folder / "masks" / f"{name}.png", mask)
    return load_folder_dataset(folder / "images", folder / "masks")


def test_images_without_a_polyp_to_prompt_are_counted_not_scored(tmp_path) -> None:
    """An empty truth would score 1 for every model, a speck under the components' minimum
    area 0 for every model: neither is in the means, both protocols count them instead."""
    polyp = square(10, 10, 30, 30)
    samples = dataset(
        tmp_path, {"a-polyp": polyp, "b-empty": square(0, 0, 0, 0), "c-speck": square(5, 5, 8, 8)}
    )
    alone = score_masks(ellipse_baseline(polyp, Prompt(box=Box(10, 10, 30, 30))), polyp)

    boxes = evaluate({"ellipse": ellipse_baseline}, samples, progress=False)["ellipse"]
    assert [r.name for r in boxes.per_image] == ["a-polyp"] and boxes.unprompted == 2
    assert boxes.mean == alone and boxes.as_dict()["unprompted"] == 2

    clicks = evaluate_clicks({"ellipse": ellipse_baseline}, samples, clicks=1, progress=False)["ellipse"]
    assert [r.name for r in clicks.per_image] == ["a-polyp"] and clicks.unprompted == 2
    assert clicks.mean_iou_at_click == pytest.approx([alone.iou] * 2) and clicks.as_dict()["unprompted"] == 2

    with pytest.raises(DatasetError, match="none of the 2 images has a polyp to prompt"):
        evaluate({"ellipse": ellipse_baseline}, samples[1:], progress=False)


@pytest.mark.parametrize("protocol", [evaluate, evaluate_clicks])
def test_both_protocols_check_each_image_and_name_it(tmp_path, protocol) -> None:
    (sample,) = dataset(tmp_path / "off", {"off": square(10, 10, 30, 30, width=SIZE + 1)})
    with pytest.raises(DatasetError, match=r"off\.png: mask is 41x40, its image 40x40"):
        protocol({"ellipse": ellipse_baseline}, [sample], progress=False)

    (sample,) = dataset(tmp_path / "ok", {"ok": square(10, 10, 30, 30)})
    missing = PolypSample(sample.name, sample.image_path, sample.mask_path, (Box(900, 900, 990, 990),))
    with pytest.raises((PromptError, DatasetError), match=f"{sample.image_path}: .*box"):
        protocol({"ellipse": ellipse_baseline}, [missing], progress=False)


def half_until_clicked(image: np.ndarray, prompt: Prompt) -> np.ndarray:
    """A segmenter that answers a box with its upper half and, once clicked, the whole box."""
    assert prompt.box is not None
    box = prompt.box
    bottom = box.y2 if prompt.points else (box.y1 + box.y2) / 2
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[int(box.y1) : int(bottom), int(box.x1) : int(box.x2)] = True
    return mask


def test_noc_counts_every_click_placed_on_an_image_with_two_polyps(tmp_path) -> None:
    """Two equal polyps, each right after one click: the first round takes two clicks (IoU
    0.5 -> 0.75 -> 1), so NoC@90 is 2 while the per-round curve reaches 1 after one round."""
    samples = dataset(tmp_path, {"two": square(4, 4, 14, 14) | square(24, 24, 34, 34)})
    curves = evaluate_clicks(
        {"clicker": half_until_clicked, "ellipse": ellipse_baseline}, samples, clicks=2, progress=False
    )
    (image,) = curves["clicker"].per_image
    assert image.iou == [0.5, 1.0, 1.0] and image.noc(0.90) == 2
    assert image.noc(0.7) == 1 and image.noc(0.5) == 0 and image.iou_per_click == [0.5, 0.75, 1.0]
    assert curves["clicker"].as_dict()["per_image"][0]["clicks_placed"] == 2
    assert curves["clicker"].failures(0.9) == 0
    # The ellipse never reaches 85% on a square: it used its budget, 2 clicks on each polyp, + 1.
    assert curves["ellipse"].noc(0.85) == 5 and curves["ellipse"].failures(0.85) == 1


def test_limit_must_be_a_positive_number(capsys) -> None:
    parser = build_parser()
    common = ["evaluate", "--images", "i", "--masks", "m"]
    assert parser.parse_args([*common, "--limit", "3"]).limit == 3
    for bad in ("0", "-3"):
        with pytest.raises(SystemExit):
            parser.parse_args([*common, "--limit", bad])
        assert "is not a whole number of at least 1" in capsys.readouterr().err


def test_evaluate_replaces_its_json_and_report_files_whole(tmp_path, kvasir) -> None:
    """Each output is written to a temporary file and renamed into place: an old file is
    replaced (a new inode), never truncated and rewritten where a crash would leave half."""
    names = tmp_path / "names.txt"
    names.write_text(ONE_POLYP)
    report = tmp_path / "report"
    outputs = [tmp_path / "scores.json", *(report / n for n in ("summary.md", "per_image.csv", "worst.png"))]
    report.mkdir()
    for path in outputs:
        path.write_text("old")
    before = {path: path.stat().st_ino for path in outputs}
    args = ["--images", kvasir / "images", "--masks", kvasir / "masks", "--names", names, "--limit", "1"]
    outs = ["--json", outputs[0], "--report", report, "--box-noise", "0.1", "--device", "cpu"]
    assert main(["evaluate", *map(str, args), *map(str, outs)]) == 0
    assert all(path.stat().st_ino != before[path] and path.read_bytes() != b"old" for path in outputs)
    assert "box noise 0.1" in (report / "summary.md").read_text()
    assert sorted(p.name for p in report.iterdir()) == ["per_image.csv", "summary.md", "worst.png"]


def test_a_report_takes_plain_values_and_counts_the_unprompted(tmp_path) -> None:
    from polypseg.predictors import build_predictor
    from polypseg.reports import write_report

    samples = dataset(tmp_path / "data", {"a-polyp": square(10, 10, 30, 30), "b-empty": square(0, 0, 0, 0)})
    predictor = build_predictor(device="cpu")
    results = evaluate({"model": predictor.segmenter()}, samples, box_noise=0.1, seed=3, progress=False)
    write_report(tmp_path / "report", results, "model", samples, predictor, box_noise=0.1, seed=3)
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert "box noise 0.1" in summary and "| model | 1 | 1 |" in summary
    assert (tmp_path / "report" / "per_image.csv").read_text().count("a-polyp") == 1


def test_a_shift_that_leaves_no_polyp_to_prompt_gives_no_row_and_the_others_stand(tmp_path, caplog) -> None:
    from polypseg.evaluation import evaluate_shifts
    from polypseg.evaluation_clicks import evaluate_click_shifts
    from polypseg.predictors import build_predictor

    samples = dataset(tmp_path, {"corner": square(0, 0, 5, 5)})  # the octagon's cut takes it all
    predictor = build_predictor(device="cpu")
    with caplog.at_level("WARNING", logger="polypseg"):
        rows = evaluate_shifts(predictor, samples, ["octagon", "jpeg"])
        curves = evaluate_click_shifts(predictor.segmenter(), samples, ["octagon"], clicks=1)
    assert [r.shift for r in rows] == ["clean", "jpeg"] and list(curves) == ["clean"]
    assert "octagon: no row (none of the 1 images has a polyp to prompt" in caplog.text
