"""The `polypseg` command: one console script, a subcommand per job."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polypseg.errors import PolypsegError, PromptError

if TYPE_CHECKING:
    from polypseg.label_sources import LabelSource
    from polypseg.prompts import Prompt
    from polypseg.video.tracking import VideoTracker

DEVICE_HELP = "cpu, cuda, cuda:N or auto (default: $DEVICE, else auto)"


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


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


def _shift_names() -> list[str]:
    from polypseg.shifts import SHIFTS

    return list(SHIFTS)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from polypseg.families import segmenter_names

    parser.add_argument(
        "--model",
        choices=segmenter_names(),
        help="model kind; default: the one the checkpoint holds (the shipped default model)",
    )
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: the shipped model)")
    parser.add_argument("--device", help=DEVICE_HELP)


def _prompt(args: argparse.Namespace) -> Prompt:
    """The prompt of --box and --point flags."""
    from polypseg.prompts import Box, Point, Prompt

    return Prompt(
        box=Box.parse(args.box) if args.box else None, points=tuple(Point.parse(p) for p in args.point)
    )


def _correction(text: str) -> tuple[int, Prompt]:
    """A --correct flag, "FRAME:X1,Y1,X2,Y2": a box that re-anchors the track on that frame."""
    from polypseg.prompts import Box, Prompt

    frame, separator, box = text.partition(":")
    if not separator or not frame.strip().isdigit():
        raise PromptError(f"correction {text!r} is not FRAME:X1,Y1,X2,Y2")
    return int(frame), Prompt(box=Box.parse(box))


def cmd_segment(args: argparse.Namespace) -> None:
    from polypseg.images import read_image, write_mask
    from polypseg.masks import draw_overlay
    from polypseg.predictors import build_predictor

    image = read_image(args.image)
    prompt = _prompt(args)
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
        from PIL import Image

        args.overlay.parent.mkdir(parents=True, exist_ok=True)
        fitted = prompt.fitted_to(image.shape[1], image.shape[0])
        Image.fromarray(draw_overlay(image, prediction.mask, fitted)).save(args.overlay)
        log.info("overlay -> %s", args.overlay)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from polypseg.datasets import load_folder_dataset
    from polypseg.evaluation import ellipse_baseline, evaluate
    from polypseg.predictors import build_predictor
    from polypseg.reports import print_table, write_report

    samples = load_folder_dataset(args.images, args.masks, args.boxes, _names(args.names))
    if args.limit:
        samples = samples[: args.limit]
    predictor = build_predictor(args.model, args.checkpoint, args.device)
    if args.clicks is not None:
        _evaluate_clicks(args, samples, predictor)
        return
    if args.shift:
        _evaluate_shifts(args, samples, predictor)
        return
    results = evaluate(
        {
            predictor.version: lambda image, prompt: predictor.predict(image, prompt).mask,
            "ellipse in box": ellipse_baseline,
        },
        samples,
        box_noise=args.box_noise,
        seed=args.seed,
    )
    print_table(results, title=f"{len(samples)} images, box noise {args.box_noise:g}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body = results[predictor.version].as_dict()
        body.update(
            model=predictor.version,
            box_noise=args.box_noise,
            baseline=results["ellipse in box"].as_dict() | {"per_image": None},
        )
        args.json.write_text(json.dumps(body, indent=1))
        log.info("wrote %s", args.json)
    if args.report:
        write_report(args.report, results, predictor.version, samples, predictor, args)
        log.info("report -> %s", args.report)


def _evaluate_clicks(args: argparse.Namespace, samples: list, predictor) -> None:  # type: ignore[type-arg,no-untyped-def]
    """IoU after 0..N simulated clicks (NoC@85/90) for the model and the ellipse baseline, or
    the model's curve under each named shift."""
    from polypseg.evaluation import ellipse_baseline
    from polypseg.evaluation_clicks import (
        click_table,
        evaluate_click_shifts,
        evaluate_clicks,
        plot_click_curves,
    )
    from polypseg.shifts import shift_names

    title = f"{len(samples)} images, box noise {args.box_noise:g}, {args.clicks} clicks"
    if args.shift:
        try:
            names = shift_names(args.shift)
        except ValueError as exc:
            raise PolypsegError(str(exc)) from None
        curves = evaluate_click_shifts(
            predictor.segmenter(), samples, names, args.clicks, args.box_noise, args.seed
        )
        title += f", model {predictor.version}, rows: shifts"
    else:
        curves = evaluate_clicks(
            {predictor.version: predictor.segmenter(), "ellipse in box": ellipse_baseline},
            samples,
            args.clicks,
            args.box_noise,
            args.seed,
        )
    table = click_table(curves, title)
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "model": predictor.version,
            "box_noise": args.box_noise,
            "clicks": args.clicks,
            **(
                {"shifts": {name: curve.as_dict() for name, curve in curves.items()}}
                if args.shift
                else curves[predictor.version].as_dict()
                | {"baseline": curves["ellipse in box"].as_dict() | {"per_image": None}}
            ),
        }
        args.json.write_text(json.dumps(body, indent=1))
        log.info("wrote %s", args.json)
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "clicks.md").write_text(table + "\n")
        plot_click_curves(curves, args.report / "clicks.png", title)
        log.info("report -> %s", args.report)


def _evaluate_shifts(args: argparse.Namespace, samples: list, predictor) -> None:  # type: ignore[type-arg,no-untyped-def]
    """The model and the ellipse baseline on the clean images and under each named shift."""
    from polypseg.evaluation import evaluate_shifts, shift_table
    from polypseg.shifts import shift_names

    try:
        names = shift_names(args.shift)
    except ValueError as exc:
        raise PolypsegError(str(exc)) from None
    rows = evaluate_shifts(predictor, samples, names, args.box_noise, args.seed)
    table = shift_table(
        rows, f"{len(samples)} images, box noise {args.box_noise:g}, model {predictor.version}"
    )
    print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "model": predictor.version,
            "box_noise": args.box_noise,
            "shifts": [r.as_dict() for r in rows],
        }
        args.json.write_text(json.dumps(body, indent=1))
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        (args.report / "shifts.md").write_text(table + "\n")
        log.info("report -> %s", args.report / "shifts.md")


def _min_score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a score between 0 and 1")
    return value


def cmd_detect(args: argparse.Namespace) -> None:
    from polypseg.detection_job import build_detector, detect_images, detect_video, image_files
    from polypseg.predictors import build_predictor

    if not args.inputs and args.video is None:
        raise PolypsegError("name images, folders of images, or --video FILE")
    if args.video is not None:
        from polypseg.video.frames import open_frames

        open_frames(args.video)  # refuse a video that cannot be opened before any work
    files = image_files(args.inputs) if args.inputs else []
    detector = build_detector(args.detector, args.device)
    predictor = (
        build_predictor(args.model, args.checkpoint, args.device) if args.masks or args.overlay else None
    )
    for folder in (args.masks, args.overlay):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    frames, skipped = [], []
    if files:
        run = detect_images(detector, predictor, files, args.min_score, args.masks, args.overlay)
        frames += run.frames
        skipped += run.skipped
    if args.video is not None:
        frames += detect_video(
            detector, predictor, args.video, args.min_score, args.masks, args.overlay
        ).frames
    found = sum(len(f.detections) for f in frames)
    log.info(
        "%d polyps in %d of %d frames (detector %s)%s",
        found,
        sum(bool(f.detections) for f in frames),
        len(frames),
        detector.version,
        f"; {len(skipped)} unreadable skipped" if skipped else "",
    )
    body = {
        "detector": detector.version,
        "min_score": detector.threshold if args.min_score is None else args.min_score,
        "images": [f.as_dict() for f in frames],
        "skipped": skipped,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(body, indent=1))
    log.info("wrote %s", args.json)


def cmd_evaluate_detection(args: argparse.Namespace) -> None:
    from polypseg.datasets import load_folder_dataset
    from polypseg.detection_job import build_detector, evaluate_detection
    from polypseg.predictors import build_predictor

    samples = load_folder_dataset(args.images, args.masks, args.boxes, _names(args.names))
    if args.limit:
        samples = samples[: args.limit]
    detector = build_detector(args.detector, args.device)
    predictor = build_predictor(args.model, args.checkpoint, args.device)
    scores = evaluate_detection(detector, predictor, samples, args.min_score)
    body = scores.as_dict()
    print(
        f"{body['n']} images, {body['polyps']} polyps, detector {detector.version}, "
        f"refined by {predictor.version}\n\n"
        "| min score | precision@0.5 | recall@0.5 | AP50 | AP50:95 | refined mask IoU (all polyps) |\n"
        "|---|---|---|---|---|---|\n"
        f"| {body['min_score']:.3f} | {body['precision@0.5']:.4f} | {body['recall@0.5']:.4f} | "
        f"{body['ap50']:.4f} | {body['ap50_95']:.4f} | {body['mean_refined_iou']:.4f} |"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body.update(detector=detector.version, model=predictor.version)
        args.json.write_text(json.dumps(body, indent=1))
        log.info("wrote %s", args.json)


def cmd_rank(args: argparse.Namespace) -> None:
    from polypseg.detection_job import build_detector, image_files, rank_images

    detector = build_detector(args.detector, args.device)
    ranked, skipped = rank_images(detector, image_files(args.inputs))
    for name, uncertainty in ranked:
        print(f"{uncertainty:.5f}  {name}")
    if skipped:
        log.warning("%d unreadable images skipped", len(skipped))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "detector": detector.version,
            "uncertainty": "mean binary entropy of the detector's probability map over undecided pixels",
            "ranked": [{"image": name, "uncertainty": u} for name, u in ranked],
            "skipped": skipped,
        }
        args.json.write_text(json.dumps(body, indent=1))


def cmd_track(args: argparse.Namespace) -> None:
    from polypseg.video.frames import open_frames
    from polypseg.video.tracking_job import track_video, write_overlay

    source = open_frames(args.video)
    prompt = _prompt(args)
    corrections = dict(_correction(text) for text in args.correct)
    if args.frame in corrections:
        raise PromptError(f"--correct on the start frame {args.frame}: give that box as --box")
    # Refuse a bad prompt before loading a model or making --out.
    source.check_frame(args.frame, "--frame")
    for frame in corrections:
        source.check_frame(frame, "--correct frame")
    for correction in (prompt, *corrections.values()):
        correction.fitted_to(source.info.width, source.info.height)
    tracker = _tracker(args)
    results = track_video(
        source, tracker, args.frame, prompt, args.out, args.direction, args.max_frames, corrections
    )
    lost = sum(r.lost for r in results)
    log.info("%d frames tracked, %d of them lost; masks and track.json in %s", len(results), lost, args.out)
    if args.overlay:
        write_overlay(source, results, args.out, args.overlay)
        log.info("overlay -> %s", args.overlay)


def _tracker(args: argparse.Namespace) -> VideoTracker:
    """The --tracker of --model / --checkpoint (SAM2 at --sam2-size where given)."""
    from polypseg.predictors import build_predictor
    from polypseg.video.tracking_job import build_tracker

    options = {"image_size": args.sam2_size} if args.sam2_size else {}
    predictor = build_predictor(args.model, args.checkpoint, args.device, **options)
    detector = None
    if args.tracker == "classical" and not args.no_reacquire:
        from polypseg.detection_job import build_detector

        detector = build_detector(args.detector, args.device)
    return build_tracker(args.tracker, predictor, detector)


def cmd_make_sequences(args: argparse.Namespace) -> None:
    from polypseg.datasets import load_folder_dataset
    from polypseg.video.synthetic import write_sequences

    samples = load_folder_dataset(args.images, args.masks, None, _names(args.names))[: args.count]
    folders = write_sequences(samples, args.out, args.length, args.seed)
    log.info("%d sequences of %d frames in %s", len(folders), args.length, args.out)


def cmd_evaluate_video(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from polypseg.atomic import write_atomic
    from polypseg.video.evaluation import evaluate_sequence, plot_iou_over_time, sequence_folders, summarise

    folders = sequence_folders(args.sequences)
    tracker = _tracker(args)
    results = [evaluate_sequence(tracker, folder) for folder in folders]
    summary = summarise(results)
    columns = {
        "sequences": "sequences",
        "frames": "frames",
        "mean_iou": "mean IoU",
        "mean_dice": "mean Dice",
        "lost_frames": "lost frames",
        "recoveries": "recoveries",
        "frames_per_second": "frames/s",
    }
    table = Table("tracker", *columns.values())
    table.add_row(args.tracker, *(str(summary[key]) for key in columns))
    Console(width=160).print(table)
    if args.json:
        body = {"tracker": args.tracker, **summary, "per_sequence": [r.to_json() for r in results]}
        write_atomic(args.json, json.dumps(body, indent=1).encode())
        log.info("wrote %s", args.json)
    if args.plot:
        plot_iou_over_time(results, args.plot)
        log.info("IoU over time -> %s", args.plot)


def _names(path: Path | None) -> list[str] | None:
    return [n.strip() for n in path.read_text().splitlines() if n.strip()] if path else None


def cmd_train_unet(args: argparse.Namespace) -> None:
    from polypseg.training.unet import UnetTrainConfig, train_unet

    log.info("best checkpoint: %s", train_unet(UnetTrainConfig(**_unet_train_options(args))))


def cmd_train_click_unet(args: argparse.Namespace) -> None:
    from polypseg.training.click_unet import ClickUnetTrainConfig, train_click_unet

    options = _unet_train_options(args) | {
        "architecture": "clickunet",
        "decoder": args.model,
        "click_rounds": args.click_rounds,
        "presence_weight": args.presence_weight,
        "click_weight": args.click_weight,
    }
    log.info("best checkpoint: %s", train_click_unet(ClickUnetTrainConfig(**options)))


def cmd_train_detector(args: argparse.Namespace) -> None:
    from polypseg.predictors.registry import resolve_device
    from polypseg.training.detector import DetectorTrainConfig, train_detector

    config = DetectorTrainConfig(
        images=args.images,
        masks=args.masks,
        boxes=args.boxes,
        val_list=args.val_list,
        out=args.out,
        encoder=args.encoder,
        decoder=args.model,
        size=args.size,
        crop_fraction=args.crop_fraction,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        accumulate=args.accumulate,
        workers=args.workers,
        seed=args.seed,
        resume=args.resume,
        max_steps=args.max_steps,
        limit=args.limit,
        save_every=args.save_every,
        device=resolve_device(args.device),
        command=shlex.join(["polypseg", *sys.argv[1:]]),
        init=args.init,
        shift_augment=args.shift_augment,
    )
    log.info("best checkpoint: %s", train_detector(config))


def _unet_train_options(args: argparse.Namespace) -> dict[str, Any]:
    from polypseg.predictors.registry import resolve_device

    return dict(
        images=args.images,
        masks=args.masks,
        boxes=args.boxes,
        val_list=args.val_list,
        out=args.out,
        architecture=args.model,
        encoder=args.encoder,
        encoder_weights=args.encoder_weights,
        geometry=args.geometry,
        size=args.size,
        margin=args.margin,
        negative_fraction=args.negative_fraction,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        accumulate=args.accumulate,
        workers=args.workers,
        seed=args.seed,
        resume=args.resume,
        max_steps=args.max_steps,
        limit=args.limit,
        save_every=args.save_every,
        device=resolve_device(args.device),
        command=shlex.join(["polypseg", *sys.argv[1:]]),
        init=args.init,
        shift_augment=args.shift_augment,
        select=args.select,
    )


def _sam2_finetune_options(args: argparse.Namespace) -> dict[str, object]:
    from polypseg.predictors.registry import resolve_device

    return {
        "out": args.out,
        "checkpoint": args.checkpoint,
        "size": args.size,
        "image_size": args.image_size,
        "train": tuple(part.strip() for part in args.train.split(",") if part.strip()),
        "loss": args.loss,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "encoder_lr": args.encoder_lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "accumulate": args.accumulate,
        "workers": args.workers,
        "seed": args.seed,
        "resume": args.resume,
        "max_steps": args.max_steps,
        "limit": args.limit,
        "save_every": args.save_every,
        "device": resolve_device(args.device),
        "command": shlex.join(["polypseg", *sys.argv[1:]]),
    }


def cmd_finetune_sam2(args: argparse.Namespace) -> None:
    from polypseg.training.sam2_finetune import Sam2FinetuneConfig, finetune_sam2

    config = Sam2FinetuneConfig(
        images=args.images,
        masks=args.masks,
        boxes=args.boxes,
        val_list=args.val_list,
        clicks=args.clicks,
        **_sam2_finetune_options(args),  # type: ignore[arg-type]
    )
    log.info("best checkpoint: %s", finetune_sam2(config))


def cmd_finetune_sam2_video(args: argparse.Namespace) -> None:
    from polypseg.training.sam2_video import Sam2VideoConfig, finetune_sam2_video

    config = Sam2VideoConfig(
        sequences=args.sequences,
        val_sequences=args.val_sequences,
        length=args.length,
        loss_frames=args.loss_frames,
        bptt=args.bptt,
        **_sam2_finetune_options(args),  # type: ignore[arg-type]
    )
    log.info("best checkpoint: %s", finetune_sam2_video(config))


def _pull(dataset: Path, sources: Sequence[LabelSource]) -> bool:
    """Pull every configured source into the dataset store; False if any could not be read."""
    from polypseg.data_store import DatasetStore

    store, ok = DatasetStore(dataset), True
    for source in sources:
        try:
            log.info("%s: %s", source.name, source.pull(store))
        except (PolypsegError, OSError) as exc:  # unreachable after retries, refused, unreadable
            log.error("%s not pulled: %s", source.name, exc)
            ok = False
    return ok


def cmd_retrain(args: argparse.Namespace) -> None:
    from polypseg.plugins import load_plugins
    from polypseg.predictors.registry import resolve_device
    from polypseg.retraining import RetrainSettings, parse_interval, retrain_every

    settings = RetrainSettings(
        model_dir=args.model_dir,
        dataset=args.dataset,
        epochs=args.epochs,
        lr=args.lr,
        tolerance=args.tolerance,
        max_steps=args.max_steps,
        device=resolve_device(args.device),
        force=args.force,
    )
    every = parse_interval(args.every) if args.every else None
    # The platforms' sources, their settings checked once: a schedule would trip over them every round.
    sources = [source for kind in load_plugins().source_kinds.values() for source in kind.sources(args)]
    retrain_every(settings, every, lambda: _pull(args.dataset, sources), args.train_anyway)


def cmd_models(args: argparse.Namespace) -> None:
    from polypseg.model_store import ModelStore

    store = ModelStore(args.model_dir)
    if args.action == "list":
        current = store.current()
        versions = store.list_versions()
        if not versions:
            log.info(
                "no model versions in %s (looked in %s); `polypseg retrain --model-dir %s ...` makes "
                "them, and until then the backend serves the shipped model",
                store.root.resolve(),
                store.versions.resolve(),
                args.model_dir,
            )
        for version in versions:
            mark = "*" if current and version.id == current.id else " "
            print(f"{mark} {version.id}  {json.dumps(version.metrics)}  {version.info.get('note', '')}")
    elif args.action == "promote":
        if not args.version:
            raise PolypsegError("models promote needs a version id (see models list)")
        log.info("current: %s", store.promote(args.version, "promoted by hand").id)
    else:
        log.info("current: %s", store.rollback().id)


def _add_sam2_finetune_options(
    parser: argparse.ArgumentParser, image_size: int, batch_size: int, train: str
) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints, log and curves")
    parser.add_argument(
        "--checkpoint", type=Path, help="start: official sam2.1_hiera_*.pt or a polypseg SAM2 file"
    )
    parser.add_argument(
        "--size", default="t", help="hiera size (t, s, b+, l) of a random start without --checkpoint"
    )
    parser.add_argument(
        "--image-size", type=int, default=image_size, help="model input size (a multiple of 64)"
    )
    parser.add_argument("--train", default=train, help="parts that learn, comma-separated")
    parser.add_argument("--loss", choices=("focal", "bce"), default="focal", help="pixel loss beside Dice")
    parser.add_argument(
        "--lr", type=float, default=5e-5, help="learning rate of the decoder and prompt encoder"
    )
    parser.add_argument("--encoder-lr", type=float, default=5e-6, help="learning rate of the image encoder")
    parser.add_argument("--warmup-steps", type=int, default=50)
    _add_loop_options(parser, epochs=10, batch_size=batch_size, limit="images or sequences")


def _add_loop_options(parser: argparse.ArgumentParser, epochs: int, batch_size: int, limit: str) -> None:
    """The flags of the training loop every trainer shares (polypseg.training.common)."""
    parser.add_argument("--epochs", type=positive_int, default=epochs)
    parser.add_argument("--batch-size", type=positive_int, default=batch_size)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--accumulate", type=positive_int, default=1, help="batches per optimiser step")
    parser.add_argument("--workers", type=int, default=1, help="data loader processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    parser.add_argument("--limit", type=int, help=f"train on the first N {limit} only")
    parser.add_argument(
        "--save-every", type=positive_int, default=100, help="steps between resumable snapshots"
    )
    parser.add_argument("--device", help=DEVICE_HELP)


def _add_reacquire_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-reacquire",
        action="store_true",
        help="classical tracker: do not look for a lost polyp with the detector",
    )
    parser.add_argument("--detector", type=Path, help="detector checkpoint (default: the shipped one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polypseg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment the polyp in one image from a box and/or clicks")
    segment.add_argument("image", type=Path)
    segment.add_argument("--box", help="X1,Y1,X2,Y2 in pixels")
    segment.add_argument(
        "--point",
        action="append",
        default=[],
        help="X,Y or X,Y,LABEL (1 polyp, 0 background); repeat for more clicks",
    )
    segment.add_argument("--out", type=Path, required=True, help="mask PNG to write")
    segment.add_argument("--overlay", type=Path, help="also write the image with the mask drawn on it")
    _add_model_options(segment)
    segment.set_defaults(run=cmd_segment)

    evaluate = commands.add_parser("evaluate", help="score a model on image/mask folders, one box per polyp")
    evaluate.add_argument("--images", type=Path, required=True)
    evaluate.add_argument("--masks", type=Path, required=True)
    evaluate.add_argument(
        "--boxes", type=Path, help="bboxes.json (Kvasir-SEG form); default: boxes of the mask's components"
    )
    evaluate.add_argument("--names", type=Path, help="only the images named in this file (one name a line)")
    evaluate.add_argument("--limit", type=int, help="only the first N images")
    evaluate.add_argument(
        "--box-noise",
        type=float,
        default=0.0,
        help="move each box side by up to this fraction of the box size",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the box noise")
    evaluate.add_argument("--json", type=Path, help="write the scores, per image too, as JSON")
    evaluate.add_argument(
        "--shift",
        help="score under named corruptions too (comma-separated, or all): " + ", ".join(_shift_names()),
    )
    evaluate.add_argument(
        "--report", type=Path, help="write a Markdown table, per-image CSV and worst cases PNG here"
    )
    evaluate.add_argument(
        "--clicks",
        type=click_count,
        help="the interactive protocol: after the box, N (0-20) simulated correction clicks; "
        "reports IoU after each, NoC@85 and NoC@90",
    )
    _add_model_options(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)

    detect = commands.add_parser("detect", help="find polyps without a prompt (and outline them)")
    detect.add_argument("inputs", nargs="*", type=Path, help="images or folders of images")
    detect.add_argument("--video", type=Path, help="a video file or folder of numbered frames: every frame")
    detect.add_argument("--json", type=Path, required=True, help="where to write the boxes and scores")
    detect.add_argument(
        "--min-score", type=_min_score, help="least detection score (default: the detector's)"
    )
    detect.add_argument("--masks", type=Path, help="write each frame's refined polyp mask (PNG) here")
    detect.add_argument(
        "--overlay", type=Path, help="write each frame with boxes and masks drawn (JPEG) here"
    )
    detect.add_argument("--detector", type=Path, help="detector checkpoint (default: the shipped one)")
    _add_model_options(detect)
    detect.set_defaults(run=cmd_detect)

    detection_eval = commands.add_parser(
        "evaluate-detection", help="score the detector (and its refined masks) on image/mask folders"
    )
    detection_eval.add_argument("--images", type=Path, required=True)
    detection_eval.add_argument("--masks", type=Path, required=True)
    detection_eval.add_argument(
        "--boxes", type=Path, help="bboxes.json; default: boxes of the mask's components"
    )
    detection_eval.add_argument("--names", type=Path, help="only the images named in this file")
    detection_eval.add_argument("--limit", type=int, help="only the first N images")
    detection_eval.add_argument("--min-score", type=_min_score, help="score floor (default: the detector's)")
    detection_eval.add_argument("--json", type=Path, help="write the scores, per image too, as JSON")
    detection_eval.add_argument(
        "--detector", type=Path, help="detector checkpoint (default: the shipped one)"
    )
    _add_model_options(detection_eval)
    detection_eval.set_defaults(run=cmd_evaluate_detection)

    rank = commands.add_parser("rank", help="order unlabelled images by the detector's uncertainty")
    rank.add_argument("inputs", nargs="+", type=Path, help="images or folders of images")
    rank.add_argument("--json", type=Path, help="write the ranking as JSON")
    rank.add_argument("--detector", type=Path, help="detector checkpoint (default: the shipped one)")
    rank.add_argument("--device", help=DEVICE_HELP)
    rank.set_defaults(run=cmd_rank)

    track = commands.add_parser(
        "track", help="propagate a polyp mask through a video from one prompted frame"
    )
    track.add_argument("video", type=Path, help="a video file (mp4, avi, ...) or a folder of numbered frames")
    track.add_argument("--frame", type=int, required=True, help="the frame (0-based) the prompt is on")
    track.add_argument("--box", help="X1,Y1,X2,Y2 in pixels on that frame")
    track.add_argument("--point", action="append", default=[], help="X,Y[,LABEL] click on that frame")
    track.add_argument(
        "--tracker",
        choices=("classical", "sam2"),
        default="classical",
        help="classical: box tracker + the image model (CPU default); sam2: SAM2 memory",
    )
    _add_reacquire_options(track)
    track.add_argument(
        "--correct",
        action="append",
        default=[],
        metavar="FRAME:X1,Y1,X2,Y2",
        help="a box on a later frame that re-anchors the track there (repeatable)",
    )
    track.add_argument("--direction", choices=("forward", "backward", "both"), default="forward")
    track.add_argument("--max-frames", type=positive_int, help="at most this many frames in each direction")
    track.add_argument("--sam2-size", type=int, help="SAM2 working resolution (multiple of 64; default 1024)")
    track.add_argument(
        "--out", type=Path, required=True, help="folder for mask_NNNNNN.png files and track.json"
    )
    track.add_argument("--overlay", type=Path, help="also write an mp4 with the masks drawn on the frames")
    _add_model_options(track)
    track.set_defaults(run=cmd_track)

    sequences = commands.add_parser("make-sequences", help="make videos with true masks from stills")
    sequences.add_argument("--images", type=Path, required=True)
    sequences.add_argument("--masks", type=Path, required=True)
    sequences.add_argument("--names", type=Path, help="only the images named in this file")
    sequences.add_argument(
        "--count", type=positive_int, default=20, help="number of sequences (one still each)"
    )
    sequences.add_argument("--length", type=positive_int, default=30, help="frames per sequence")
    sequences.add_argument("--seed", type=int, default=0)
    sequences.add_argument("--out", type=Path, required=True)
    sequences.set_defaults(run=cmd_make_sequences)

    video_eval = commands.add_parser(
        "evaluate-video", help="score a tracker over time on sequences with masks"
    )
    video_eval.add_argument("sequences", type=Path, help="folder of sequences, each with frames/ and masks/")
    video_eval.add_argument("--tracker", choices=("classical", "sam2"), default="classical")
    _add_reacquire_options(video_eval)
    video_eval.add_argument("--sam2-size", type=int, help="SAM2 working resolution (multiple of 64)")
    video_eval.add_argument("--plot", type=Path, help="write the IoU-over-time plot (PNG) here")
    video_eval.add_argument("--json", type=Path, help="write the scores, per sequence and frame too, as JSON")
    _add_model_options(video_eval)
    video_eval.set_defaults(run=cmd_evaluate_video)

    train = commands.add_parser("train", help="train a model").add_subparsers(dest="trainer", required=True)
    for trainer, help_text, run in (
        ("unet", "train a box-prompted U-Net / U-Net++", cmd_train_unet),
        (
            "click-unet",
            "train the click-guided U-Net (box, clicks and its previous mask)",
            cmd_train_click_unet,
        ),
    ):
        unet = train.add_parser(trainer, help=help_text)
        unet.add_argument("--images", type=Path, required=True)
        unet.add_argument("--masks", type=Path, required=True)
        unet.add_argument("--boxes", type=Path, help="bboxes.json; default: boxes of the mask's components")
        unet.add_argument("--val-list", type=Path, help="names of the validation images, never trained on")
        unet.add_argument("--out", type=Path, required=True, help="folder for checkpoints, log and curves")
        unet.add_argument("--model", choices=("unet", "unetplusplus"), default="unet")
        unet.add_argument("--encoder", default="resnet18", help="any segmentation-models-pytorch encoder")
        unet.add_argument(
            "--encoder-weights", help="pretrained encoder weights (e.g. imagenet) where reachable"
        )
        unet.add_argument("--geometry", choices=("crop", "whole"), default="crop")
        unet.add_argument("--size", type=int, default=224, help="network input size (a multiple of 32)")
        unet.add_argument(
            "--margin", type=float, default=0.25, help="crop margin around the box, of its size"
        )
        unet.add_argument(
            "--negative-fraction",
            type=float,
            default=0.1,
            help="share of draws that are boxes without a polyp (empty target)",
        )
        unet.add_argument("--lr", type=float, default=2e-3)
        _add_loop_options(unet, epochs=36, batch_size=8, limit="images")
        unet.add_argument("--init", type=Path, help="start from this checkpoint's weights (fine-tuning)")
        unet.add_argument(
            "--shift-augment",
            type=float,
            default=0.0,
            help="chance per draw of the other-centre degradations of the shift suite (0: off)",
        )
        unet.add_argument(
            "--select",
            choices=("clean", "worst-shift"),
            default="clean",
            help="keep the checkpoint best on clean validation IoU, or on the lower of clean and "
            "worst-shift IoU",
        )
        unet.set_defaults(run=run)
        if trainer == "click-unet":
            unet.add_argument(
                "--click-rounds", type=positive_int, default=3, help="most no-gradient click rounds a batch"
            )
            unet.add_argument(
                "--presence-weight", type=float, default=0.5, help="weight of the presence loss"
            )
            unet.add_argument(
                "--click-weight",
                type=float,
                default=4.0,
                help="extra loss weight of the pixels a click points at",
            )

    detector = train.add_parser("detector", help="train the polyp detector (a whole-frame segmenter)")
    detector.add_argument("--images", type=Path, required=True)
    detector.add_argument("--masks", type=Path, required=True)
    detector.add_argument("--boxes", type=Path, help="bboxes.json; default: boxes of the mask's components")
    detector.add_argument("--val-list", type=Path, help="names of the validation images, never trained on")
    detector.add_argument("--out", type=Path, required=True, help="folder for checkpoints, log and curves")
    detector.add_argument("--model", choices=("unet", "unetplusplus"), default="unet")
    detector.add_argument("--encoder", default="resnet18", help="any segmentation-models-pytorch encoder")
    detector.add_argument("--size", type=int, default=320, help="working size of the whole frame")
    detector.add_argument(
        "--crop-fraction", type=float, default=0.3, help="share of draws cut to a part of the frame"
    )
    detector.add_argument("--lr", type=float, default=1e-3)
    _add_loop_options(detector, epochs=30, batch_size=8, limit="images")
    detector.add_argument(
        "--init", type=Path, help="a detector, or a box U-Net of the same encoder, to start from"
    )
    detector.add_argument(
        "--shift-augment", type=float, default=0.0, help="chance per draw of other-centre degradations"
    )
    detector.set_defaults(run=cmd_train_detector)

    finetune = commands.add_parser("finetune", help="fine-tune SAM2 on polyps").add_subparsers(
        dest="finetuner", required=True
    )
    image_ft = finetune.add_parser("sam2", help="SAM2 on images with box prompts (and correction clicks)")
    image_ft.add_argument("--images", type=Path, required=True)
    image_ft.add_argument("--masks", type=Path, required=True)
    image_ft.add_argument("--boxes", type=Path, help="bboxes.json; default: boxes of the mask's components")
    image_ft.add_argument("--val-list", type=Path, help="names of the validation images, never trained on")
    image_ft.add_argument(
        "--clicks", type=int, default=1, help="correction rounds, one click each, after the box"
    )
    _add_sam2_finetune_options(
        image_ft, image_size=1024, batch_size=4, train="image-encoder,prompt-encoder,mask-decoder"
    )
    image_ft.set_defaults(run=cmd_finetune_sam2)
    video_ft = finetune.add_parser("sam2-video", help="SAM2 on sequences labelled on their last frame")
    video_ft.add_argument(
        "--sequences", type=Path, required=True, help="folder of sequences (docs/training.md)"
    )
    video_ft.add_argument("--val-sequences", type=Path, help="sequences to validate the tracker on")
    video_ft.add_argument(
        "--length", type=int, default=8, help="frames per sequence, first and last included"
    )
    video_ft.add_argument(
        "--loss-frames", choices=("last", "annotated"), default="last", help="frames the loss is computed on"
    )
    video_ft.add_argument("--bptt", type=int, default=4, help="frames of memory gradients flow back through")
    _add_sam2_finetune_options(
        video_ft, image_size=512, batch_size=1, train="image-encoder,prompt-encoder,mask-decoder,memory"
    )
    video_ft.set_defaults(run=cmd_finetune_sam2_video)

    import os

    from polypseg.plugins import load_plugins

    plugins = load_plugins()  # what the installed platforms add to retrain and serve
    retrain_cmd = commands.add_parser("retrain", help="pull new labels, retrain, promote if not worse")
    retrain_cmd.add_argument(
        "--model-dir",
        type=Path,
        default=os.environ.get("MODEL_DIR"),
        required=not os.environ.get("MODEL_DIR"),
    )
    retrain_cmd.add_argument(
        "--dataset",
        type=Path,
        default=os.environ.get("POLYPSEG_DATASET"),
        required=not os.environ.get("POLYPSEG_DATASET"),
    )
    for kind in plugins.source_kinds.values():  # --label-studio-project, --cvat-task, ...
        kind.add_arguments(retrain_cmd)
    retrain_cmd.add_argument("--every", help="repeat forever at this interval (30m, 24h, 2d)")
    retrain_cmd.add_argument("--epochs", type=positive_int, default=3)
    retrain_cmd.add_argument("--lr", type=float, default=5e-4)
    retrain_cmd.add_argument("--tolerance", type=float, default=0.01, help="promote if IoU >= current - this")
    retrain_cmd.add_argument("--max-steps", type=int, help="stop training after this many steps")
    retrain_cmd.add_argument("--train-anyway", action="store_true", help="retrain even if a source failed")
    retrain_cmd.add_argument(
        "--force", action="store_true", help="retrain even if no label changed since the last retrain"
    )
    retrain_cmd.add_argument("--device", help=DEVICE_HELP)
    retrain_cmd.set_defaults(run=cmd_retrain)

    models = commands.add_parser(
        "models",
        help="model versions in MODEL_DIR: list, promote, rollback",
        description="The model versions `polypseg retrain` keeps in MODEL_DIR, and which one is served.",
        epilog="list: every version (* marks the current one) with its validation metrics and why it "
        "was or was not promoted. promote VERSION: serve that version. rollback: serve the version "
        "that was current before the current one. A running backend follows within seconds.",
    )
    models.add_argument(
        "action", choices=("list", "promote", "rollback"), help="list | promote VERSION | rollback"
    )
    models.add_argument("version", nargs="?", help="the version to promote (an id from `models list`)")
    models.add_argument(
        "--model-dir",
        type=Path,
        default=os.environ.get("MODEL_DIR"),
        required=not os.environ.get("MODEL_DIR"),
        help="the folder of model versions (default: $MODEL_DIR)",
    )
    models.set_defaults(run=cmd_models)

    serve = commands.add_parser("serve", help="serve a model to an annotation tool").add_subparsers(
        dest="platform", required=True
    )
    for server in plugins.servers.values():  # labelstudio, ...
        serve_cmd = serve.add_parser(server.name, help=server.help)
        _add_model_options(serve_cmd)
        server.add_arguments(serve_cmd)
        serve_cmd.set_defaults(run=server.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    # sam2 scripts its transforms with torch.jit, which torch now warns about on every load.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    try:
        args.run(args)
    except PolypsegError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:  # an output that cannot be written, a disk that is full
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
