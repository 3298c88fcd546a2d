"""Retraining after RETRAIN_AFTER annotation events, counted across the backend's worker processes."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from backends.labelstudio.webhooks import EventCounter


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
