"""Latency of each predictor on a 576x720 colonoscopy frame, on this machine.

For every model: `prepare` (the encoder, first prompt on an image), `segment` (one box
prompt), and the whole second prompt on the same image (`predict`: a cache hit, so no
encoder). Reference rows, measured in the same run: SAM2's own `SAM2ImagePredictor`
(`set_image`, `predict`) and the bare smp forward pass of the box-channel models.
Models have random weights in the real architectures (speed does not depend on the values),
except the shipped default.

    python benchmarks/predictor_latency.py [--repeats 5] [--markdown]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmark_table import print_table
from polypseg.checkpoints import save_checkpoint
from polypseg.images import read_image
from polypseg.predictors import build_predictor, default_checkpoint
from polypseg.predictors.box_channel import create_box_channel_model
from polypseg.predictors.sam2 import create_sam2_model, sam2_config_name
from polypseg.prompts import Box, Prompt

FRAME = Path(__file__).resolve().parents[2] / "shared/data/kvasir-seg/images/cju0qkwl35piu0993l0dewei2.jpg"
BOX = Box(250, 150, 450, 350)


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def frame() -> np.ndarray:
    import cv2

    return cv2.resize(read_image(FRAME), (720, 576), interpolation=cv2.INTER_AREA)


def box_channel_rows(folder: Path, image: np.ndarray, repeats: int) -> list[tuple[str, str, float]]:
    rows = []
    models = [("default (shipped)", default_checkpoint())]
    for name, encoder in [("unet", "mit_b2"), ("unetplusplus", "resnet34")]:
        path = folder / f"{name}.pt"
        save_checkpoint(
            path,
            create_box_channel_model(name, encoder).state_dict(),
            {
                "architecture": name,
                "encoder": encoder,
                "version": f"bench-{name}",
                "input": {"mode": "crop", "size": 352, "margin": 0.25},
            },
        )
        models.append((f"{name} {encoder} 352", path))
    for label, path in models:
        rows += time_box_channel(label, build_predictor(checkpoint=path, device="cpu"), image, repeats)
    return rows


def time_box_channel(label: str, predictor, image: np.ndarray, repeats: int) -> list[tuple[str, str, float]]:
    prompt = Prompt(box=BOX)
    prepared = predictor.prepare(image)
    size = predictor.geometry.size
    x = torch.randn(1, 4, size, size)
    with torch.inference_mode():
        bare = median_seconds(lambda: predictor.model(x), repeats)
    return [
        (label, "prepare", median_seconds(lambda: predictor.prepare(image.copy()), repeats)),
        (label, "segment (box)", median_seconds(lambda: predictor.segment(prepared, prompt), repeats)),
        (
            label,
            "second prompt, predict()",
            median_seconds(lambda: predictor.predict(image, prompt), repeats),
        ),
        (label, "reference: bare smp forward", bare),
    ]


def sam2_rows(folder: Path, image: np.ndarray, repeats: int) -> list[tuple[str, str, float]]:
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    model = create_sam2_model(sam2_config_name("t"))
    path = folder / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    predictor = build_predictor(checkpoint=path, device="cpu")
    prompt = Prompt(box=BOX)
    # prepare() on a fresh copy each time would hit the cache (same pixels): time the encoder itself.
    prepare = median_seconds(lambda: predictor._encode(image), repeats)
    prepared = predictor.prepare(image)
    segment = median_seconds(lambda: predictor.segment(prepared, prompt), repeats)
    second = median_seconds(lambda: predictor.predict(image, prompt), repeats)
    reference = SAM2ImagePredictor(model)
    set_image = median_seconds(lambda: reference.set_image(image), repeats)
    box = BOX.as_array()
    predict = median_seconds(lambda: reference.predict(box=box, multimask_output=False), repeats)
    return [
        ("sam2.1 tiny 1024", "prepare", prepare),
        ("sam2.1 tiny 1024", "segment (box)", segment),
        ("sam2.1 tiny 1024", "second prompt, predict()", second),
        ("sam2.1 tiny 1024", "reference: SAM2ImagePredictor.set_image", set_image),
        ("sam2.1 tiny 1024", "reference: SAM2ImagePredictor.predict (box)", predict),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    image = frame()
    with tempfile.TemporaryDirectory() as folder:
        rows = box_channel_rows(Path(folder), image, args.repeats) + sam2_rows(
            Path(folder), image, args.repeats
        )
    cpu = platform.processor() or platform.machine()
    title = f"576x720 frame, {torch.get_num_threads()} threads, {cpu}, torch {torch.__version__}"
    cells = [(model, step, f"{seconds * 1000:.1f}") for model, step, seconds in rows]
    print_table(title, ("model", "step", "median ms"), cells, args.markdown)


if __name__ == "__main__":
    main()
