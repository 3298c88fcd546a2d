"""Assisted annotation in one command: Label Studio (its own SQLite database in DATA_DIR), the
polypseg backend connected to it, and a project of the polyp images in a folder.

    python -m backends.labelstudio.quickstart --images FOLDER
    python -m backends.labelstudio.quickstart --video FILE

prints the URL and the login, and runs until Ctrl-C. A video is cut into clip tasks of 30 frames
(`polypseg video-tasks`, frames in DATA_DIR/clips) in a project of its own ("TITLE video"): a
box on one frame gives the polyp's mask on every frame of the clip. Run again, it reuses the same database,
project and tasks; run with another folder, that folder's images join the project as a second
local-files storage (every folder stays served: Label Studio's local-files root is `/`, and it
serves only files inside a storage's folder). A second run on the same DATA_DIR while one is
running is refused, naming the running one, and so is a run whose ports are taken: Label Studio
would silently move to another port and the readiness check would see someone else's server.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from backends.labelstudio import launcher
from polypseg.atomic import write_atomic

ROOT = Path(__file__).resolve().parent.parent.parent
# Label Studio's default; a fixed root keeps every folder's task URLs (`?d=` paths relative to
# it) valid whichever folders are added later.
FILES_ROOT = Path("/")
log = logging.getLogger("polypseg.quickstart")


class AlreadyRunning(RuntimeError):
    """Another quickstart holds DATA_DIR, or another program holds a port."""


class DamagedLogin(RuntimeError):
    """DATA_DIR's saved login cannot be read."""


@contextmanager
def _only_instance(data_dir: Path) -> Iterator[Path]:
    """Hold DATA_DIR for this run (a lock the system drops when the process ends, however it
    ends); the lock file says who holds it, for the refusal of a second run."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "polypseg-quickstart.lock"
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                running = json.loads(handle.read())
                where = f"{running['url']} (process {running['pid']})"
            except (ValueError, KeyError, TypeError):
                where = "(starting up)"
            raise AlreadyRunning(
                f"Label Studio on {data_dir} is already running: {where}. Use that one, or stop it "
                "(Ctrl-C in its terminal) before starting again; nothing was started."
            ) from None
        try:
            yield path
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _claim(lock: Path, url: str) -> None:
    lock.write_text(json.dumps({"pid": os.getpid(), "url": url}))


def _check_port_free(port: int, what: str, flag: str) -> None:
    """Refuse a port some server answers on (as Label Studio itself tests it before moving on to
    the next port; a port left in TIME_WAIT by a run just stopped is free)."""
    with socket.socket() as probe:
        probe.settimeout(2)
        taken = probe.connect_ex(("127.0.0.1", port)) == 0
    if taken:
        raise AlreadyRunning(
            f"port {port} ({what}) is already in use by another program; stop it, or choose "
            f"another port ({flag}); nothing was started."
        )


def _note_files_root(data_dir: Path) -> None:
    """Record the local-files root; warn about a database made before it was fixed at `/`
    (the quickstart then used the folder's parent, and its tasks' URLs are relative to that)."""
    record = data_dir / "polypseg-files-root.txt"
    if (data_dir / "label_studio.sqlite3").is_file() and not record.is_file():
        log.warning(
            "%s was made by an earlier polypseg, whose image URLs were relative to the image "
            "folder's parent: those tasks' images no longer load. Start with a fresh --data-dir "
            "(or delete this one) to import them again.",
            data_dir,
        )
    record.write_text(f"{FILES_ROOT}\n")


def backend_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What this project's backend runs with where the user's environment does not say: the
    detector looks at each frame and its mirror image (POLYPSEG_TTA=detector). Pre-annotating
    a project is where the detector matters most and its time least: on the validation split it
    finds 0.904 of the polyps at precision 0.862 against 0.894 at 0.853, and more polyps with
    better outlines under 14 of the 15 shift rows (docs/models.md), for about 1.2x the time of
    a pre-annotated frame; the boxes and clicks an annotator draws do not use it."""
    return {"POLYPSEG_TTA": (os.environ if environ is None else environ).get("POLYPSEG_TTA", "detector")}


def _login(data_dir: Path, username: str) -> launcher.Login:
    """The admin login, made once and kept in DATA_DIR (Label Studio keeps the user from the
    first start)."""
    saved = data_dir / "polypseg-login.txt"
    if saved.is_file():
        try:
            password, token = saved.read_text().split()
        except ValueError:
            raise DamagedLogin(
                f"{saved}: not the two lines polypseg saved there (the admin's password, then the API"
                " token Label Studio was started with); write them back, or start with a fresh --data-dir"
            ) from None
    else:
        password, token = secrets.token_urlsafe(12), secrets.token_hex(20)
        # whole or not at all, and private from the first byte
        write_atomic(saved, f"{password}\n{token}\n".encode(), mode=0o600)
    return launcher.Login(username, password, token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quickstart", description=__doc__.splitlines()[0])
    media = parser.add_mutually_exclusive_group(required=True)
    media.add_argument("--images", type=Path, help="folder of polyp images")
    media.add_argument("--video", type=Path, help="a colonoscopy video, cut into clip tasks")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".labelstudio", help="Label Studio's data")
    parser.add_argument(
        "--label-studio", type=Path, default=ROOT / ".venv-labelstudio" / "bin" / "label-studio"
    )
    parser.add_argument("--port", type=int, default=8080, help="Label Studio's port")
    parser.add_argument("--backend-port", type=int, default=9090)
    parser.add_argument("--username", default="annotator@polypseg.local")
    parser.add_argument("--title", default="Polyps", help="the project the folder's images join")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # label-studio-sdk's request log

    if args.video is not None and not args.video.is_file():
        log.error("%s: no such video file", args.video)
        return 2
    if args.images is not None and not args.images.is_dir():
        log.error("%s: no such folder of images", args.images)
        return 2
    url = f"http://127.0.0.1:{args.port}"
    try:
        with _only_instance(args.data_dir) as lock:
            _check_port_free(args.port, "Label Studio", "make annotate PORT=..., or --port")
            _check_port_free(
                args.backend_port, "the backend", "make annotate BACKEND_PORT=..., or --backend-port"
            )
            _claim(lock, url)
            _note_files_root(args.data_dir)
            return _run(args, url)
    except (AlreadyRunning, DamagedLogin) as exc:
        log.error("%s", exc)
        return 1


def _add_video(ls: Any, args: argparse.Namespace) -> tuple[int, int]:
    """The video's clip tasks in the project "TITLE video" (cut and imported once); the
    project's id and task count."""
    from backends.labelstudio.clips import video_tasks

    config = (launcher.CONFIGS / "polyp-video-masks.xml").read_text()
    project = launcher.polyp_project(ls, f"{args.title} video", config, preannotate=True)
    clips = (args.data_dir / "clips").resolve()
    log.info("cutting %s into clips of 30 frames ...", args.video)
    tasks = json.loads(video_tasks(args.video.resolve(), clips, files_root=FILES_ROOT).read_text())
    return project, launcher.add_clip_tasks(ls, project, clips, tasks)


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, url: str) -> int:
    # SIGTERM (a service manager, `kill`) is Ctrl-C: it stops both servers, also while they
    # start and the moment "ready" is printed. Ctrl-C stops them even when started from a shell
    # that ignores SIGINT (a background job), which Python would otherwise keep ignoring.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    login = _login(args.data_dir, args.username)
    log.info("starting Label Studio on %s (first start: about a minute) ...", url)
    processes: list[Any] = []
    ready = False
    try:  # whatever ends this, both servers stop with it
        processes.append(
            launcher.start_label_studio(
                args.label_studio, args.data_dir, args.port, login, files_root=FILES_ROOT
            )
        )
        log.info("starting the polypseg backend on port %d ...", args.backend_port)
        processes.append(
            launcher.start_backend(
                args.backend_port, url, login.token, args.data_dir / "backend.log", backend_settings()
            )
        )
        ls = launcher.client(url, login.token)
        if args.video is not None:
            project, tasks = _add_video(ls, args)
            what = "clips"
        else:
            config = (launcher.CONFIGS / "polyp-image.xml").read_text()
            project = launcher.polyp_project(ls, args.title, config, preannotate=True)
            tasks = launcher.add_image_folder(ls, project, args.images.resolve())
            what = "images"
        backend = f"http://127.0.0.1:{args.backend_port}"
        launcher.connect_backend(ls, project, backend, basic_auth=launcher.basic_auth_from_env())
        ready = True
        log.info(
            "\nLabel Studio is ready: %s/projects/%d (%d %s)\n  login: %s\n  password: %s\n"
            "Open a task: the polyps the detector finds are already outlined (check them). To outline "
            "one yourself, turn on Auto-Annotation (bottom bar), click the Auto-Detect tool (the "
            "sparkle, key M) and draw a box around the polyp; accept the suggestion.\n"
            "Logs in %s. Ctrl-C stops both servers.",
            url,
            project,
            tasks,
            what,
            login.username,
            login.password,
            args.data_dir,
        )
        processes[0].wait()
        return 0
    except (launcher.ServerFailed, OSError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        if not ready:
            log.error("interrupted")
        return 0 if ready else 1
    finally:
        for process in reversed(processes):
            launcher.stop(process)


if __name__ == "__main__":
    sys.exit(main())
