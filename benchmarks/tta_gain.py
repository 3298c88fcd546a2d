"""Test-time augmentation of the shipped model: what it gains against what it costs.

The model alone, and with TTA (the input also flipped left-right and upside down, the three
probability maps averaged), on the 100 validation images at box noise 0.1: clean, and under
the two shifts that hurt most (motion blur, interlace); median seconds per prompt on this
machine. The reference is the model without TTA, in the same run.

    python benchmarks/tta_gain.py [--limit N]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from polypseg.datasets import load_folder_dataset
from polypseg.evaluation import evaluate, evaluate_shifts
from polypseg.predictors import build_predictor

ROOT = Path(__file__).resolve().parents[1]
KVASIR = ROOT.parent / "shared" / "data" / "kvasir-seg"
SHIFTS = ["motion-blur", "interlace"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    names = (ROOT / "training" / "splits" / "kvasir-seg-val.txt").read_text().split()
    samples = load_folder_dataset(KVASIR / "images", KVASIR / "masks", KVASIR / "bboxes.json", names)
    samples = samples[: args.limit] if args.limit else samples
    results = {}
    for tta in (False, True):
        predictor = build_predictor(tta=tta)
        rows = evaluate_shifts(predictor, samples, SHIFTS, box_noise=0.1)
        timing = evaluate({"m": predictor.segmenter()}, samples, 0.1, progress=False)
        seconds = statistics.median(r.seconds_per_prompt for r in timing["m"].per_image)
        results[tta] = ({r.shift: r.model.iou for r in rows}, seconds)
    print(f"{len(samples)} validation images, box noise 0.1, model {predictor.version}")
    print("| | clean IoU | " + " | ".join(f"{s} IoU" for s in SHIFTS) + " | s/prompt |")
    print("|---|---|" + "---|" * len(SHIFTS) + "---|")
    for tta, label in ((False, "model (reference)"), (True, "model + TTA (3 views)")):
        ious, seconds = results[tta]
        print(
            f"| {label} | "
            + " | ".join(f"{ious[s]:.4f}" for s in ["clean", *SHIFTS])
            + f" | {seconds * 1000:.0f} ms |"
        )
    gain = {s: results[True][0][s] - results[False][0][s] for s in ["clean", *SHIFTS]}
    print(
        "| TTA gain / cost | "
        + " | ".join(f"{gain[s]:+.4f}" for s in ["clean", *SHIFTS])
        + f" | {results[True][1] / results[False][1]:.2f}x |"
    )


if __name__ == "__main__":
    main()
