"""`polypseg track`, `make-sequences` and `evaluate-video`: polyps through videos."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from polypseg.cli.options import (
    add_model_options,
    add_reacquire_options,
    log,
    names_file,
    positive_int,
    prompt_from_args,
    sam2_size,
)
from polypseg.errors import PromptError

if TYPE_CHECKING:
    from polypseg.prompts import Prompt
    from polypseg.video.tracking import VideoTracker


def cmd_track(args: argparse.Namespace) -> None:
    from polypseg.video.frames import open_frames
    from polypseg.video.tracking_job import track_video, write_overlay

    source = open_frames(args.video)
    prompt = prompt_from_args(args)
    corrections = dict(_correction(text) for text in args.correct)
    if args.frame in corrections:
        raise PromptError(f"--correct on the start frame {args.frame}: give that box as --box")
    # Refuse a bad prompt before loading a model or making --out.
    source.check_frame(args.frame, "--frame")
    for frame in corrections:
        source.check_frame(frame, "--correct frame")
    for correction in (prompt, *corrections.values()):
        correction.fitted_to(source.info.width, source.info.height)
    tracker = build_tracker_from_args(args)
    results = track_video(
        source, tracker, args.frame, prompt, args.out, args.direction, args.max_frames, corrections
    )
    lost = sum(r.lost for r in results)
    log.info("%d frames tracked, %d of them lost; masks and track.json in %s", len(results), lost, args.out)
    if args.overlay:
        write_overlay(source, results, args.out, args.overlay)
        log.info("overlay -> %s", args.overlay)


def _correction(text: str) -> tuple[int, Prompt]:
    """A --correct flag, "FRAME:X1,Y1,X2,Y2": a box that re-anchors the track on that frame."""
    from polypseg.prompts import Box, Prompt

    frame, separator, box = text.partition(":")
    if not separator or not frame.strip().isdigit():
        raise PromptError(f"correction {text!r} is not FRAME:X1,Y1,X2,Y2")
    return int(frame), Prompt(box=Box.parse(box))


def build_tracker_from_args(args: argparse.Namespace) -> VideoTracker:
    """The --tracker of --model / --checkpoint (SAM2 at --sam2-size where given)."""
    from polypseg.predictors import build_predictor
    from polypseg.video.tracking_job import build_tracker

    options = {"image_size": args.sam2_size} if args.sam2_size else {}
    predictor = build_predictor(args.model, args.checkpoint, args.device, **options)
    detector = None
    if args.tracker == "classical" and args.reacquire:
        from polypseg.detection_job import build_detector

        detector = build_detector(args.detector, args.device)
    return build_tracker(args.tracker, predictor, detector)


def cmd_make_sequences(args: argparse.Namespace) -> None:
    from polypseg.datasets import load_folder_dataset
    from polypseg.video.synthetic import write_sequences

    samples = load_folder_dataset(args.images, args.masks, None, names_file(args.names))[: args.count]
    folders = write_sequences(samples, args.out, args.length, args.seed)
    log.info("%d sequences of %d frames in %s", len(folders), args.length, args.out)


def cmd_evaluate_video(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from polypseg.atomic import write_json
    from polypseg.video.evaluation import evaluate_sequence, plot_iou_over_time, sequence_folders, summarise

    folders = sequence_folders(args.sequences)
    tracker = build_tracker_from_args(args)
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
        write_json(args.json, body)
        log.info("wrote %s", args.json)
    if args.plot:
        plot_iou_over_time(results, args.plot)
        log.info("IoU over time -> %s", args.plot)


def register(commands: argparse._SubParsersAction) -> None:
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
    add_reacquire_options(track)
    track.add_argument(
        "--correct",
        action="append",
        default=[],
        metavar="FRAME:X1,Y1,X2,Y2",
        help="a box on a later frame that re-anchors the track there (repeatable)",
    )
    track.add_argument("--direction", choices=("forward", "backward", "both"), default="forward")
    track.add_argument("--max-frames", type=positive_int, help="at most this many frames in each direction")
    track.add_argument(
        "--sam2-size", type=sam2_size, help="SAM2 working resolution (multiple of 64; default 1024)"
    )
    track.add_argument(
        "--out", type=Path, required=True, help="folder for mask_NNNNNN.png files and track.json"
    )
    track.add_argument("--overlay", type=Path, help="also write an mp4 with the masks drawn on the frames")
    add_model_options(track)
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
    add_reacquire_options(video_eval)
    video_eval.add_argument("--sam2-size", type=sam2_size, help="SAM2 working resolution (multiple of 64)")
    video_eval.add_argument("--plot", type=Path, help="write the IoU-over-time plot (PNG) here")
    video_eval.add_argument("--json", type=Path, help="write the scores, per sequence and frame too, as JSON")
    add_model_options(video_eval)
    video_eval.set_defaults(run=cmd_evaluate_video)
