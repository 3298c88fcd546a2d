"""Shared fixtures: small real inputs from ../shared/data and checkpoints the tests write."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from polypseg.checkpoints import save_checkpoint
from polypseg.datasets import read_boxes_json
from polypseg.images import read_image, read_mask

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
KVASIR = DATA / "kvasir-seg"
VAL_LIST = ROOT / "training" / "splits" / "kvasir-seg-val.txt"
# A 622x529 image with one large polyp, and one with two polyps.
ONE_POLYP = "cju0qkwl35piu0993l0dewei2"


@pytest.fixture(scope="session")
def kvasir() -> Path:
    assert (KVASIR / "images").is_dir(), f"test data missing: {KVASIR} (see shared/data/README.md)"
    return KVASIR


@pytest.fixture(scope="session")
def boxes(kvasir: Path):
    return read_boxes_json(kvasir / "bboxes.json")


@pytest.fixture(scope="session")
def two_polyp_name(boxes) -> str:
    return next(name for name, b in sorted(boxes.items()) if len(b) == 2)


# The polyp of the real clip, boxed by hand on frames where it has moved well away from its
# box on frame 133 (360,240,450,400): a track that stands still misses these entirely.
CLIP_POLYP = {160: (264, 290, 355, 418), 172: (257, 282, 337, 394)}


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="session")
def core_mask():
    """The core's own answer for a box on an image (the shipped model, in this process): what
    an adapter must hand back, unchanged but for resampling. (Against the true mask, even an
    ellipse in the box scores IoU 0.86 on ONE_POLYP: only this comparison checks transport.)"""
    from polypseg.predictors import build_predictor
    from polypseg.prompts import Box, Prompt

    predictor = build_predictor(device="cpu")

    def answer(image: Path | np.ndarray, *boxes: tuple[float, float, float, float]) -> np.ndarray:
        pixels = read_image(image) if isinstance(image, Path) else image
        masks = [predictor.predict(pixels, Prompt(box=Box(*box))).mask for box in boxes]
        return np.logical_or.reduce(masks)

    return answer


@pytest.fixture()
def polyp_image(kvasir: Path) -> tuple[np.ndarray, np.ndarray]:
    """A real frame and its mask (622x529)."""
    return read_image(kvasir / "images" / f"{ONE_POLYP}.jpg"), read_mask(
        kvasir / "masks" / f"{ONE_POLYP}.jpg"
    )


def random_box_channel_checkpoint(
    path: Path, architecture: str = "unet", encoder: str = "resnet18", size: int = 128
) -> Path:
    """A random-weight U-Net / U-Net++ written in the project's real checkpoint format."""
    from polypseg.predictors.box_channel import create_box_channel_model

    torch.manual_seed(0)
    model = create_box_channel_model(architecture, encoder)
    metadata = {
        "architecture": architecture,
        "encoder": encoder,
        "input": {"mode": "crop", "size": size, "margin": 0.25},
        "version": f"test-{architecture}",
    }
    save_checkpoint(path, model.state_dict(), metadata)
    return path


@pytest.fixture(scope="session")
def unet_checkpoint(tmp_path_factory) -> Path:
    return random_box_channel_checkpoint(tmp_path_factory.mktemp("ckpt") / "unet.pt")


@pytest.fixture(scope="session")
def unetplusplus_checkpoint(tmp_path_factory) -> Path:
    return random_box_channel_checkpoint(tmp_path_factory.mktemp("ckpt") / "unetpp.pt", "unetplusplus")


@pytest.fixture(scope="session")
def sam2_checkpoint(tmp_path_factory) -> Path:
    """A random-weight sam2.1 tiny in the official file format: {"model": state_dict}."""
    from polypseg.predictors.sam2 import create_sam2_model, sam2_config_name

    torch.manual_seed(0)
    model = create_sam2_model(sam2_config_name("t"))
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@dataclass(frozen=True)
class LabelStudioStack:
    """A real Label Studio and a real backend process, both on loopback."""

    url: str
    backend_url: str
    login: Any  # backends.labelstudio.launcher.Login
    client: Any  # label-studio-sdk client with the admin's token
    data_dir: Path
    processes: dict[str, Any] = field(default_factory=dict)  # name -> subprocess.Popen

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        headers = {"Authorization": f"Token {self.login.token}"}
        response = requests.request(method, self.url + path, headers=headers, timeout=120, **kwargs)
        assert response.status_code < 400, (path, response.status_code, response.text[:500])
        return response.json() if response.content else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def label_studio_stack(
    folder: Path, files_root: Path, database: dict[str, str] | None = None
) -> Iterator[LabelStudioStack]:
    """Label Studio 1.23 from .venv-labelstudio (make install-labelstudio) serving `files_root`
    as local files, on a fresh SQLite database in `folder` or on the database that `database`
    names in Label Studio's own settings (DJANGO_DB, POSTGRE_*), and `polypseg serve
    labelstudio` connected to it with the admin's legacy token. `processes` holds both servers
    ("label-studio", "backend"); whatever it holds at the end is stopped."""
    from backends.labelstudio import launcher

    executable = Path(
        os.environ.get("POLYPSEG_LABEL_STUDIO", ROOT / ".venv-labelstudio" / "bin" / "label-studio")
    )
    login = launcher.Login("admin@polypseg.test", secrets.token_urlsafe(12), secrets.token_hex(20))
    url = f"http://127.0.0.1:{_free_port()}"
    backend_port = _free_port()
    # Label Studio waits 100 s for a backend's predictions by default; tracking a video on a
    # busy CPU ("Retrieve Predictions" in the video tests) can take longer.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ML_TIMEOUT_PREDICT", "600")
        processes = {
            "label-studio": launcher.start_label_studio(
                executable,
                folder / "data",
                int(url.rsplit(":", 1)[1]),
                login,
                files_root=files_root,
                extra_env=database,
                timeout=600,  # the first start migrates a new database: minutes on a busy 2-core machine
            )
        }
    try:
        processes["backend"] = launcher.start_backend(backend_port, url, login.token, folder / "backend.log")
        yield LabelStudioStack(
            url,
            f"http://127.0.0.1:{backend_port}",
            login,
            launcher.client(url, login.token),
            folder,
            processes,
        )
    finally:
        for process in reversed(list(processes.values())):
            launcher.stop(process)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory, kvasir: Path) -> Iterator[LabelStudioStack]:
    """Label Studio on SQLite with the backend connected (see `label_studio_stack`), serving
    local files from `/` as the quickstart does (a folder is served once a storage names it)."""
    with label_studio_stack(tmp_path_factory.mktemp("label-studio"), Path("/")) as stack:
        yield stack


@contextmanager
def retrain_running(models: Path) -> Iterator[None]:
    """Another process holds MODEL_DIR's retrain lock, as a running retrain does, while the
    block runs; it is killed after it (which releases the lock)."""
    code = (
        "from pathlib import Path; import time; from polypseg.retraining import RetrainLock\n"
        f"lock = RetrainLock(Path({str(models)!r}))\nassert lock.acquire()\n"
        "print('locked', flush=True)\ntime.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()
