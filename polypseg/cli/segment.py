"""`polypseg segment`: one image, a box and/or clicks, its mask."""

from __future__ import annotations

import argparse
from pathlib import Path

from polypseg.cli.options import (
    IMAGE_FORMATS,
    add_model_options,
    log,
    picture_path,
    png_path,
    prompt_from_args,
)


def cmd_segment(args: argparse.Namespace) -> None:
    from polypseg.images import read_image, write_image, write_mask
    from polypseg.masks import draw_overlay
    from polypseg.predictors import build_predictor

    image = read_image(args.image)
    prompt = prompt_from_args(args)
    predictor = build_predictor(args.model, args.checkpoint, args.device)
    prediction = predictor.predict(image, prompt)
    write_mask(args.out, prediction.mask)
    log.info(
        "%s: %d polyp pixels, score %.3f, model %s -> %s",
        args.image,
        int(prediction.mask.sum()),
        prediction.score,
        predictor.version,
        args.out,
    )
    if args.overlay:
        fitted = prompt.fitted_to(image.shape[1], image.shape[0])
        overlay = draw_overlay(image, prediction.mask, fitted)
        write_image(args.overlay, overlay, IMAGE_FORMATS[args.overlay.suffix.lower()])
        log.info("overlay -> %s", args.overlay)


def register(commands: argparse._SubParsersAction) -> None:
    segment = commands.add_parser("segment", help="segment the polyp in one image from a box and/or clicks")
    segment.add_argument("image", type=Path)
    segment.add_argument("--box", help="X1,Y1,X2,Y2 in pixels")
    segment.add_argument(
        "--point",
        action="append",
        default=[],
        help="X,Y or X,Y,LABEL (1 polyp, 0 background); repeat for more clicks",
    )
    segment.add_argument("--out", type=png_path, required=True, help="mask PNG to write")
    segment.add_argument(
        "--overlay", type=picture_path, help="also write the image with the mask drawn on it (PNG or JPEG)"
    )
    add_model_options(segment)
    segment.set_defaults(run=cmd_segment)
