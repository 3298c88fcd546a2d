"""`polypseg detect`, `evaluate-detection` and `rank`: the detector's commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from polypseg.atomic import write_json
from polypseg.cli.options import (
    DEVICE_HELP,
    add_detector_option,
    add_model_options,
    known_shifts,
    log,
    min_score,
    names_file,
    positive_int,
)
from polypseg.errors import PolypsegError


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
    predictor = build_predictor(args.model, args.checkpoint, args.device)  # outlines each detection
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
    write_json(args.json, body)
    log.info("wrote %s", args.json)


def cmd_evaluate_detection(args: argparse.Namespace) -> None:
    from polypseg.datasets import load_folder_dataset
    from polypseg.detection_job import build_detector, evaluate_detection
    from polypseg.predictors import build_predictor
    from polypseg.shifts import shift_names

    samples = load_folder_dataset(args.images, args.masks, args.boxes, names_file(args.names))
    if args.limit:
        samples = samples[: args.limit]
    shifts = [None, *shift_names(args.shift)] if args.shift else [None]
    detector = build_detector(args.detector, args.device)
    predictor = build_predictor(args.model, args.checkpoint, args.device)
    print(
        f"{len(samples)} images, detector {detector.version}, refined by {predictor.version}\n\n"
        "| frames | min score | precision@0.5 | recall@0.5 | recall at precision >= 0.85 | AP50 | AP50:95 | "
        "refined mask IoU (all polyps) | ... most / least uncertain quarter |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )
    bodies = {}
    for shift in shifts:
        body = evaluate_detection(detector, predictor, samples, args.min_score, shift=shift).as_dict()
        bodies[shift or "clean"] = body
        print(
            f"| {shift or 'clean'} | {body['min_score']:.3f} | {body['precision@0.5']:.4f} | "
            f"{body['recall@0.5']:.4f} | {body['recall@0.5_at_precision_0.85']:.4f} | "
            f"{body['ap50']:.4f} | {body['ap50_95']:.4f} | "
            f"{body['mean_refined_iou']:.4f} | {body['refined_iou_most_uncertain_quarter']:.4f} / "
            f"{body['refined_iou_least_uncertain_quarter']:.4f} |",
            flush=True,
        )
    if args.json:
        out: dict[str, Any] = dict(bodies["clean"]) if not args.shift else {"shifts": bodies}
        out.update(detector=detector.version, model=predictor.version)
        write_json(args.json, out)
        log.info("wrote %s", args.json)


def _rank_inputs(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """Named images from files and folders, and from platforms' sources (`labelstudio:3`)."""
    from polypseg.detection_job import image_files, named_files
    from polypseg.plugins import load_plugins

    sources = load_plugins().image_sources
    images: list[tuple[str, Any]] = []
    for given in args.inputs:
        scheme, _, which = given.partition(":")
        if which and scheme in sources and not Path(given).exists():
            images += sources[scheme].images(which, args)
        else:
            images += named_files(image_files([Path(given)]))
    return images


def cmd_rank(args: argparse.Namespace) -> None:
    from polypseg.detection_job import build_detector, rank_images

    detector = build_detector(args.detector, args.device)
    ranked, skipped = rank_images(detector, _rank_inputs(args))
    for name, uncertainty in ranked:
        print(f"{uncertainty:.5f}  {name}")
    if skipped:
        log.warning("%d unreadable images skipped", len(skipped))
    if args.json:
        body = {
            "detector": detector.version,
            "uncertainty": detector.uncertainty_measure,
            "ranked": [{"image": name, "uncertainty": u} for name, u in ranked],
            "skipped": skipped,
        }
        write_json(args.json, body)


def register(commands: argparse._SubParsersAction) -> None:
    detect = commands.add_parser("detect", help="find polyps without a prompt and outline them")
    detect.add_argument("inputs", nargs="*", type=Path, help="images or folders of images")
    detect.add_argument("--video", type=Path, help="a video file or folder of numbered frames: every frame")
    detect.add_argument("--json", type=Path, required=True, help="where to write the boxes and scores")
    detect.add_argument("--min-score", type=min_score, help="least detection score (default: the detector's)")
    detect.add_argument("--masks", type=Path, help="write each frame's refined polyp mask (PNG) here")
    detect.add_argument(
        "--overlay", type=Path, help="write each frame with boxes and masks drawn (JPEG) here"
    )
    add_detector_option(detect)
    add_model_options(detect)
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
    detection_eval.add_argument("--limit", type=positive_int, help="only the first N images")
    detection_eval.add_argument("--min-score", type=min_score, help="score floor (default: the detector's)")
    detection_eval.add_argument("--json", type=Path, help="write the scores, per image too, as JSON")
    detection_eval.add_argument(
        "--shift",
        help="also under named other-centre shifts (comma-separated, or all): " + ", ".join(known_shifts()),
    )
    add_detector_option(detection_eval)
    add_model_options(detection_eval)
    detection_eval.set_defaults(run=cmd_evaluate_detection)

    from polypseg.plugins import load_plugins

    sources = load_plugins().image_sources
    rank = commands.add_parser("rank", help="order unlabelled images by the detector's uncertainty")
    rank.add_argument(
        "inputs",
        nargs="+",
        help="images or folders of images" + "".join(f", or {s.name}:{s.help}" for s in sources.values()),
    )
    rank.add_argument("--json", type=Path, help="write the ranking as JSON")
    add_detector_option(rank)
    rank.add_argument("--device", help=DEVICE_HELP)
    for source in sources.values():
        source.add_arguments(rank)
    rank.set_defaults(run=cmd_rank)
