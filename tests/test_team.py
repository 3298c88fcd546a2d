"""A team's day against real servers: Label Studio 1.23.2 on a real PostgreSQL (Debian's
`postgresql`, a throw-away cluster this test starts), the polypseg backend connected, eight
annotators working at once for over a minute, PostgreSQL and then the backend restarted
under them, and at the end a retrain pull of everything they saved.

Each simulated annotator does what a browser user does: open a task, draw a smart box (Label
Studio's `POST /api/ml/{id}/interactive-annotating`, which calls the backend), save an
annotation with the returned mask, think 1-3 s. A request that fails (Label Studio's database
restarting, the backend away) is retried as a user would press the button again, and every
call has a client time-out, so nothing hangs. POLYPSEG_TEAM_SECONDS sets the working time
(default 75).
"""

from __future__ import annotations

import glob
import logging
import os
import random
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from backends.labelstudio import launcher
from backends.labelstudio.brush import decode_brush_rle
from backends.labelstudio.export import LabelStudioProject
from conftest import LabelStudioStack, _free_port, label_studio_stack
from labelstudio_fixtures import CONFIGS, rectangle
from polypseg.data_store import DatasetStore
from polypseg.datasets import read_boxes_json
from polypseg.images import read_image

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

ANNOTATORS = 8
WORKING_SECONDS = float(os.environ.get("POLYPSEG_TEAM_SECONDS", "75"))
CALL_TIMEOUT = 30  # seconds: no request may hang longer
GIVE_UP_AFTER = 120  # seconds of retries before a step counts as failed
TASKS = 400  # more than eight annotators finish in the working time


@dataclass
class PostgresCluster:
    """A PostgreSQL cluster in a temporary folder on a loopback port, run by an unprivileged
    user (PostgreSQL refuses to run as root, and CI runs as root)."""

    bin: Path
    folder: Path
    port: int
    password: str = "team-test"
    user: str = "labelstudio"
    database: str = "labelstudio"
    _as_user: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def run(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        environment = {**os.environ, "PGPASSWORD": self.password}
        return subprocess.run(
            [*self._as_user, *command], capture_output=True, text=True, timeout=timeout, check=True,
            env=environment,
        )  # fmt: skip

    def pg_ctl(self, action: str, *options: str) -> None:
        log = self.folder / "postgres.log"
        server_options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self.run(str(self.bin / "pg_ctl"), action, "-D", str(self.data), "-l", str(log), "-w", "-o",
                 server_options, *options)  # fmt: skip

    def psql(self, sql: str, database: str | None = None) -> str:
        return self.run(
            str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d",
            database or self.database, "-tAc", sql,
        ).stdout.strip()  # fmt: skip

    def label_studio_settings(self) -> dict[str, str]:
        """Label Studio 1.23.2's own database settings (core/settings/base.py, label_studio.py)."""
        return {
            "DJANGO_DB": "postgresql",
            "POSTGRE_HOST": "127.0.0.1",
            "POSTGRE_PORT": str(self.port),
            "POSTGRE_NAME": self.database,
            "POSTGRE_USER": self.user,
            "POSTGRE_PASSWORD": self.password,
        }


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "Debian's postgresql is not installed: make system-packages"
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresCluster]:
    folder = Path(tempfile.mkdtemp(prefix="polypseg-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "nobody")
        as_user = ["runuser", "-u", "nobody", "--"]
    folder.chmod(0o700)
    cluster = PostgresCluster(postgres_bin(), folder, _free_port(), _as_user=as_user)
    password_file = folder / "password"
    password_file.write_text(cluster.password + "\n")
    if as_user:
        shutil.chown(password_file, "nobody")
    cluster.run(str(cluster.bin / "initdb"), "-D", str(cluster.data), "-U", cluster.user, "--pwfile",
                str(password_file), "--auth=scram-sha-256", "-E", "UTF8")  # fmt: skip
    cluster.pg_ctl("start")
    try:
        cluster.psql(f"CREATE DATABASE {cluster.database}", database="postgres")
        yield cluster
    finally:
        try:
            cluster.pg_ctl("stop", "-m", "fast")
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def team_stack(postgres: PostgresCluster, tmp_path_factory, kvasir: Path) -> Iterator[LabelStudioStack]:
    folder = tmp_path_factory.mktemp("team")
    with label_studio_stack(folder, kvasir.parent, postgres.label_studio_settings()) as stack:
        yield stack


@dataclass
class Tally:
    """What the annotators did, shared between their threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    saved: dict[int, dict] = field(default_factory=dict)  # task -> the region saved
    saved_by: dict[int, int] = field(default_factory=dict)  # annotator -> annotations saved
    retries: list[tuple[float, str, str]] = field(default_factory=list)  # (when, step, why)
    failures: list[str] = field(default_factory=list)
    successes: list[tuple[float, str]] = field(default_factory=list)  # (when, step)
    slowest: float = 0.0


class Annotator:
    def __init__(self, stack: LabelStudioStack, ml: int, boxes: Any, tally: Tally, seed: int) -> None:
        self.stack, self.ml, self.boxes, self.tally = stack, ml, boxes, tally
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {stack.login.token}"
        self.random, self.seed = random.Random(seed), seed

    def _call(self, step: str, method: str, path: str, **kwargs: Any) -> Any:
        """One step, retried until it succeeds (a user pressing the button again) or
        GIVE_UP_AFTER; every attempt has a client time-out."""
        deadline = time.monotonic() + GIVE_UP_AFTER
        while True:
            started = time.monotonic()
            why = ""
            try:
                response = self.session.request(method, self.stack.url + path, timeout=CALL_TIMEOUT, **kwargs)
                answer = response.json() if response.content else None
                if response.status_code >= 400:
                    why = f"HTTP {response.status_code}"
                elif isinstance(answer, dict) and answer.get("errors"):
                    why = f"errors: {str(answer['errors'])[:200]}"  # the backend away or busy
            except (requests.RequestException, ValueError) as exc:
                why = type(exc).__name__
            with self.tally.lock:
                self.tally.slowest = max(self.tally.slowest, time.monotonic() - started)
                if not why:
                    self.tally.successes.append((time.monotonic(), step))
                    return answer
                self.tally.retries.append((time.monotonic(), step, why))
            if time.monotonic() > deadline:
                raise RuntimeError(f"{step} {path}: still failing after {GIVE_UP_AFTER} s ({why})")
            time.sleep(1 + self.random.random())

    def annotate(self, task: dict) -> None:
        self._call("open", "GET", f"/api/tasks/{task['id']}")
        name = Path(task["data"]["image"].split("?d=")[-1]).stem
        box = self.boxes[name][0]
        width, height = task["width"], task["height"]
        region = rectangle((box.x1, box.y1, box.x2, box.y2), width, height)
        answer = self._call(
            "box",
            "POST",
            f"/api/ml/{self.ml}/interactive-annotating",
            json={"task": task["id"], "context": {"result": [region]}},
        )
        (mask_region,) = answer["data"]["result"]
        assert mask_region["type"] == "brushlabels", mask_region
        self._save(task["id"], mask_region)

    def _save(self, task: int, region: dict) -> None:
        """Save once: before a retry, look whether the last attempt reached Label Studio after all
        (as a user would reload the task), so that a lost answer never makes a duplicate."""
        path = f"/api/tasks/{task}/annotations"
        deadline = time.monotonic() + GIVE_UP_AFTER
        while True:
            try:
                response = self.session.post(
                    self.stack.url + path, json={"result": [region]}, timeout=CALL_TIMEOUT
                )
                if response.status_code == 201:
                    break
                why = f"HTTP {response.status_code}"
            except requests.RequestException as exc:
                why = type(exc).__name__
            with self.tally.lock:
                self.tally.retries.append((time.monotonic(), "save", why))
            if time.monotonic() > deadline:
                raise RuntimeError(f"save on task {task}: still failing after {GIVE_UP_AFTER} s ({why})")
            time.sleep(1 + self.random.random())
            existing = self._call("reload", "GET", path)
            if any(r["value"].get("rle") == region["value"]["rle"] for a in existing for r in a["result"]):
                break
        with self.tally.lock:
            self.tally.saved[task] = region
            self.tally.saved_by[self.seed] = self.tally.saved_by.get(self.seed, 0) + 1
            self.tally.successes.append((time.monotonic(), "save"))

    def work(self, tasks: list[dict], until: float) -> None:
        while time.monotonic() < until:
            with self.tally.lock:
                if not tasks:
                    return
                task = tasks.pop()
            try:
                self.annotate(task)
            except Exception as exc:  # noqa: BLE001 (recorded and asserted on, never lost in a thread)
                with self.tally.lock:
                    self.tally.failures.append(f"task {task['id']}: {type(exc).__name__}: {exc}")
            time.sleep(self.random.uniform(1, 3))  # thinking


def restart_backend(stack: LabelStudioStack, log: Path) -> float:
    """Stop the backend and start it again on the same port; when it was down."""
    port = int(stack.backend_url.rsplit(":", 1)[1])
    launcher.stop(stack.processes.pop("backend"))
    down = time.monotonic()
    stack.processes["backend"] = launcher.start_backend(port, stack.url, stack.login.token, log)
    return down


def test_eight_annotators_on_postgresql_with_restarts(
    team_stack: LabelStudioStack, postgres: PostgresCluster, kvasir: Path, tmp_path: Path
) -> None:
    stack = team_stack
    project = launcher.polyp_project(stack.client, "Team", (CONFIGS / "polyp-image.xml").read_text())
    # Tasks of local files, as a local storage would list them (its sync of a thousand files is
    # slow on a busy machine; Label Studio serves local files only below a storage's path).
    images = (kvasir / "images").resolve()  # as Label Studio checks it against its document root
    stack.client.import_storage.local.create(project=project, path=str(images), title="kvasir")
    boxes = read_boxes_json(kvasir / "bboxes.json")
    names = sorted(boxes)[:TASKS]
    stack.api(
        "POST",
        f"/api/projects/{project}/import",
        json=[{"image": f"/data/local-files/?d={images.parent.name}/images/{name}.jpg"} for name in names],
    )
    ml = launcher.connect_backend(stack.client, project, stack.backend_url)
    tasks = stack.api("GET", f"/api/tasks?project={project}&page_size={TASKS}")["tasks"]
    assert len(tasks) == TASKS
    for task in tasks:  # the frame's size, as the labelling page knows it once the image loads
        name = Path(task["data"]["image"].split("?d=")[-1]).stem
        task["height"], task["width"] = read_image(images / f"{name}.jpg").shape[:2]
    random.Random(0).shuffle(tasks)

    tally = Tally()
    started = time.monotonic()
    until = started + WORKING_SECONDS
    annotators = [
        threading.Thread(target=Annotator(stack, ml, boxes, tally, seed).work, args=(tasks, until))
        for seed in range(ANNOTATORS)
    ]
    for thread in annotators:
        thread.start()

    # PostgreSQL restarted a third of the way in, the backend at two thirds.
    time.sleep(WORKING_SECONDS / 3)
    postgres_down = time.monotonic()
    postgres.pg_ctl("restart", "-m", "fast")
    postgres_up = time.monotonic()
    time.sleep(max(0.0, started + 2 * WORKING_SECONDS / 3 - time.monotonic()))
    backend_down = restart_backend(stack, stack.data_dir / "backend-restarted.log")
    backend_up = time.monotonic()

    for thread in annotators:
        thread.join(timeout=WORKING_SECONDS + 2 * GIVE_UP_AFTER)
    assert not any(thread.is_alive() for thread in annotators), "an annotator hangs"
    saved = tally.saved
    backend_retries = [r for r in tally.retries if r[1] == "box" and backend_down <= r[0] <= backend_up + 5]
    retries_during_postgres = [r for r in tally.retries if postgres_down <= r[0] <= postgres_up + 5]
    log.warning(  # the run's figures, for the test log
        f"{len(saved)} annotations by {ANNOTATORS} annotators in {WORKING_SECONDS:.0f} s; "
        f"retries: {len(retries_during_postgres)} around the PostgreSQL restart "
        f"({postgres_up - postgres_down:.1f} s), {len(backend_retries)} around the backend restart "
        f"({backend_up - backend_down:.1f} s), {len(tally.retries)} in all; "
        f"slowest call {tally.slowest:.1f} s"
    )

    assert tally.failures == []  # every step succeeded, retries included
    assert tally.slowest <= CALL_TIMEOUT + 5  # and none waited past its time-out
    assert sorted(tally.saved_by) == list(range(ANNOTATORS))  # every annotator got work done
    # Each outage was felt only until it ended: steps succeed again after both restarts.
    assert any(when > postgres_up for when, _ in tally.successes)
    after_backend = [when for when, step in tally.successes if step == "box" and when > backend_up]
    assert after_backend, "no box answered after the backend came back"
    assert backend_retries, "the backend restart went unnoticed: was it restarted?"

    # Every annotation present once, and identical, in Label Studio's export.
    export = stack.api("GET", f"/api/projects/{project}/export?exportType=JSON&download_all_tasks=false")
    exported = {task["id"]: task["annotations"] for task in export}
    assert set(exported) == set(saved)
    for task, saved_there in exported.items():
        assert len(saved_there) == 1, f"task {task}: {len(saved_there)} annotations"
        (region,) = saved_there[0]["result"]
        assert region["value"]["rle"] == saved[task]["value"]["rle"], task
    assert int(postgres.psql("SELECT count(*) FROM task_completion")) == len(saved)  # in PostgreSQL

    # The retrain pull takes every one of them into the dataset store.
    store = DatasetStore(tmp_path / "dataset")
    report = LabelStudioProject(stack.url, stack.login.token, project).pull(store)
    assert (report.new, report.failed) == (len(saved), {})
    assert len(store.samples()) == len(saved)
    sample = next(iter(saved.values()))
    assert decode_brush_rle(sample["value"]["rle"], sample["original_width"], sample["original_height"]).any()

    # README's backup and restore (pg_dump / pg_restore) bring every annotation back.
    dump = postgres.folder / "labelstudio.dump"
    postgres.run(str(postgres.bin / "pg_dump"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U",
                 postgres.user, "-d", postgres.database, "-Fc", "-f", str(dump))  # fmt: skip
    postgres.psql("CREATE DATABASE restored", database="postgres")
    postgres.run(str(postgres.bin / "pg_restore"), "-h", "127.0.0.1", "-p", str(postgres.port), "-U",
                 postgres.user, "-d", "restored", "--no-owner", str(dump))  # fmt: skip
    assert int(postgres.psql("SELECT count(*) FROM task_completion", database="restored")) == len(saved)
