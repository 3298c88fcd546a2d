"""`polypseg retrain` and `models`: new labels in, a better model out, versions kept."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from polypseg.cli.options import DEVICE_HELP, log
from polypseg.errors import PolypsegError
from polypseg.training.config import number_in, positive_int

if TYPE_CHECKING:
    from polypseg.label_sources import LabelSource


def _pull(dataset: Path, sources: Sequence[LabelSource]) -> bool:
    """Pull every configured source into the dataset store; False if any could not be read.
    Called by `retrain` under the store's lock, so the store is read afresh here, inside it."""
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
    # The pull happens inside retrain, under its locks: a request that finds a retrain running
    # only records itself, and the running one pulls again for it.
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


def register(commands: argparse._SubParsersAction) -> None:
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
    retrain_cmd.add_argument("--lr", type=number_in(0, low_excluded=True), default=5e-4)
    retrain_cmd.add_argument(
        "--tolerance",
        type=number_in(0, 1),
        default=0.0,
        help="promote if IoU >= current - this (default 0: only a model that is not worse; a "
        "positive value lets repeated rounds drift down)",
    )
    retrain_cmd.add_argument("--max-steps", type=positive_int, help="stop training after this many steps")
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
