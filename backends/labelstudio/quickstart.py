"""Assisted annotation in one command: Label Studio (its own SQLite database in DATA_DIR), the
polypseg backend connected to it, and a project of the polyp images in a folder.

    python -m backends.labelstudio.quickstart --images FOLDER

prints the URL and the login, and runs until Ctrl-C. Run again, it reuses the same database,
project and tasks.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
from pathlib import Path

from backends.labelstudio import launcher

ROOT = Path(__file__).resolve().parent.parent.parent
log = logging.getLogger("polypseg.quickstart")


def _login(data_dir: Path, username: str) -> launcher.Login:
    """The admin login, made once and kept in DATA_DIR (Label Studio keeps the user from the
    first start)."""
    saved = data_dir / "polypseg-login.txt"
    if saved.is_file():
        password, token = saved.read_text().split()
    else:
        password, token = secrets.token_urlsafe(12), secrets.token_hex(20)
        data_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(f"{password}\n{token}\n")
        saved.chmod(0o600)
    return launcher.Login(username, password, token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quickstart", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of polyp images")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".labelstudio", help="Label Studio's data")
    parser.add_argument(
        "--label-studio", type=Path, default=ROOT / ".venv-labelstudio" / "bin" / "label-studio"
    )
    parser.add_argument("--port", type=int, default=8080, help="Label Studio's port")
    parser.add_argument("--backend-port", type=int, default=9090)
    parser.add_argument("--username", default="annotator@polypseg.local")
    parser.add_argument("--title", default="Polyps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # label-studio-sdk's request log

    folder = args.images.resolve()
    if not folder.is_dir():
        log.error("%s: no such folder of images", args.images)
        return 2
    login = _login(args.data_dir, args.username)
    url = f"http://127.0.0.1:{args.port}"
    log.info("starting Label Studio on %s (first start: about a minute) ...", url)
    processes = []
    try:
        processes.append(
            launcher.start_label_studio(
                args.label_studio, args.data_dir, args.port, login, files_root=folder.parent
            )
        )
        log.info("starting the polypseg backend on port %d ...", args.backend_port)
        processes.append(
            launcher.start_backend(args.backend_port, url, login.token, args.data_dir / "backend.log")
        )
        ls = launcher.client(url, login.token)
        config = (launcher.CONFIGS / "polyp-image.xml").read_text()
        project = launcher.polyp_project(ls, args.title, config)
        tasks = launcher.add_image_folder(ls, project, folder)
        backend = f"http://127.0.0.1:{args.backend_port}"
        launcher.connect_backend(ls, project, backend, basic_auth=launcher.basic_auth_from_env())
    except (launcher.ServerFailed, OSError) as exc:
        log.error("%s", exc)
        for process in processes:
            launcher.stop(process)
        return 1
    log.info(
        "\nLabel Studio is ready: %s/projects/%d (%d images)\n  login: %s\n  password: %s\n"
        "Open a task, turn on Auto-Annotation (bottom bar), pick the smart box tool, draw a box "
        "around the polyp.\nLogs in %s. Ctrl-C stops both servers.",
        url,
        project,
        tasks,
        login.username,
        login.password,
        args.data_dir,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        processes[0].wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        for process in reversed(processes):
            launcher.stop(process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
