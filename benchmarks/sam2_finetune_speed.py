"""Seconds per optimiser step and peak memory of SAM2 fine-tuning, on this machine.

Each configuration runs in its own process (so that its peak resident memory is its own):
image fine-tuning at the defaults (1024 px, batch 4, one correction click) and without the
click round (the reference: one plain box-prompted forward and backward), and video
fine-tuning at its defaults (512 px, 8 frames, loss on the last). SAM2.1 tiny with random
weights (speed does not depend on the values); real Kvasir-SEG frames.

    python benchmarks/sam2_finetune_speed.py [--steps 2] [--image-size 1024] [--video-size 512]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

KVASIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kvasir-seg"


def run_one(kind: str, size: int, steps: int, clicks: int, batch: int, length: int) -> dict:
    import numpy as np
    import torch

    from polypseg.datasets import load_folder_dataset
    from polypseg.training.sam2_finetune import (
        PolypFrames,
        Sam2FinetuneConfig,
        load_sam2,
        prompted_losses,
        trainable_parts,
    )

    torch.manual_seed(0)
    parts = ("image-encoder", "prompt-encoder", "mask-decoder") + (("memory",) if kind == "video" else ())
    model, _ = load_sam2(None, "t", size)
    model.train()
    encoder, others = trainable_parts(model, parts)
    optimizer = torch.optim.AdamW([{"params": others, "lr": 1e-5}, {"params": encoder, "lr": 1e-6}])
    names = sorted(p.stem for p in (KVASIR / "images").iterdir())[:8]
    samples = load_folder_dataset(KVASIR / "images", KVASIR / "masks", KVASIR / "bboxes.json", names)
    if kind == "image":
        data = PolypFrames(samples, size)
        batch_items = [data[i] for i in range(batch)]
        images, targets, boxes = (torch.stack(t) for t in zip(*batch_items, strict=True))
        config = Sam2FinetuneConfig(out=Path("unused"), clicks=clicks)

        def step() -> torch.Tensor:
            return prompted_losses(model, images, targets, boxes, config)
    else:
        import tempfile

        from polypseg.training.sam2_video import SparseSequences, read_sequences, sequence_loss
        from polypseg.video.synthetic import write_sequences

        folder = Path(tempfile.mkdtemp())
        write_sequences(samples[:1], folder, length=length, seed=0)
        frames, masks, labelled, box = SparseSequences(read_sequences(folder), size, length)[0]

        def step() -> torch.Tensor:
            return sequence_loss(model, frames, masks, labelled, box)

    times = []
    for _ in range(steps + 1):  # the first step warms up
        start = time.perf_counter()
        step().backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": float(np.median(times[1:])), "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--video-size", type=int, default=512)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(**json.loads(args.one))))
        return
    rows = [
        (
            "image, box + 1 click, batch 4",
            dict(kind="image", size=args.image_size, clicks=1, batch=4, length=0),
        ),
        (
            "image, box only, batch 4 (reference)",
            dict(kind="image", size=args.image_size, clicks=0, batch=4, length=0),
        ),
        (
            "video, 8 frames, loss on the last",
            dict(kind="video", size=args.video_size, clicks=0, batch=1, length=8),
        ),
    ]
    print(
        f"SAM2.1 tiny, image {args.image_size} px, video {args.video_size} px, median of {args.steps} steps"
    )
    results = {}
    for name, options in rows:
        one = json.dumps({**options, "steps": args.steps})
        out = subprocess.run(
            [sys.executable, __file__, "--one", one], capture_output=True, text=True, check=True
        ).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(f"| {name} | {results[name]['seconds']:.1f} s/step | peak {results[name]['peak_mb']:.0f} MB |")
    click, plain = results[rows[0][0]]["seconds"], results[rows[1][0]]["seconds"]
    print(f"| correction click round / box only | {click / plain:.2f}x | |")


if __name__ == "__main__":
    main()
