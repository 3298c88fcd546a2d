"""The README's first command (`make annotate IMAGES=...` runs backends.labelstudio.quickstart):
Label Studio on its own SQLite database, the backend connected, a project of the folder's
images, the URL and login printed; Ctrl-C stops both; run again, it reuses everything; another
folder joins the project without breaking the first one's tasks; a second run while one is up
is refused; nothing is sent off the machine."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from backends.labelstudio.brush import decode_brush_rle
from backends.labelstudio.quickstart import backend_settings
from conftest import ONE_POLYP, ROOT, _free_port
from labelstudio_fixtures import rectangle
from polypseg.images import read_mask
from polypseg.metrics import score_masks

pytestmark = pytest.mark.slow

READY = re.compile(r"Label Studio is ready: (http://\S+)/projects/(\d+) \((\d+) (?:images|clips)\)")
CLIP = ROOT.parent / "shared" / "data" / "video" / "colonoscopy-clip-1.mp4"


class Quickstart:
    """The command as a user runs it, its output read line by line."""

    def __init__(self, media: Path, data_dir: Path, port: int, backend_port: int) -> None:
        """`make annotate IMAGES=media`, or VIDEO=media for a file."""
        executable = os.environ.get(
            "POLYPSEG_LABEL_STUDIO", ROOT / ".venv-labelstudio" / "bin" / "label-studio"
        )
        kind = "--video" if media.is_file() else "--images"
        command = [sys.executable, "-m", "backends.labelstudio.quickstart", kind, str(media)]
        command += ["--data-dir", str(data_dir), "--label-studio", str(executable)]
        command += ["--port", str(port), "--backend-port", str(backend_port)]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_exit(self, timeout: float = 60) -> tuple[int, str]:
        """Exit status and everything it printed, for a run that must end by itself."""
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        lines = []
        while not self.lines.empty():
            lines.append(self.lines.get_nowait())
        return code, "".join(lines)

    def wait_ready(self, timeout: float = 300) -> tuple[str, int, int, str, str]:
        """URL, project, image count, login and password, as printed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.process.poll() is None and time.monotonic() < deadline:
                    continue
                self.reader.join(timeout=10)  # what it printed last, if it ended
                while not self.lines.empty():
                    self.seen.append(self.lines.get_nowait())
                raise AssertionError("quickstart never said ready:\n" + "".join(self.seen)) from None
            self.seen.append(line)
            if match := READY.search(line):
                login = self.lines.get(timeout=10).split("login:")[1].strip()
                password = self.lines.get(timeout=10).split("password:")[1].strip()
                return match[1], int(match[2]), int(match[3]), login, password

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=120)


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:  # a process that ended meanwhile
        return False
    return True


def test_annotate_command_end_to_end(tmp_path: Path, kvasir: Path, boxes, core_mask) -> None:
    """One Label Studio data folder through a user's runs (one test: each fresh Label Studio
    database costs a minute of migrations): the folder's project, login and box; a second run
    while it is up refused; a second folder joining the project without breaking the first
    one's tasks (Label Studio used to move its local-files root to the second folder's parent:
    404); the first folder again, no task twice; a video in a project of its own."""
    port, backend_port = _free_port(), _free_port()
    images = kvasir / "images"
    count = len(list(images.iterdir()))
    data_dir = tmp_path / "ls"
    run = Quickstart(images, data_dir, port, backend_port)
    try:
        url, project, tasks, login, password = run.wait_ready()
        assert url == f"http://127.0.0.1:{port}" and tasks == count
        saved_password, token = (data_dir / "polypseg-login.txt").read_text().split()
        assert password == saved_password and login == "annotator@polypseg.local"
        headers = {"Authorization": f"Token {token}"}

        def api(method: str, path: str, **kwargs) -> Any:
            answer = requests.request(method, url + path, headers=headers, timeout=120, **kwargs)
            assert answer.status_code < 400, answer.text[:500]
            return answer.json()

        # The printed login opens Label Studio: its login form accepts the printed password.
        session = requests.Session()
        form = session.get(f"{url}/user/login/", timeout=30)
        csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)[1]
        session.post(
            f"{url}/user/login/",
            data={"csrfmiddlewaretoken": csrf, "email": login, "password": password},
            headers={"Referer": f"{url}/user/login/"},
            timeout=30,
        )
        assert session.get(f"{url}/api/projects/{project}", timeout=30).status_code == 200
        assert requests.get(f"{url}/api/projects/{project}", timeout=30).status_code == 401  # not logged in

        # Nothing leaves the machine: the page loads no error tracker and reports no usage, the
        # server made no version check and sent no error report (both log their HTTPS calls).
        page = session.get(f"{url}/projects/", timeout=30).text
        assert "sentry_dsn: null" in page and "collect_analytics: false" in page
        assert "sentry-cdn" not in page
        log = (data_dir / "label-studio.log").read_text()
        assert "pypi.org" not in log and "sentry.io" not in log and "tele.labelstud.io" not in log
        # ... and the password and token are not on any command line (`ps` shows those to all).
        command_lines = [c.read_bytes() for c in Path("/proc").glob("[0-9]*/cmdline") if _readable(c)]
        assert not [c for c in command_lines if password.encode() in c or token.encode() in c]
        # The model was loaded and run once before "ready", not on the first annotator's box.
        assert "warmed up" in (data_dir / "backend.log").read_text()
        # Pre-annotation with the detector's mirror image, the project's setting (README).
        served = requests.get(f"http://127.0.0.1:{backend_port}/metrics", timeout=30).json()
        assert served["detector"]["mirror_image"] is True

        (backend,) = api("GET", f"/api/ml?project={project}")
        assert backend["url"] == f"http://127.0.0.1:{backend_port}"
        listed = api("GET", f"/api/tasks?project={project}&page_size={count + 10}")["tasks"]
        task = next(t for t in listed if t["data"]["image"].endswith(f"{ONE_POLYP}.jpg"))
        mask = read_mask(kvasir / "masks" / f"{ONE_POLYP}.jpg")
        box = boxes[ONE_POLYP][0]
        region = rectangle((box.x1, box.y1, box.x2, box.y2), mask.shape[1], mask.shape[0])
        body = {"task": task["id"], "context": {"result": [region]}}
        answer = api("POST", f"/api/ml/{backend['id']}/interactive-annotating", json=body)
        (found,) = answer["data"]["result"]
        brush = decode_brush_rle(found["value"]["rle"], found["original_width"], found["original_height"])
        expected = core_mask(kvasir / "images" / f"{ONE_POLYP}.jpg", (box.x1, box.y1, box.x2, box.y2))
        assert score_masks(brush, expected).iou > 0.99

        # A second run while this one is up, on the same data or on a taken port, is refused and
        # starts nothing.
        second = tmp_path / "elsewhere" / "second"  # another parent than the first folder's
        second.mkdir(parents=True)
        names = sorted(p.name for p in images.iterdir())[:2]
        for name in names:
            shutil.copy(images / name, second / f"second-{name}")
        camera_name = f"second-{names[1]}".replace(".jpg", ".JPG")  # as some cameras name files
        (second / f"second-{names[1]}").rename(second / camera_name)
        again = Quickstart(second, data_dir, _free_port(), _free_port())
        code, said = again.wait_exit()
        assert code == 1 and "Label Studio is ready" not in said
        assert f"already running: {url} (process {run.process.pid})" in said
        taken = Quickstart(second, tmp_path / "other", port, _free_port())
        code, said = taken.wait_exit()
        assert code == 1 and f"port {port} (Label Studio) is already in use" in said
        assert not (tmp_path / "other" / "label-studio.log").exists()  # nothing was started
    finally:
        assert run.stop(signal.SIGINT) == 0  # Ctrl-C
    for server in (port, backend_port):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{server}/health", timeout=5)

    # The second folder joins the project; the first folder's tasks still load.
    joined = Quickstart(second, data_dir, port, backend_port)
    try:
        assert joined.wait_ready()[1:3] == (project, count + 2)
        listed = api("GET", f"/api/tasks?project={project}&page_size={count + 10}")["tasks"]
        paths = {Path(t["data"]["image"]).name: t["data"]["image"] for t in listed}
        firsts = sorted(name for name in paths if not name.startswith("second-"))
        shown = [images / name for name in firsts[:: max(1, count // 8)]]
        for image in [*second.iterdir(), *shown]:  # every image of the second, some of the first
            answer = requests.get(url + paths[image.name], headers=headers, timeout=60)
            assert answer.status_code == 200, (image, answer.status_code)
            assert answer.content == image.read_bytes(), image
    finally:
        assert joined.stop(signal.SIGTERM) == 0

    again = Quickstart(images, data_dir, port, backend_port)
    try:
        assert again.wait_ready()[1:3] == (project, count + 2)  # the same project, no task twice
    finally:
        assert again.stop(signal.SIGTERM) == 0

    # `make annotate VIDEO=...` on the same Label Studio: the video's clip tasks in a project of
    # their own, frames served, a box on a page answered on the clip's pages
    video = Quickstart(CLIP, data_dir, port, backend_port)
    try:
        url, clips_project, tasks, _, _ = video.wait_ready()
        assert clips_project != project and tasks == 7  # 181 frames: 6 clips of 30, then 1
        listed = api("GET", f"/api/tasks?project={clips_project}&page_size=10")["tasks"]
        task = next(t for t in listed if t["data"]["frame_start"] == 150)
        frame = requests.get(url + task["data"]["frames"][10], headers=headers, timeout=60)
        assert (
            frame.status_code == 200
            and frame.content == (data_dir / "clips" / CLIP.stem / "000160.jpg").read_bytes()
        )
        (backend,) = api("GET", f"/api/ml?project={clips_project}")
        box = {**rectangle((264, 290, 355, 418), 560, 480), "item_index": 10}  # conftest CLIP_POLYP[160]
        answer = requests.post(
            f"{url}/api/ml/{backend['id']}/interactive-annotating",
            json={"task": task["id"], "context": {"result": [box]}},
            headers=headers,
            timeout=300,
        )
        assert answer.status_code == 200, answer.text[:500]
        pages = [r["item_index"] for r in answer.json()["data"]["result"]]
        assert 10 in pages and len(set(pages)) == len(pages) >= 25
    finally:
        assert video.stop(signal.SIGTERM) == 0


def test_a_data_dir_from_before_the_fixed_files_root_is_pointed_out(tmp_path: Path, kvasir: Path) -> None:
    """Tasks imported by an earlier quickstart (local-files root = the folder's parent) do not
    load under the root `/`: the run says so instead of leaving 404s to be found."""
    data_dir = tmp_path / "ls"
    data_dir.mkdir()
    (data_dir / "label_studio.sqlite3").write_bytes(b"")  # a database, and no record of the root
    command = [sys.executable, "-m", "backends.labelstudio.quickstart", "--images", str(kvasir / "images")]
    command += ["--data-dir", str(data_dir), "--label-studio", str(tmp_path / "none")]
    command += ["--port", str(_free_port()), "--backend-port", str(_free_port())]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "was made by an earlier polypseg" in first.stderr and "fresh --data-dir" in first.stderr
    assert first.returncode == 1 and "Label Studio is not installed there" in first.stderr
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "earlier polypseg" not in again.stderr  # said once; the root is recorded now


def test_the_saved_login_is_private_and_a_damaged_one_is_named(tmp_path: Path, kvasir: Path) -> None:
    data_dir = tmp_path / "ls"
    command = [sys.executable, "-m", "backends.labelstudio.quickstart", "--images", str(kvasir / "images")]
    command += ["--data-dir", str(data_dir), "--label-studio", str(tmp_path / "none")]
    command += ["--port", str(_free_port()), "--backend-port", str(_free_port())]
    first = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert first.returncode == 1 and "Label Studio is not installed there" in first.stderr
    saved = data_dir / "polypseg-login.txt"
    assert saved.stat().st_mode & 0o777 == 0o600 and len(saved.read_text().split()) == 2
    assert [p.name for p in data_dir.iterdir() if p.name.endswith(".tmp")] == []
    saved.write_text("half a passw")  # a disk that filled up, an editor gone wrong
    damaged = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert damaged.returncode == 1 and "Traceback" not in damaged.stderr
    assert f"{saved}: not the two lines polypseg saved there" in damaged.stderr


def test_the_project_backend_pre_annotates_with_the_mirror_image_unless_told_otherwise() -> None:
    assert backend_settings({}) == {"POLYPSEG_TTA": "detector"}
    assert backend_settings({"POLYPSEG_TTA": "0"}) == {"POLYPSEG_TTA": "0"}  # the user's own wins
