"""Label Studio plugged into the core (entry point `polypseg.plugins`): `polypseg retrain`
pulls projects (--label-studio-url, --api-key, --label-studio-project), and `polypseg serve
labelstudio` runs the ML backend. Imports stay light: the backend loads only when run."""

from __future__ import annotations

import argparse
import os

from polypseg.errors import PolypsegError
from polypseg.label_sources import LabelSource
from polypseg.plugins import Plugins, Server, SourceKind


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Label Studio")
    group.add_argument("--label-studio-url", default=os.environ.get("LABEL_STUDIO_URL"))
    group.add_argument(
        "--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="default: $LABEL_STUDIO_API_KEY"
    )
    group.add_argument("--label-studio-project", type=int, help="pull this project's labelled images")


def _sources(args: argparse.Namespace) -> list[LabelSource]:
    if args.label_studio_project is None:
        return []
    if not args.label_studio_url:
        raise PolypsegError("--label-studio-url (or LABEL_STUDIO_URL) is needed to pull a project")
    from backends.labelstudio.export import LabelStudioProject

    return [LabelStudioProject(args.label_studio_url, args.api_key or "", args.label_studio_project)]


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: all)")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--workers", type=int, default=1, help="processes, each with its own model")
    parser.add_argument("--threads", type=int, help="requests served at once per process (default 4)")


def _serve(args: argparse.Namespace) -> None:
    # The flags become the environment the backend reads, so that every worker process sees them.
    for flag, variable in (
        ("model", "POLYPSEG_MODEL"),
        ("checkpoint", "POLYPSEG_CHECKPOINT"),
        ("device", "DEVICE"),
        ("threads", "POLYPSEG_THREADS"),
    ):
        if getattr(args, flag) is not None:
            os.environ[variable] = str(getattr(args, flag))
    from backends.labelstudio.server import serve

    serve(args.host, args.port, args.workers)


def register(plugins: Plugins) -> None:
    plugins.add_source_kind(SourceKind("labelstudio", _add_source_arguments, _sources))
    plugins.add_server(
        Server(
            "labelstudio",
            "the Label Studio ML backend (settings from LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, ...)",
            _add_server_arguments,
            _serve,
        )
    )
