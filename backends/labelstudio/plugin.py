"""Label Studio plugged into the core (entry point `polypseg.plugins`): `polypseg retrain`
pulls projects (--label-studio-url, --api-key, --label-studio-project), `polypseg serve
labelstudio` runs the ML backend, and `polypseg video-tasks` / `export-video-masks` turn a
video into clip tasks and submitted clips into per-frame masks. Imports stay light: the
backend and the commands load only when run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from polypseg.errors import PolypsegError
from polypseg.label_sources import LabelSource
from polypseg.plugins import Command, ImageSource, NamedImage, Plugins, Server, SourceKind


def _add_connection_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("Label Studio")
    group.add_argument(
        "--label-studio-url", default=os.environ.get("LABEL_STUDIO_URL"), help="default: $LABEL_STUDIO_URL"
    )
    group.add_argument(
        "--api-key", default=os.environ.get("LABEL_STUDIO_API_KEY"), help="default: $LABEL_STUDIO_API_KEY"
    )
    return group


def _add_rank_arguments(parser: argparse.ArgumentParser) -> None:
    _add_connection_arguments(parser)


def _add_source_arguments(parser: argparse.ArgumentParser) -> None:
    group = _add_connection_arguments(parser)
    group.add_argument("--label-studio-project", type=int, help="pull this project's labelled images")


def _unlabelled(which: str, args: argparse.Namespace) -> list[NamedImage]:
    """`polypseg rank labelstudio:P`: project P's image tasks without an annotation."""
    if not which.isdigit():
        raise PolypsegError(f"labelstudio:{which}: name the project by its number (labelstudio:3)")
    if not args.label_studio_url:
        raise PolypsegError("--label-studio-url (or LABEL_STUDIO_URL) is needed to rank a project")
    from backends.labelstudio.export import LabelStudioProject, unlabelled_images

    return unlabelled_images(LabelStudioProject(args.label_studio_url, args.api_key or "", int(which)))


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
    # Every setting is read and checked before the server's libraries and the model load (half
    # the start-up), so that a bad one ends the command at once with its reason.
    from backends.labelstudio.concurrency import for_worker_processes
    from backends.labelstudio.settings import Settings

    for_worker_processes(args.workers)  # as serve() does
    Settings.from_env()
    from backends.labelstudio.server import serve

    serve(args.host, args.port, args.workers)


def _add_video_tasks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="the video file (mp4, avi, ...)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the frames and the tasks JSON")
    parser.add_argument("--clip-frames", type=int, default=30, help="frames per clip task (default 30)")
    parser.add_argument("--stride", type=int, default=1, help="take every n-th frame (default 1: all)")
    parser.add_argument(
        "--files-root",
        type=Path,
        default=Path(os.environ.get("LOCAL_FILES_DOCUMENT_ROOT", "/")),
        help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT (default $LOCAL_FILES_DOCUMENT_ROOT or /)",
    )
    parser.add_argument("--frames-url", help="serve the frames from this URL prefix instead of local files")


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    _add_source_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder for the sequence folders")


def _video_tasks(args: argparse.Namespace) -> None:
    from backends.labelstudio.clips import video_tasks

    video_tasks(args.video, args.out, args.clip_frames, args.stride, args.files_root, args.frames_url)


def _export_video_masks(args: argparse.Namespace) -> None:
    if args.label_studio_project is None:
        raise PolypsegError("--label-studio-project is needed: the clip project to export")
    if not args.label_studio_url:
        raise PolypsegError("--label-studio-url (or LABEL_STUDIO_URL) is needed")
    from backends.labelstudio.clips import export_video_masks
    from backends.labelstudio.export import LabelStudioProject

    project = LabelStudioProject(args.label_studio_url, args.api_key or "", args.label_studio_project)
    export_video_masks(project, args.out)


def register(plugins: Plugins) -> None:
    plugins.add_image_source(
        ImageSource(
            "labelstudio",
            "P (project P's tasks without an annotation)",
            _add_rank_arguments,
            _unlabelled,
        )
    )
    plugins.add_source_kind(SourceKind("labelstudio", _add_source_arguments, _sources))
    plugins.add_server(
        Server(
            "labelstudio",
            "the Label Studio ML backend (settings from LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY, ...)",
            _add_server_arguments,
            _serve,
        )
    )
    plugins.add_command(
        Command(
            "video-tasks",
            "cut a video into Label Studio clip tasks (paged frames, masks on every frame)",
            _add_video_tasks_arguments,
            _video_tasks,
        )
    )
    plugins.add_command(
        Command(
            "export-video-masks",
            "write a Label Studio clip project's submitted masks as per-frame PNGs (sequence folders)",
            _add_export_arguments,
            _export_video_masks,
        )
    )
