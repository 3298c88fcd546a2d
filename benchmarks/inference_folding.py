"""What `polypseg.inference.for_inference` saves: the shipped networks' forward pass as trained
(batch norms, default memory order) against folded batch norms, channels-last weights, and
both (what the predictors and the detector load), measured in turns in one process so that a
slower minute of a shared machine slows every variant alike.

    python benchmarks/inference_folding.py [--runs 30] [--threads N] [--markdown]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmark_table import print_table
from polypseg.checkpoints import load_checkpoint, load_weights
from polypseg.detector import create_fcos_model
from polypseg.inference import fold_batch_norms, for_inference
from polypseg.predictors.click_unet import create_click_model

MODELS = Path(__file__).resolve().parents[1] / "polypseg" / "models"


def as_trained(name: str, create: Callable[[dict[str, Any]], torch.nn.Module]) -> torch.nn.Module:
    state, metadata, _ = load_checkpoint(MODELS / name)
    model = create(metadata)
    load_weights(model, state, name, name)
    return model.eval()


def variants(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    folded = copy.deepcopy(model)
    fold_batch_norms(folded)
    return {
        "as trained": model,
        "batch norms folded": folded,
        "channels-last": copy.deepcopy(model).to(memory_format=torch.channels_last),
        "both (served)": for_inference(copy.deepcopy(model)),  # what the predictors load
    }


def timed_in_turns(models: dict[str, torch.nn.Module], x: Any, runs: int) -> dict[str, float]:
    """Median ms of each model on `x`, one run of each in turn, `runs` times."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)  # warm-up
        for _ in range(runs):
            for name, model in models.items():
                begin = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - begin)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    networks = [
        (
            "click model (default.pt), 7 x 224 x 224",
            as_trained("default.pt", lambda m: create_click_model(m["encoder"], m.get("decoder", "unet"))),
            torch.rand(1, 7, 224, 224),
        ),
        (
            "detector (detector.pt), 3 x 320 x 320",
            as_trained("detector.pt", lambda m: create_fcos_model(m["encoder"], m["input"]["size"])),
            [torch.rand(3, 320, 320)],
        ),
    ]
    rows = []
    for what, model, x in networks:
        times = timed_in_turns(variants(model), x, args.runs)
        reference = times["as trained"]
        rows += [[what, name, f"{ms:.1f} ms", f"{ms / reference:.2f}x"] for name, ms in times.items()]
    cpu = platform.processor() or platform.machine()
    title = f"{cpu}, {args.threads} torch threads, median of {args.runs} runs"
    print_table(title, ["network", "variant", "forward", "against as trained"], rows, args.markdown)


if __name__ == "__main__":
    main()
