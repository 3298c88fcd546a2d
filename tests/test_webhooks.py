"""Retraining after RETRAIN_AFTER annotation events, counted across the backend's worker processes;
a retrain a webhook starts while one runs."""

from __future__ import annotations

import json
import multiprocessing
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from backends.labelstudio.webhooks import EventCounter, RetrainTrigger, project_id
from conftest import retrain_running


def _annotate(path: str, events: int, threshold: int, triggers: multiprocessing.Queue) -> None:
    counter = EventCounter(Path(path))
    triggers.put(sum(counter.add(3, threshold) for _ in range(events)))


def test_worker_processes_count_into_one_total(tmp_path: Path) -> None:
    """Four processes, 25 events each, a retrain every 7: 14 retrains in all, 2 events left over,
    however the processes interleave."""
    path = tmp_path / "retrain-events.json"
    context = multiprocessing.get_context("spawn")
    triggers = context.Queue()
    workers = [context.Process(target=_annotate, args=(str(path), 25, 7, triggers)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert sum(triggers.get(timeout=10) for _ in workers) == 100 // 7
    assert json.loads(path.read_text()) == {"3": 100 % 7}


def test_counts_per_project_reset_and_survive_a_garbled_file(tmp_path: Path) -> None:
    counter = EventCounter(tmp_path / "models" / "retrain-events.json")
    assert [counter.add(1, 3) for _ in range(4)] == [False, False, True, False]
    assert not counter.add(2, 3)
    counter.reset(1)  # "Start training" retrains now and counts afresh
    assert json.loads(counter.path.read_text()) == {"1": 0, "2": 1}
    counter.path.write_text("{ half")
    assert not counter.add(1, 3) and json.loads(counter.path.read_text()) == {"1": 1}


def test_the_project_of_each_event_shape_label_studio_sends() -> None:
    """Label Studio 1.23.2, `label_studio/ml/api_connector.py`: webhooks carry the serialised
    project, the older /train request the project's uid."""
    assert project_id({"action": "ANNOTATION_CREATED", "project": {"id": 3, "title": "polyps"}}) == 3
    assert project_id({"project": "12.1732870000"}) == 12
    assert project_id({"project": 5}) == 5
    for payload in (
        {},
        {"project": None},
        {"project": "polyps"},
        {"project": {"id": "x"}},
        {"project": True},
    ):
        assert project_id(payload) is None


def test_a_retrain_started_during_a_retrain_pulls_its_project_and_is_queued_forced(tmp_path: Path) -> None:
    """ "Start training" while another process retrains: the retrain it starts pulls its own
    project (here Label Studio refuses, which it logs), does not train, and leaves a forced
    request for the running one, which trains once more for it."""
    asked: list[str] = []

    class LabelStudio(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(403)
            self.end_headers()

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), LabelStudio)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    models = tmp_path / "models"
    try:
        with retrain_running(models):
            url = f"http://127.0.0.1:{server.server_address[1]}"
            trigger = RetrainTrigger(
                models, tmp_path / "dataset", url, "token", extra_args=("--device", "cpu")
            )
            # as the older /train route brings it (Label Studio's project uid, "id.created")
            trigger("START_TRAINING", {"project": "3.1732870000", "annotations": []})
            (started,) = trigger.started
            assert started.wait(timeout=120) == 0
    finally:
        server.shutdown()
    assert asked and all(path.startswith("/api/projects/3") for path in asked)  # its own project
    assert (models / "retrain.pending").read_text() == "force\n"
    assert "a retrain is running" in (models / "retrain.log").read_text()
