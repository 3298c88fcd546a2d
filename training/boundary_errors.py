"""Where a box-and-clicks model's remaining error lies (docs/models.md, "What limits it").

For each validation polyp: the box (with the evaluation's seeded box noise), then the clicks
protocol of `polypseg evaluate --clicks`. Of the pixels still wrong after the last click, the
share within k network pixels of the true boundary (the network sees every polyp's crop at
the same size, so its own pixels are the unit), and the IoU were those pixels right. Also the
ceiling the crop's resolution puts on IoU: the true mask taken to the network's size (as its
training target is) and back.

    python training/boundary_errors.py --checkpoint polypseg/models/default.pt
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from polypseg.clicks import next_click
from polypseg.datasets import load_folder_dataset, polyp_targets
from polypseg.evaluation import polyp_prompts
from polypseg.images import read_image, read_mask
from polypseg.predictors.click_unet import ClickUnetPredictor, click_window
from polypseg.predictors.registry import build_predictor
from polypseg.training.common import split_names

BANDS = (1, 2, 3, 5)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = Path("../shared/data/kvasir-seg")
    parser.add_argument("--images", type=Path, default=data / "images")
    parser.add_argument("--masks", type=Path, default=data / "masks")
    parser.add_argument("--boxes", type=Path, default=data / "bboxes.json")
    parser.add_argument("--val-list", default="training/splits/kvasir-seg-val.txt")
    parser.add_argument("--checkpoint", help="a click-guided U-Net (default: the shipped model)")
    parser.add_argument("--clicks", type=int, default=3)
    parser.add_argument("--box-noise", type=float, default=0.1)
    args = parser.parse_args()

    _, samples = split_names(load_folder_dataset(args.images, args.masks, args.boxes), args.val_list)
    predictor = build_predictor(checkpoint=args.checkpoint)
    if not isinstance(predictor, ClickUnetPredictor):
        parser.error(f"{args.checkpoint} is not a click-guided U-Net")
    segment, geometry = predictor.segmenter(), predictor.geometry
    after, ceiling, near, wrong = [], [], np.zeros(len(BANDS)), 0
    right_in_band: list[list[float]] = [[] for _ in BANDS]
    for sample in samples:
        image, truth = read_image(sample.image_path), read_mask(sample.mask_path)
        height, width = truth.shape
        targets = [target for _, target in polyp_targets(truth, sample.boxes)]
        for prompt, target in zip(polyp_prompts(sample, truth, args.box_noise, 0), targets, strict=True):
            answer = segment(image, prompt)
            for _ in range(args.clicks):
                click = next_click(answer, target)
                if click is None:
                    break
                prompt = replace(prompt, points=(*prompt.points, click))
                answer = segment(image, prompt)
            window = click_window(geometry, prompt, width, height)  # the crop the last answer saw
            scale = max(window.width, window.height) / geometry.size  # image pixels per network pixel
            inside = target.astype(np.uint8)
            to_edge = (
                np.where(
                    target,
                    cv2.distanceTransform(inside, cv2.DIST_L2, 5),
                    cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5),
                )
                / scale
            )
            error = answer ^ target
            wrong += int(error.sum())
            for i, band in enumerate(BANDS):
                near[i] += (error & (to_edge <= band)).sum()
                right_in_band[i].append(iou(np.where(to_edge <= band, target, answer), target))
            after.append(iou(answer, target))
            as_trained = geometry.crop_map(target, window)  # the training target of this crop
            ceiling.append(iou(geometry.paste(as_trained, window, width, height) > 0.5, target))

    print(f"{len(after)} polyps, model {predictor.version}, box noise {args.box_noise}")
    print(f"ceiling of the {geometry.size} px crop: IoU {np.mean(ceiling):.4f} (lowest {min(ceiling):.4f})")
    print(f"IoU after {args.clicks} clicks (per polyp): {np.mean(after):.4f}")
    print("| network pixels from the true boundary | share of the wrong pixels | IoU were they right |")
    print("|---|---|---|")
    for i, band in enumerate(BANDS):
        print(f"| <= {band} | {near[i] / max(wrong, 1):.3f} | {np.mean(right_in_band[i]):.4f} |")


if __name__ == "__main__":
    main()
