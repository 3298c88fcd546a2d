"""Answer times of the Label Studio backend under a team's load: annotators who each draw a box
every ~2 s (a realistic pace: look at the frame, draw, check the mask).

The backend runs as Label Studio talks to it: a `polypseg serve labelstudio` process on
loopback reading Kvasir-SEG images over HTTP from a loopback file server. Each annotator sends
a smart box on a new image (download, model, brush RLE, JSON), then thinks 1.5-2.5 s. Measured:
one annotator alone (median), then eight at once (median, p95), for each `--workers` count;
the goal is p95 with eight within 1.5x of one annotator's median.

    python benchmarks/labelstudio_team_load.py [--workers 1 2] [--seconds 40] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from labelstudio_backend import KVASIR, body, serve_folder

from backends.labelstudio import launcher
from benchmark_table import print_table
from polypseg.datasets import read_boxes_json
from polypseg.images import read_image

THINK = (1.5, 2.5)  # seconds between one annotator's boxes


def start_backend(port: int, workers: int, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "polypseg.cli", "serve", "labelstudio", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    launcher.wait_for(f"http://127.0.0.1:{port}/health", process, 180, log)
    return process


def annotators(count: int, seconds: float, ask: Callable[[str], float], names: list[str]) -> list[float]:
    """`count` annotators boxing images for `seconds`; every answer time."""
    times: list[float] = []
    lock = threading.Lock()
    until = time.monotonic() + seconds

    def annotator(seed: int) -> None:
        rng = random.Random(seed)
        time.sleep(rng.uniform(*THINK))  # they do not all start on the same instant
        while time.monotonic() < until:
            elapsed = ask(rng.choice(names))
            with lock:
                times.append(elapsed)
            time.sleep(rng.uniform(*THINK))

    threads = [threading.Thread(target=annotator, args=(seed,)) for seed in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=40, help="per measurement")
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--concurrency", help="POLYPSEG_MODEL_CONCURRENCY (default: the backend's)")
    parser.add_argument("--checkpoint", type=Path, help="model to serve (default: the shipped one)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    boxes = read_boxes_json(KVASIR / "bboxes.json")
    names = sorted(boxes)[:200]
    sizes = {n: read_image(KVASIR / "images" / f"{n}.jpg").shape[:2] for n in names}
    files, files_url = serve_folder(KVASIR / "images")
    env = {"POLYPSEG_THREADS": str(args.annotators)}
    if args.concurrency:
        env["POLYPSEG_MODEL_CONCURRENCY"] = args.concurrency
    if args.checkpoint:
        env["POLYPSEG_CHECKPOINT"] = str(args.checkpoint)
    rows = []
    try:
        for workers in args.workers:
            port = launcher_port()
            with tempfile.TemporaryDirectory() as folder:
                backend = start_backend(port, workers, Path(folder) / "backend.log", env)
                predict = f"http://127.0.0.1:{port}/predict"
                failed: list[int] = []

                def ask(name: str, predict: str = predict, failed: list[int] = failed) -> float:
                    height, width = sizes[name]
                    started = time.perf_counter()
                    answer = requests.post(
                        predict,
                        json=body(f"{files_url}/{name}.jpg", boxes[name][0], width, height),
                        timeout=120,
                    )
                    if answer.status_code != 200:
                        failed.append(answer.status_code)
                    return time.perf_counter() - started

                try:
                    for name in names[:4]:
                        ask(name)  # warm-up (every worker process)
                    load_before = os.getloadavg()[0]
                    alone = annotators(1, args.seconds, ask, names)
                    team = annotators(args.annotators, args.seconds, ask, names)
                    load_after = os.getloadavg()[0]
                finally:
                    launcher.stop(backend)
            rows.append(
                (workers, statistics.median(alone), len(alone), statistics.median(team), p95(team), len(team),
                 len(failed), load_before, load_after)
            )  # fmt: skip
    finally:
        files.shutdown()

    title = (
        f"{os.cpu_count()} cores, think time {THINK[0]}-{THINK[1]} s, {args.seconds:.0f} s per measurement, "
        f"POLYPSEG_MODEL_CONCURRENCY={args.concurrency or 'default'}"
    )
    header = (
        "workers", "1 annotator: median ms (n)", "8 annotators: median ms", "p95 ms (n)", "p95 / 1 median",
        "failed", "load average (1 min)",
    )  # fmt: skip
    cells = [
        (workers, f"{1000 * one:.0f} ({n_one})", f"{1000 * median:.0f}", f"{1000 * high:.0f} ({n_team})",
         f"{high / one:.2f}x", failures, f"{before:.1f} -> {after:.1f}")
        for workers, one, n_one, median, high, n_team, failures, before, after in rows
    ]  # fmt: skip
    print_table(title, header, cells, args.markdown)


def launcher_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
