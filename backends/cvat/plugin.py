"""CVAT plugged into the core (entry point `polypseg.plugins`): `polypseg retrain` pulls CVAT
exports (--cvat-archive) and tasks exported through cvat-sdk (--cvat-url, --cvat-task)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from polypseg.errors import PolypsegError
from polypseg.label_sources import LabelSource
from polypseg.plugins import Plugins, SourceKind


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("CVAT")
    group.add_argument(
        "--cvat-archive", type=Path, action="append", default=[], help="a CVAT export (task, job, project)"
    )
    group.add_argument("--cvat-url", default=os.environ.get("CVAT_URL"), help="default: $CVAT_URL")
    group.add_argument(
        "--cvat-task",
        type=int,
        action="append",
        default=[],
        help="pull this CVAT task through cvat-sdk ($CVAT_ACCESS_TOKEN or $CVAT_USERNAME, $CVAT_PASSWORD)",
    )


def _sources(args: argparse.Namespace) -> list[LabelSource]:
    from backends.cvat.export import CvatArchive, CvatServerExport, cvat_credentials_from_env

    sources: list[LabelSource] = [CvatArchive(path) for path in args.cvat_archive]
    if args.cvat_task:  # settings a schedule would trip over every round: refused before the first
        if not args.cvat_url:
            raise PolypsegError("--cvat-url (or CVAT_URL) is needed to pull CVAT tasks")
        token, credentials = cvat_credentials_from_env()
        sources += [
            CvatServerExport(args.cvat_url, "task", task, token, credentials) for task in args.cvat_task
        ]
    return sources


def register(plugins: Plugins) -> None:
    plugins.add_source_kind(SourceKind("cvat", _add_source_arguments, _sources))
