"""`polypseg evaluate`: a model on image/mask folders, the box protocol, clicks and shifts."""

from __future__ import annotations

import argparse
from pathlib import Path

from polypseg.atomic import write_atomic, write_json
from polypseg.cli.options import (
    add_model_options,
    click_count,
    known_shifts,
    log,
    names_file,
    number_in,
    positive_int,
)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from polypseg.datasets import load_folder_dataset
    from polypseg.evaluation import ellipse_baseline, evaluate
    from polypseg.predictors import build_predictor
    from polypseg.reports import print_table, write_report

    samples = load_folder_dataset(args.images, args.masks, args.boxes, names_file(args.names))
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
        {predictor.version: predictor.segmenter(), "ellipse in box": ellipse_baseline},
        samples,
        box_noise=args.box_noise,
        seed=args.seed,
    )
    print_table(results, title=f"{len(samples)} images, box noise {args.box_noise:g}")
    if args.json:
        body = results[predictor.version].as_dict()
        body.update(
            model=predictor.version,
            box_noise=args.box_noise,
            baseline=results["ellipse in box"].as_dict() | {"per_image": None},
        )
        write_json(args.json, body)
        log.info("wrote %s", args.json)
    if args.report:
        write_report(args.report, results, predictor.version, samples, predictor, args.box_noise, args.seed)
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
        names = shift_names(args.shift)
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
        write_json(args.json, body)
        log.info("wrote %s", args.json)
    if args.report:
        write_atomic(args.report / "clicks.md", (table + "\n").encode())
        plot_click_curves(curves, args.report / "clicks.png", title)
        log.info("report -> %s", args.report)


def _evaluate_shifts(args: argparse.Namespace, samples: list, predictor) -> None:  # type: ignore[type-arg,no-untyped-def]
    """The model and the ellipse baseline on the clean images and under each named shift."""
    from polypseg.evaluation import evaluate_shifts, shift_table
    from polypseg.shifts import shift_names

    names = shift_names(args.shift)
    rows = evaluate_shifts(predictor, samples, names, args.box_noise, args.seed)
    table = shift_table(
        rows, f"{len(samples)} images, box noise {args.box_noise:g}, model {predictor.version}"
    )
    print(table)
    if args.json:
        body = {
            "model": predictor.version,
            "box_noise": args.box_noise,
            "shifts": [r.as_dict() for r in rows],
        }
        write_json(args.json, body)
        log.info("wrote %s", args.json)
    if args.report:
        write_atomic(args.report / "shifts.md", (table + "\n").encode())
        log.info("report -> %s", args.report / "shifts.md")


def register(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser("evaluate", help="score a model on image/mask folders, one box per polyp")
    evaluate.add_argument("--images", type=Path, required=True)
    evaluate.add_argument("--masks", type=Path, required=True)
    evaluate.add_argument(
        "--boxes", type=Path, help="bboxes.json (Kvasir-SEG form); default: boxes of the mask's components"
    )
    evaluate.add_argument("--names", type=Path, help="only the images named in this file (one name a line)")
    evaluate.add_argument("--limit", type=positive_int, help="only the first N images")
    evaluate.add_argument(
        "--box-noise",
        type=number_in(0, 1),
        default=0.0,
        help="move each box side by up to this fraction of the box size",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the box noise")
    evaluate.add_argument("--json", type=Path, help="write the scores, per image too, as JSON")
    evaluate.add_argument(
        "--shift",
        help="score under named corruptions too (comma-separated, or all): " + ", ".join(known_shifts()),
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
    add_model_options(evaluate)
    evaluate.set_defaults(run=cmd_evaluate)
