"""Bounded, fair model concurrency in the Label Studio backend: at most N requests run the model,
the rest wait in arrival order, and a request that waited too long is answered 503 with
Retry-After. Checked on `ModelSlots` alone and over real HTTP against the backend served
in-process (uvicorn on a loopback port, the shipped model, real Kvasir-SEG images)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from backends.labelstudio.concurrency import (
    ConcurrencySettings,
    ModelBusy,
    ModelSlots,
    default_concurrency,
    threads_per_request,
)
from backends.labelstudio.model import PolypModel
from backends.labelstudio.server import create_app
from backends.labelstudio.settings import Settings
from conftest import KVASIR, _free_port
from labelstudio_fixtures import TOKEN, file_server, predict_body, rectangle
from polypseg.images import read_image
from polypseg.predictors import build_predictor


def test_waiters_get_the_slot_in_arrival_order_and_newcomers_queue_behind_them() -> None:
    async def scenario() -> list[str]:
        slots = ModelSlots(limit=1, queue_timeout=5)
        order: list[str] = []
        release_first = asyncio.Event()

        async def request(name: str, hold: asyncio.Event | None = None) -> None:
            async with slots.slot():
                order.append(name)
                if hold is not None:
                    await hold.wait()

        first = asyncio.create_task(request("first", release_first))
        await asyncio.sleep(0)
        waiters = []
        for name in ("a", "b", "c", "d"):
            waiters.append(asyncio.create_task(request(name)))
            await asyncio.sleep(0)  # each is queued before the next arrives
        assert (slots.running, slots.waiting) == (1, 4)
        release_first.set()
        # Arriving just as the slot frees: it must not overtake the four already waiting.
        late = asyncio.create_task(request("late"))
        await asyncio.gather(first, late, *waiters)
        assert (slots.running, slots.waiting) == (0, 0)
        return order

    assert asyncio.run(scenario()) == ["first", "a", "b", "c", "d", "late"]


def test_a_wait_past_the_time_out_is_refused_and_frees_its_place() -> None:
    async def scenario() -> tuple[ModelBusy, float, int]:
        slots = ModelSlots(limit=1, queue_timeout=0.3)
        hold = asyncio.Event()

        async def holder() -> None:
            async with slots.slot():
                await hold.wait()

        task = asyncio.create_task(holder())
        await asyncio.sleep(0)
        started = time.monotonic()
        with pytest.raises(ModelBusy) as refused:
            async with slots.slot():
                pass
        waited = time.monotonic() - started
        waiting_after = slots.waiting
        hold.set()
        await task
        async with slots.slot():  # the slot is free again for the next request
            pass
        return refused.value, waited, waiting_after

    busy, waited, waiting_after = asyncio.run(scenario())
    assert 0.3 <= waited < 2 and waiting_after == 0
    assert busy.retry_after >= 1 and "busy" in str(busy)


def test_cores_are_shared_without_oversubscription() -> None:
    # One worker on 2 cores: two requests at once, one torch thread each.
    assert default_concurrency(2, 1) == 2 and threads_per_request(2, 1, 2) == 1
    # Two workers on 16 cores: 8 requests each, one thread each; or 1 request with 8 threads.
    assert default_concurrency(16, 2) == 8 and threads_per_request(16, 2, 8) == 1
    assert threads_per_request(16, 2, 1) == 8
    assert default_concurrency(1, 4) == 1 and threads_per_request(1, 4, 1) == 1


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYPSEG_MODEL_CONCURRENCY", "3")
    monkeypatch.setenv("POLYPSEG_QUEUE_TIMEOUT", "2.5")
    settings = ConcurrencySettings.from_env()
    assert (settings.limit, settings.queue_timeout) == (3, 2.5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POLYPSEG_MODEL_CONCURRENCY": "0"}, "POLYPSEG_MODEL_CONCURRENCY='0': at least 1"),
        # 0.5 would have been int(0.5) == 0 requests at a time: refused, not truncated.
        ({"POLYPSEG_MODEL_CONCURRENCY": "0.5"}, "POLYPSEG_MODEL_CONCURRENCY='0.5' is not a whole number"),
        ({"POLYPSEG_QUEUE_TIMEOUT": "soon"}, "POLYPSEG_QUEUE_TIMEOUT='soon' is not a number"),
        ({"POLYPSEG_QUEUE_TIMEOUT": "0"}, "POLYPSEG_QUEUE_TIMEOUT='0': a number above 0"),
    ],
)
def test_a_bad_concurrency_setting_stops_the_server_with_its_reason(env: dict, message: str) -> None:
    command = [sys.executable, "-m", "polypseg.cli", "serve", "labelstudio", "--port", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


class GatedModel(PolypModel):
    """The real model, which records the image of each request it starts and, while `gate` is
    closed, holds it there: a test can tell what runs, what waits, and in which order."""

    def __init__(self, settings: Settings, predictor: Any) -> None:
        super().__init__(settings, predictor)
        self.gate = threading.Event()
        self.started: list[str] = []

    def predict(self, tasks: Any, label_config: str | None, context: dict[str, Any] | None) -> list:
        self.started.append(tasks[0]["data"]["image"])
        self.gate.wait(timeout=60)
        return super().predict(tasks, label_config, context)


@contextmanager
def served(app: Any) -> Iterator[str]:
    """`app` under uvicorn in this process, on a loopback port; its URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the in-process server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def predictor() -> Any:
    return build_predictor()


@pytest.fixture(scope="module")
def images(kvasir: Path, boxes) -> Iterator[tuple[str, dict]]:
    with file_server(kvasir / "images") as files:
        yield files.url, boxes


def body_for(name: str, boxes: dict) -> dict:
    """A smart rectangle on the polyp of Kvasir-SEG image `name`, as Label Studio sends it."""
    box = boxes[name][0]
    height, width = read_image(KVASIR / "images" / f"{name}.jpg").shape[:2]
    return predict_body(
        f"/data/upload/{name}.jpg", [rectangle((box.x1, box.y1, box.x2, box.y2), width, height)]
    )


def slots_state(url: str) -> dict:
    return requests.get(url + "/metrics", timeout=10).json()["model_slots"]


def running_one_waiting(waiting: int) -> dict:
    return {"limit": 1, "running": 1, "waiting": waiting, "refused": 0}


def wait_until(condition: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def gated_app(files_url: str, predictor: Any, slots: ModelSlots) -> tuple[Any, GatedModel]:
    settings = Settings(label_studio_url=files_url, label_studio_api_key=TOKEN)
    model = GatedModel(settings, predictor)
    return create_app(settings, model, on_webhook=lambda e, p: None, slots=slots), model


def test_over_http_requests_run_one_at_a_time_in_arrival_order(images, predictor) -> None:
    files_url, boxes = images
    names = sorted(boxes)[:5]
    app, model = gated_app(files_url, predictor, ModelSlots(limit=1, queue_timeout=60))
    answers: dict[str, int] = {}

    def ask(url: str, name: str) -> None:
        answer = requests.post(url + "/predict", json=body_for(name, boxes), timeout=120)
        regions = answer.json()["results"][0]["result"] if answer.status_code == 200 else []
        answers[name] = answer.status_code if regions and regions[0]["type"] == "brushlabels" else -1

    with served(app) as url:
        threads = []
        for position, name in enumerate(names):
            threads.append(threading.Thread(target=ask, args=(url, name)))
            threads[-1].start()
            # the first runs (held at the gate); each later one is queued before the next is sent
            wait_until(
                lambda n=position: slots_state(url)["waiting"] == n and slots_state(url)["running"] == 1
            )
        assert len(model.started) == 1  # only the first is running the model
        model.gate.set()
        for thread in threads:
            thread.join(timeout=120)
        assert slots_state(url) == {"limit": 1, "running": 0, "waiting": 0, "refused": 0}
    assert model.started == [f"/data/upload/{name}.jpg" for name in names]
    assert answers == {name: 200 for name in names}


def test_over_http_a_request_that_waited_too_long_gets_503_with_retry_after(images, predictor) -> None:
    files_url, boxes = images
    first, second, third = sorted(boxes)[:3]
    app, model = gated_app(files_url, predictor, ModelSlots(limit=1, queue_timeout=0.5))
    held: dict[str, int] = {}

    def ask_first(url: str) -> None:
        held["status"] = requests.post(url + "/predict", json=body_for(first, boxes), timeout=120).status_code

    with served(app) as url:
        running = threading.Thread(target=ask_first, args=(url,))
        running.start()
        wait_until(lambda: slots_state(url)["running"] == 1)
        started = time.monotonic()
        refused = requests.post(url + "/predict", json=body_for(second, boxes), timeout=30)
        waited = time.monotonic() - started
        assert refused.status_code == 503 and 0.5 <= waited < 10
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["status"] == "error" and "model is busy" in refused.json()["error"]
        model.gate.set()
        running.join(timeout=120)
        assert held["status"] == 200  # the request holding the slot was not disturbed
        again = requests.post(url + "/predict", json=body_for(third, boxes), timeout=120)
        assert again.status_code == 200 and again.json()["results"][0]["result"][0]["type"] == "brushlabels"
        assert slots_state(url) == {"limit": 1, "running": 0, "waiting": 0, "refused": 1}
    assert model.started == [f"/data/upload/{first}.jpg", f"/data/upload/{third}.jpg"]
