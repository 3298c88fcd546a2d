"""The shift suite: every shift keeps image and mask aligned, is reproducible from its seed, and
the evaluation reports each beside the clean score."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import KVASIR, ONE_POLYP
from polypseg.errors import PolypsegError
from polypseg.images import read_image, read_mask
from polypseg.metrics import score_masks
from polypseg.shifts import GEOMETRIC, SHIFTS, apply_shift, shift_names


@pytest.fixture(scope="module")
def frame() -> tuple[np.ndarray, np.ndarray]:
    return read_image(KVASIR / "images" / f"{ONE_POLYP}.jpg"), read_mask(
        KVASIR / "masks" / f"{ONE_POLYP}.jpg"
    )


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_keeps_image_and_mask_aligned(name: str, frame) -> None:
    image, mask = frame
    # An image that draws its own mask (white polyp on grey): after the shift, the bright
    # pixels must still be where the shifted mask says the polyp is.
    drawn = np.where(mask[..., None], 255, 60).astype(np.uint8).repeat(3, axis=2)
    shifted, shifted_mask = apply_shift(name, drawn, mask, "a")
    assert shifted.shape[:2] == shifted_mask.shape and shifted.dtype == np.uint8
    if name in GEOMETRIC:
        bright = cv2.cvtColor(shifted, cv2.COLOR_RGB2GRAY) > 160
        assert score_masks(bright, shifted_mask).iou > 0.95, name
    else:
        assert np.array_equal(shifted_mask, mask)  # the polyp has not moved
    real, real_mask = apply_shift(name, image, mask, "a")
    assert not np.array_equal(real, image) or name == "edge-crop" and real.shape != image.shape


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_is_reproducible(name: str, frame) -> None:
    image, mask = frame
    first = apply_shift(name, image, mask, "same", seed=3)
    again = apply_shift(name, image, mask, "same", seed=3)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    if name not in ("downscale-0.5", "downscale-0.25"):  # these have no randomness
        others = [apply_shift(name, image, mask, f"other-{i}", seed=3)[0] for i in range(4)]
        assert any(o.shape != first[0].shape or not np.array_equal(o, first[0]) for o in others)


def test_edge_crop_cuts_the_polyp_at_the_frame_edge(frame) -> None:
    image, mask = frame
    _, cropped = apply_shift("edge-crop", image, mask, "a")
    assert 0.4 < cropped.sum() / mask.sum() < 0.8
    assert cropped[0].any() or cropped[-1].any() or cropped[:, 0].any() or cropped[:, -1].any()


def test_shift_names() -> None:
    assert shift_names("all") == list(SHIFTS)
    assert shift_names("jpeg, noise") == ["jpeg", "noise"]
    with pytest.raises(PolypsegError, match="unknown shift 'blur'; known"):
        shift_names("jpeg,blur")


@pytest.mark.slow
def test_evaluate_with_shifts(tmp_path) -> None:
    out = tmp_path / "shifts.json"
    command = [sys.executable, "-m", "polypseg.cli", "evaluate", "--images", str(KVASIR / "images")]
    command += [
        "--masks",
        str(KVASIR / "masks"),
        "--limit",
        "3",
        "--shift",
        "interlace,octagon",
        "--json",
        str(out),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    assert "| interlace |" in run.stdout and "worst shift:" in run.stdout
    rows = json.loads(out.read_text())["shifts"]
    assert [r["shift"] for r in rows] == ["clean", "interlace", "octagon"]
    # Each shift changes what the model sees, so its scores move; the clean row is unshifted.
    assert all(r["model"]["iou"] != rows[0]["model"]["iou"] for r in rows[1:])
    assert 0.3 < rows[0]["model"]["iou"] <= 1 and rows[0]["model"]["iou"] > rows[0]["ellipse"]["iou"]
    bad = subprocess.run([*command[:-4], "--shift", "fog"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown shift 'fog'" in bad.stderr
