"""What several commands share: the model flags, prompts from flags, argparse types."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from polypseg.training.config import DEVICE_HELP, number_in, positive_int, sam2_size

if TYPE_CHECKING:
    from polypseg.prompts import Prompt

__all__ = ["DEVICE_HELP", "number_in", "positive_int", "sam2_size"]

log = logging.getLogger("polypseg")


def click_count(text: str) -> int:
    """--clicks: 0 to 20, as the interactive-segmentation protocol counts them."""
    from polypseg.evaluation_clicks import MAX_EVALUATION_CLICKS

    value = int(text) if text.lstrip("-").isdigit() else -1
    if not 0 <= value <= MAX_EVALUATION_CLICKS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of clicks from 0 to {MAX_EVALUATION_CLICKS}"
        )
    return value


def min_score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a score between 0 and 1")
    return value


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def png_path(text: str) -> Path:
    """An argparse type: a file name ending in .png (masks are written losslessly)."""
    if Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"{text!r}: a mask is written as PNG; name it NAME.png")
    return Path(text)


def picture_path(text: str) -> Path:
    """An argparse type: a file name ending in .png, .jpg or .jpeg."""
    if Path(text).suffix.lower() not in IMAGE_FORMATS:
        raise argparse.ArgumentTypeError(f"{text!r}: name it NAME.png or NAME.jpg")
    return Path(text)


def known_shifts() -> list[str]:
    from polypseg.shifts import SHIFTS

    return list(SHIFTS)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    from polypseg.families import segmenter_names

    parser.add_argument(
        "--model",
        choices=segmenter_names(),
        help="model kind; default: the one the checkpoint holds (the shipped default model)",
    )
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: the shipped model)")
    parser.add_argument("--device", help=DEVICE_HELP)


def add_reacquire_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reacquire",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="classical tracker: look for a lost polyp with the detector and take the track up "
        "again once it is confirmed (same place on 3 frames in a row, the polyp's size); "
        "--no-reacquire: only where it was lost",
    )
    add_detector_option(parser)


def add_detector_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", type=Path, help="detector checkpoint (default: the shipped one)")


def prompt_from_args(args: argparse.Namespace) -> Prompt:
    """The prompt of --box and --point flags."""
    from polypseg.prompts import Box, Point, Prompt

    return Prompt(
        box=Box.parse(args.box) if args.box else None, points=tuple(Point.parse(p) for p in args.point)
    )


def names_file(path: Path | None) -> list[str] | None:
    return [n.strip() for n in path.read_text().splitlines() if n.strip()] if path else None
