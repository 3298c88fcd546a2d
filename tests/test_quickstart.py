"""The README's first command (`make annotate IMAGES=...` runs backends.labelstudio.quickstart):
Label Studio on its own SQLite database, the backend connected, a project of the folder's
images, the URL and login printed; Ctrl-C stops both; run again, it reuses everything."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

from conftest import ONE_POLYP, ROOT, _free_port
from labelstudio_fixtures import rectangle
from polypseg.formats.brush import decode_brush_rle
from polypseg.images import read_mask
from polypseg.metrics import score_masks

pytestmark = pytest.mark.slow

READY = re.compile(r"Label Studio is ready: (http://\S+)/projects/(\d+) \((\d+) images\)")


class Quickstart:
    """The command as a user runs it, its output read line by line."""

    def __init__(self, images: Path, data_dir: Path, port: int, backend_port: int) -> None:
        executable = os.environ.get(
            "POLYPSEG_LABEL_STUDIO", ROOT / ".venv-labelstudio" / "bin" / "label-studio"
        )
        command = [sys.executable, "-m", "backends.labelstudio.quickstart", "--images", str(images)]
        command += ["--data-dir", str(data_dir), "--label-studio", str(executable)]
        command += ["--port", str(port), "--backend-port", str(backend_port)]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_ready(self, timeout: float = 300) -> tuple[str, int, int, str, str]:
        """URL, project, image count, login and password, as printed."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError("quickstart never said ready:\n" + "".join(self.seen)) from None
            self.seen.append(line)
            if match := READY.search(line):
                login = self.lines.get(timeout=10).split("login:")[1].strip()
                password = self.lines.get(timeout=10).split("password:")[1].strip()
                return match[1], int(match[2]), int(match[3]), login, password

    def stop(self, sig: int) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=120)


def test_annotate_command_end_to_end(tmp_path: Path, kvasir: Path, boxes, core_mask) -> None:
    port, backend_port = _free_port(), _free_port()
    images = kvasir / "images"
    count = len(list(images.iterdir()))
    run = Quickstart(images, tmp_path / "ls", port, backend_port)
    try:
        url, project, tasks, login, password = run.wait_ready()
        assert url == f"http://127.0.0.1:{port}" and tasks == count
        saved_password, token = (tmp_path / "ls" / "polypseg-login.txt").read_text().split()
        assert password == saved_password and login == "annotator@polypseg.local"
        headers = {"Authorization": f"Token {token}"}

        def api(method: str, path: str, **kwargs) -> dict:
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
    finally:
        assert run.stop(signal.SIGINT) == 0  # Ctrl-C
    for server in (port, backend_port):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{server}/health", timeout=5)

    again = Quickstart(images, tmp_path / "ls", port, backend_port)
    try:
        assert again.wait_ready()[1:3] == (project, count)  # the same project, no task twice
    finally:
        assert again.stop(signal.SIGTERM) == 0
