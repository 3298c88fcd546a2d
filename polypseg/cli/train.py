"""`polypseg train ...` and `polypseg finetune ...`: each trainer's config names its own flags
(`add_arguments`) and is read back from them (`from_args`); the training loop's flags are
shared (polypseg.training.config)."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

from polypseg.cli.options import log
from polypseg.training import config as configs

# command -> (help, module, config class, function that trains it and returns the best checkpoint)
TRAINERS = {
    "train": {
        "unet": ("train a box-prompted U-Net / U-Net++", "unet", "UnetTrainConfig", "train_unet"),
        "click-unet": (
            "train the click-guided U-Net (box, clicks and its previous mask)",
            "click_unet",
            "ClickUnetTrainConfig",
            "train_click_unet",
        ),
        "detector": (
            "train the polyp detector (FCOS, a box detector; or a whole-frame segmenter)",
            "detector",
            "DetectorTrainConfig",
            "train_detector",
        ),
    },
    "finetune": {
        "sam2": (
            "SAM2 on images with box prompts (and correction clicks)",
            "sam2_finetune",
            "Sam2FinetuneConfig",
            "finetune_sam2",
        ),
        "sam2-video": (
            "SAM2 on sequences labelled on their last frame",
            "sam2_video",
            "Sam2VideoConfig",
            "finetune_sam2_video",
        ),
    },
}
GROUP_HELP = {"train": "train a model", "finetune": "fine-tune SAM2 on polyps"}


def _runner(module: str, config: str, function: str) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        trainer = importlib.import_module(f"polypseg.training.{module}")
        kept: Path = getattr(trainer, function)(getattr(configs, config).from_args(args))
        what = "best checkpoint" if kept.name == "best.pt" else "no validated best; final weights"
        log.info("%s: %s", what, kept)

    return run


def register(commands: argparse._SubParsersAction) -> None:
    for group, trainers in TRAINERS.items():
        sub = commands.add_parser(group, help=GROUP_HELP[group]).add_subparsers(dest="trainer", required=True)
        for name, (help_text, module, config, function) in trainers.items():
            parser = sub.add_parser(name, help=help_text)
            getattr(configs, config).add_arguments(parser)
            parser.set_defaults(run=_runner(module, config, function))
