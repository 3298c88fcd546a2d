"""Starting Label Studio and the polypseg backend side by side, and a polyp project wired to them.

Used by the quickstart (README's first command) and by the end-to-end tests. Label Studio runs
from its own virtual environment (its pins clash with polypseg's); everything is told through
its command line, its environment and its API (label-studio-sdk).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    token: str  # a legacy API token, also given to the backend


class ServerFailed(RuntimeError):
    pass


# Label Studio's own settings (label_studio/core/settings/{base,label_studio}.py and
# core/utils/common.py in 1.23.2) that otherwise send to third parties: server errors to its
# Sentry project, the page's errors to another (FRONTEND_SENTRY_DSN adds Sentry's script from a
# CDN), the version check against pypi.org at every start, and usage analytics to
# tele.labelstud.io. An empty DSN turns Sentry off (`if settings.SENTRY_DSN`).
NOTHING_LEAVES_THE_MACHINE = {
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "LATEST_VERSION_CHECK": "false",
    "COLLECT_ANALYTICS": "false",
}


def wait_for(url: str, process: subprocess.Popen[bytes] | None, timeout: float, log: Path | None) -> None:
    """Poll `url` until it answers 200; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerFailed(f"{url}: the server exited ({process.returncode}):\n{_tail(log)}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise ServerFailed(f"{url}: not up after {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None:
        return "(no log)"
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_label_studio(
    executable: Path,
    data_dir: Path,
    port: int,
    login: Login,
    files_root: Path | None = None,
    log: Path | None = None,
    timeout: float = 240,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Label Studio on loopback with its default SQLite database in `data_dir` (or the database
    that `extra_env` or the environment names: DJANGO_DB=postgresql, POSTGRE_HOST, ...), allowed
    to call a backend on this machine; `files_root` is served as local-files storage."""
    if not executable.is_file():
        raise ServerFailed(f"{executable}: Label Studio is not installed there (make install-labelstudio)")
    data_dir.mkdir(parents=True, exist_ok=True)
    log = log or data_dir / "label-studio.log"
    env = {
        **os.environ,
        **NOTHING_LEAVES_THE_MACHINE,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "ML_BLOCK_LOCAL_IP": "false",  # the backend is on this machine
        "SSRF_PROTECTION_ENABLED": "false",  # Label Studio also makes a webhook for the backend's URL
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        # "Retrieve predictions" sends the selected tasks in one request (pre-annotation takes
        # 0.15-0.25 s a frame on 2 cores): Label Studio's 100 s would cut off a few hundred.
        "ML_TIMEOUT_PREDICT": os.environ.get("ML_TIMEOUT_PREDICT", "3600"),
        # The login by environment, not on the command line (where `ps` shows it to every user).
        "LABEL_STUDIO_USERNAME": login.username,
        "LABEL_STUDIO_PASSWORD": login.password,
        "LABEL_STUDIO_USER_TOKEN": login.token,
        **(extra_env or {}),
    }
    if files_root is not None:
        env |= {"LOCAL_FILES_SERVING_ENABLED": "true", "LOCAL_FILES_DOCUMENT_ROOT": str(files_root.resolve())}
    command = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    command += ["--port", str(port), "--enable-legacy-api-token"]
    return _serve(command, env, port, log, timeout)


def start_backend(
    port: int,
    label_studio_url: str,
    token: str,
    log: Path,
    extra_env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.Popen[bytes]:
    """`polypseg serve labelstudio` on loopback, connected to Label Studio by environment."""
    env = {
        **os.environ,
        "LABEL_STUDIO_URL": label_studio_url,
        "LABEL_STUDIO_API_KEY": token,
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "polypseg.cli", "serve", "labelstudio", "--host", "127.0.0.1"]
    return _serve([*command, "--port", str(port)], env, port, log, timeout)


def _serve(
    command: list[str], env: dict[str, str], port: int, log: Path, timeout: float
) -> subprocess.Popen[bytes]:
    """Start a server process logging to `log`, and wait until it answers on /health."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(f"http://127.0.0.1:{port}/health", process, timeout, log)
    except ServerFailed:
        stop(process)
        raise
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client(url: str, token: str) -> Any:
    from label_studio_sdk.client import LabelStudio

    return LabelStudio(base_url=url, api_key=token)


def polyp_project(ls: Any, title: str, config: str, preannotate: bool = False) -> int:
    """The project called `title` (created with `config` if there is none); its id. With
    `preannotate`, a task opened without a prediction asks the backend for one (the detector's
    polyps, outlined); else the annotator's box is all polypseg answers."""
    for project in ls.projects.list():
        if project.title == title:
            return int(project.id)
    project = ls.projects.create(title=title, label_config=config)
    # "show_collab_predictions" (Settings > Annotation > "Use predictions to prelabel tasks")
    # retrieves a prediction when a task without one opens; "evaluate_predictions_automatically"
    # would also retrieve them for every page of the Data Manager as it loads, which stalls it.
    ls.projects.update(
        id=project.id, evaluate_predictions_automatically=False, show_collab_predictions=preannotate
    )
    return int(project.id)


def add_image_folder(ls: Any, project: int, folder: Path) -> int:
    """Serve `folder`'s images as the project's tasks (local-files storage, nothing copied); the
    number of tasks after syncing."""
    folder = folder.resolve()
    existing = [s for s in ls.import_storage.local.list(project=project) if s.path == str(folder)]
    storage = (
        existing[0]
        if existing
        else ls.import_storage.local.create(
            project=project,
            path=str(folder),
            regex_filter=r"(?i).*\.(jpe?g|png|bmp|tiff?)$",  # IMG_0001.JPG too
            use_blob_urls=True,
            title=folder.name,
        )
    )
    ls.import_storage.local.sync(id=storage.id)
    return int(ls.projects.get(id=project).task_number or 0)


def add_clip_tasks(ls: Any, project: int, folder: Path, tasks: list[dict[str, Any]]) -> int:
    """Import clip tasks (`polypseg video-tasks`) whose frames lie in `folder` (served as
    local files: Label Studio serves only files inside a storage's folder; the storage is never
    synced, so the frames do not become tasks of their own); a clip already in the project
    (same video and first frame) is not imported again. The number of tasks after importing."""
    folder = folder.resolve()
    if not any(s.path == str(folder) for s in ls.import_storage.local.list(project=project)):
        ls.import_storage.local.create(
            project=project, path=str(folder), title=folder.name, use_blob_urls=True
        )
    held = {
        (task.data.get("video"), task.data.get("frame_start"))
        for task in ls.tasks.list(project=project, fields="all")
    }
    new = [t for t in tasks if (t["data"]["video"], t["data"]["frame_start"]) not in held]
    if new:
        ls.projects.import_tasks(id=project, request=new)
    return int(ls.projects.get(id=project).task_number or 0)


def basic_auth_from_env() -> tuple[str, str] | None:
    """The backend's basic-auth credentials as it reads them (BASIC_AUTH_USER / _PASS), if any."""
    user = os.environ.get("BASIC_AUTH_USER", "")
    return (user, os.environ.get("BASIC_AUTH_PASS", "")) if user else None


def connect_backend(
    ls: Any, project: int, url: str, title: str = "polypseg", basic_auth: tuple[str, str] | None = None
) -> int:
    """The project's ML backend at `url` (connected, interactive, with the backend's basic-auth
    credentials where it asks for them), its id."""
    auth: dict[str, Any] = {"auth_method": "NONE"}
    if basic_auth:
        auth = {
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": basic_auth[0],
            "basic_auth_pass": basic_auth[1],
        }
    for backend in ls.ml.list(project=project):
        if backend.url.rstrip("/") == url.rstrip("/"):
            # The credentials may have changed since; Label Studio 1.23 checks the connection on
            # every update and wants the url and project for it.
            ls.ml.update(int(backend.id), project=project, url=backend.url, **auth)
            return int(backend.id)
    return int(ls.ml.create(project=project, url=url, title=title, is_interactive=True, **auth).id)
