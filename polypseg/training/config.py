"""What the trainers' configurations share: the training loop's flags, and reading a config
from parsed flags.

A trainer's config is a dataclass that derives from `LoopConfig` and names its own flags in
`add_arguments`; every flag's destination is the field it sets, and its default is the field's
default, so a config and its command cannot drift apart. The configs live here, apart from
their trainers, so that building the command line imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: $DEVICE, else auto)"


def number_in(low: float, high: float = math.inf, low_excluded: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from `low` (or above it, `low_excluded`) to `high`."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not (low < value if low_excluded else low <= value) or value > high:
            bounds = f"above {low:g}" if low_excluded else f"from {low:g}"
            bounds += f" to {high:g}" if math.isfinite(high) else ""
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number {bounds}")
        return value

    return parse


def sam2_size(text: str) -> int:
    """An argparse type: SAM2's working size, a positive multiple of 64."""
    value = int(text) if text.isdigit() else 0
    if value < 64 or value % 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive multiple of 64 (SAM2's size)")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


@dataclass(kw_only=True)
class LoopConfig:
    """The training loop's fields, which polypseg.training.common.TrainingRun reads; each
    trainer's config derives from it, adds its own fields and may change these defaults."""

    out: Path
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    accumulate: int = 1
    workers: int = 1
    seed: int = 0
    resume: bool = False
    max_steps: int | None = None  # stop early after this many optimiser steps (tests, probes)
    limit: int | None = None  # use only the first N training items (tests, probes)
    save_every: int = 100  # steps between resumable snapshots within an epoch
    device: str = "auto"
    command: str = ""

    @classmethod
    def default(cls, name: str) -> Any:
        field = next(f for f in dataclasses.fields(cls) if f.name == name)  # type: ignore[arg-type]
        return field.default

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The trainer's own flags; subclasses add theirs and call `add_loop_arguments`."""
        raise NotImplementedError

    @classmethod
    def add_loop_arguments(cls, parser: argparse.ArgumentParser, limit: str = "images") -> None:
        """The flags of the training loop, with this config's defaults."""
        default = cls.default
        parser.add_argument("--epochs", type=positive_int, default=default("epochs"))
        parser.add_argument("--batch-size", type=positive_int, default=default("batch_size"))
        parser.add_argument("--weight-decay", type=float, default=default("weight_decay"))
        parser.add_argument("--accumulate", type=positive_int, default=1, help="batches per optimiser step")
        parser.add_argument("--workers", type=int, default=default("workers"), help="data loader processes")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
        parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
        parser.add_argument("--limit", type=int, help=f"train on the first N {limit} only")
        parser.add_argument(
            "--save-every",
            type=positive_int,
            default=default("save_every"),
            help="steps between resumable snapshots",
        )
        parser.add_argument("--device", help=DEVICE_HELP)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> Self:
        """The config of parsed flags: each field from the flag of its name, the device
        resolved, the command line recorded (checkpoints keep it)."""
        from polypseg.predictors.registry import resolve_device

        names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        values = {name: getattr(args, name) for name in names if hasattr(args, name)}
        values["device"] = resolve_device(getattr(args, "device", None))
        values["command"] = shlex.join(["polypseg", *sys.argv[1:]])
        return cls(**(values | overrides))


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """An image/mask folder dataset and its fixed validation split."""
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--boxes", type=Path, help="bboxes.json; default: boxes of the mask's components")
    parser.add_argument("--val-list", type=Path, help="names of the validation images, never trained on")


@dataclass(kw_only=True)
class FolderTrainConfig(LoopConfig):
    """A network trained on an image/mask folder dataset (the U-Nets and the detector): its
    data, its encoder, the checkpoint it starts from, and the shift augmentations."""

    images: Path
    masks: Path
    boxes: Path | None = None
    val_list: Path | None = None
    encoder: str = "resnet18"
    init: Path | None = None  # start from this checkpoint's weights
    shift_augment: float = 0.0  # chance of the shift-suite degradations per draw (0: off)
    camera_augment: float = 0.0  # chance per draw of a moving camera's view (0: off)

    @classmethod
    def add_folder_arguments(cls, parser: argparse.ArgumentParser, init_help: str) -> None:
        """The dataset, --out, --encoder, --lr, the loop's flags, --init, --shift-augment and
        --camera-augment."""
        default = cls.default
        add_dataset_arguments(parser)
        parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints, log and curves")
        parser.add_argument(
            "--encoder", default=default("encoder"), help="any segmentation-models-pytorch encoder"
        )
        parser.add_argument("--lr", type=number_in(0, low_excluded=True), default=default("lr"))
        cls.add_loop_arguments(parser)
        parser.add_argument("--init", type=Path, help=init_help)
        parser.add_argument(
            "--shift-augment",
            type=float,
            default=default("shift_augment"),
            help="chance per draw of the other-centre degradations of the shift suite (0: off)",
        )
        parser.add_argument(
            "--camera-augment",
            type=float,
            default=default("camera_augment"),
            help="chance per draw of a moving camera's view (turned, zoomed, motion-blurred, "
            "relit as synthetic sequences are; 0: off)",
        )


@dataclass(kw_only=True)
class UnetTrainConfig(FolderTrainConfig):
    model_field: ClassVar[str] = "architecture"  # the field --model sets
    architecture: str = "unet"
    encoder_weights: str | None = None
    geometry: str = "crop"
    size: int = 224
    margin: float = 0.25
    negative_fraction: float = 0.1
    epochs: int = 36
    lr: float = 2e-3
    select: str = "clean"  # best checkpoint by "clean" IoU or by "worst-shift" IoU

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        default = cls.default
        cls.add_folder_arguments(parser, "start from this checkpoint's weights (fine-tuning)")
        parser.add_argument(
            "--model",
            dest=cls.model_field,
            choices=("unet", "unetplusplus"),
            default=default(cls.model_field),
        )
        parser.add_argument(
            "--encoder-weights", help="pretrained encoder weights (e.g. imagenet) where reachable"
        )
        parser.add_argument("--geometry", choices=("crop", "whole"), default=default("geometry"))
        parser.add_argument(
            "--size", type=int, default=default("size"), help="network input size (a multiple of 32)"
        )
        parser.add_argument(
            "--margin", type=float, default=default("margin"), help="crop margin around the box, of its size"
        )
        parser.add_argument(
            "--negative-fraction",
            type=float,
            default=default("negative_fraction"),
            help="share of draws that are boxes without a polyp",
        )
        parser.add_argument(
            "--select",
            choices=("clean", "worst-shift"),
            default=default("select"),
            help="keep the checkpoint best on clean validation IoU, or on the lower of clean and "
            "worst-shift IoU",
        )


@dataclass(kw_only=True)
class ClickUnetTrainConfig(UnetTrainConfig):
    model_field: ClassVar[str] = "decoder"  # --model chooses the decoder; the family is fixed
    architecture: str = "clickunet"
    decoder: str = "unet"
    # A fine-tune of a box model by default (--init): fewer epochs, a gentler rate.
    epochs: int = 8
    lr: float = 1e-3
    negative_fraction: float = 0.15
    shift_augment: float = 0.5
    click_rounds: int = 3  # at most this many no-gradient click rounds before the trained pass
    # share of batches without simulated click rounds: the box alone, or with random clicks
    no_click_fraction: float = 0.4
    random_click_fraction: float = 0.3  # share of samples that start with random clicks
    presence_weight: float = 0.5
    click_weight: float = 4.0  # extra loss weight of the pixels a click points at
    edge_weight: float = 0.0  # extra loss weight of the pixels along the true outline
    val_clicks: int = 3  # validation reports IoU after this many simulated clicks
    # validation also tracks this many synthetic sequences (one per validation image) of
    # val_sequence_length frames; 0: none
    val_sequences: int = 20
    val_sequence_length: int = 30
    train: str = "all"  # or "presence": only the presence head learns, the masks stay as they are

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--train",
            choices=("all", "presence"),
            default=cls.default("train"),
            help="train the whole model, or only its presence output (the masks it gives do not change)",
        )
        parser.add_argument(
            "--val-sequences",
            type=int,
            default=cls.default("val_sequences"),
            help="validation also tracks this many synthetic sequences made from the validation "
            "images (as make-sequences does) with the classical tracker; 0: none",
        )
        parser.add_argument(
            "--click-rounds",
            type=positive_int,
            default=cls.default("click_rounds"),
            help="most no-gradient click rounds a batch",
        )
        parser.add_argument(
            "--presence-weight",
            type=float,
            default=cls.default("presence_weight"),
            help="weight of the presence loss",
        )
        parser.add_argument(
            "--click-weight",
            type=float,
            default=cls.default("click_weight"),
            help="extra loss weight of the pixels a click points at",
        )
        parser.add_argument(
            "--edge-weight",
            type=float,
            default=cls.default("edge_weight"),
            help="extra loss weight of the pixels within 2 network pixels of the true outline",
        )


@dataclass(kw_only=True)
class DetectorTrainConfig(FolderTrainConfig):
    decoder: str = "fcos"  # the shipped design; unet / unetplusplus: a whole-frame segmenter
    size: int = 320
    crop_fraction: float = 0.3  # share of draws cut to a random part of the frame
    epochs: int = 30

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        default = cls.default
        cls.add_folder_arguments(parser, "a detector, or a box U-Net of the same encoder, to start from")
        parser.add_argument(
            "--model",
            dest="decoder",
            choices=("unet", "unetplusplus", "fcos"),
            default=default("decoder"),
            help="fcos: a box detector, the shipped design (encoder resnet18/34/50); unet or "
            "unetplusplus: a whole-frame segmenter whose regions become boxes",
        )
        parser.add_argument(
            "--size", type=int, default=default("size"), help="working size of the whole frame"
        )
        parser.add_argument(
            "--crop-fraction",
            type=float,
            default=default("crop_fraction"),
            help="share of draws cut to a part of the frame",
        )


@dataclass(kw_only=True)
class Sam2FinetuneConfig(LoopConfig):
    images: Path | None = None
    masks: Path | None = None
    boxes: Path | None = None
    val_list: Path | None = None
    checkpoint: Path | None = None  # official sam2.1_hiera_*.pt or a polypseg SAM2 checkpoint
    size: str = "t"  # hiera size for a random start without checkpoint: t, s, b+, l
    image_size: int = 1024
    train: tuple[str, ...] = ("image-encoder", "prompt-encoder", "mask-decoder")
    loss: str = "focal"  # or bce
    clicks: int = 1  # correction rounds after the box, each with one click from the error region
    iou_weight: float = 1.0
    batch_size: int = 4
    lr: float = 5e-5
    encoder_lr: float = 5e-6
    warmup_steps: int = 50

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_dataset_arguments(parser)
        parser.add_argument(
            "--clicks",
            type=int,
            default=cls.default("clicks"),
            help="correction rounds after the box, each one click",
        )
        cls.add_sam2_arguments(parser)

    @classmethod
    def add_sam2_arguments(cls, parser: argparse.ArgumentParser, limit: str = "images") -> None:
        """The flags of every SAM2 fine-tuning: start, size, parts that learn, loss, rates."""
        default = cls.default
        parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints, log and curves")
        parser.add_argument(
            "--checkpoint", type=Path, help="start: official sam2.1_hiera_*.pt or a polypseg SAM2 file"
        )
        parser.add_argument(
            "--size",
            default=default("size"),
            help="hiera size (t, s, b+, l) of a random start without --checkpoint",
        )
        parser.add_argument(
            "--image-size",
            type=int,
            default=default("image_size"),
            help="model input size (a multiple of 64)",
        )
        parser.add_argument(
            "--train",
            type=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
            default=default("train"),
            help=f"parts that learn, comma-separated (default: {','.join(default('train'))})",
        )
        parser.add_argument(
            "--loss", choices=("focal", "bce"), default=default("loss"), help="pixel loss beside Dice"
        )
        parser.add_argument(
            "--lr", type=float, default=default("lr"), help="learning rate of the decoder and prompt encoder"
        )
        parser.add_argument(
            "--encoder-lr",
            type=float,
            default=default("encoder_lr"),
            help="learning rate of the image encoder",
        )
        parser.add_argument("--warmup-steps", type=int, default=default("warmup_steps"))
        cls.add_loop_arguments(parser, limit)


@dataclass(kw_only=True)
class Sam2VideoConfig(Sam2FinetuneConfig):
    sequences: Path | None = None
    val_sequences: Path | None = None
    length: int = 8  # frames per training sequence, the first and the last included
    loss_frames: str = "last"  # or "annotated": every frame that has a mask
    bptt: int = 4  # frames of memory that gradients flow back through
    image_size: int = 512
    batch_size: int = 1
    train: tuple[str, ...] = ("image-encoder", "prompt-encoder", "mask-decoder", "memory")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        default = cls.default
        parser.add_argument(
            "--sequences", type=Path, required=True, help="folder of sequences (docs/training.md)"
        )
        parser.add_argument("--val-sequences", type=Path, help="sequences to validate the tracker on")
        parser.add_argument(
            "--length",
            type=int,
            default=default("length"),
            help="frames per sequence, first and last included",
        )
        parser.add_argument(
            "--loss-frames",
            choices=("last", "annotated"),
            default=default("loss_frames"),
            help="frames the loss is computed on",
        )
        parser.add_argument(
            "--bptt", type=int, default=default("bptt"), help="frames of memory gradients flow back through"
        )
        cls.add_sam2_arguments(parser, limit="sequences")
