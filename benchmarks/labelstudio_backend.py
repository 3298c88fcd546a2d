"""Interactive round trips through the Label Studio backend, on this machine.

The backend runs as Label Studio talks to it: a `polypseg serve labelstudio` process on
loopback, reading Kvasir-SEG images over HTTP from a loopback file server (standing in for
Label Studio's uploads). Measured: the first box on an image (download, decode, model, RLE,
JSON), the next prompt on the same image, and throughput with 8 clients at once over
different images. Reference, in the same run: the core alone in this process
(`read_image` + `predict` + brush RLE), no HTTP.

    python benchmarks/labelstudio_backend.py [--checkpoint FILE] [--requests 48] [--markdown]
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from backends.labelstudio import launcher
from backends.labelstudio.brush import encode_brush_rle
from benchmark_table import print_table
from polypseg.datasets import read_boxes_json
from polypseg.images import read_image
from polypseg.predictors import build_predictor
from polypseg.prompts import Box, Prompt

KVASIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kvasir-seg"
CONFIG = (launcher.CONFIGS / "polyp-image.xml").read_text()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve_folder(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def body(url: str, box: Box, width: int, height: int) -> dict:
    value = {
        "x": 100 * box.x1 / width,
        "y": 100 * box.y1 / height,
        "width": 100 * box.width / width,
        "height": 100 * box.height / height,
        "rotation": 0,
        "rectanglelabels": ["Polyp"],
    }
    region = {"type": "rectanglelabels", "from_name": "box", "to_name": "image", "value": value}
    return {
        "tasks": [{"id": 1, "data": {"image": url}}],
        "label_config": CONFIG,
        "project": "1.1",
        "params": {"context": {"result": [region]}},
    }


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="model to serve (default: the shipped one)")
    parser.add_argument("--requests", type=int, default=48, help="requests in the throughput run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    boxes = read_boxes_json(KVASIR / "bboxes.json")
    names = sorted(boxes)[: max(args.requests, 12)]
    sizes = {n: read_image(KVASIR / "images" / f"{n}.jpg").shape[:2] for n in names}
    files, files_url = serve_folder(KVASIR / "images")
    port = 9300 + int(time.time()) % 500
    extra = {"POLYPSEG_CHECKPOINT": str(args.checkpoint)} if args.checkpoint else {}
    extra["POLYPSEG_THREADS"] = str(args.clients)
    with tempfile.TemporaryDirectory() as folder:
        backend = launcher.start_backend(port, "", "", Path(folder) / "backend.log", extra)
        predict = f"http://127.0.0.1:{port}/predict"
        session = requests.Session()

        def ask(name: str) -> None:
            height, width = sizes[name]
            answer = session.post(
                predict, json=body(f"{files_url}/{name}.jpg", boxes[name][0], width, height)
            )
            answer.raise_for_status()

        try:
            ask(names[-1])  # warm-up
            first = [timed(lambda n=n: ask(n)) for n in names[:10]]
            again = [timed(lambda n=n: ask(n)) for n in names[:10]]

            def client_ask(name: str) -> None:
                height, width = sizes[name]
                b = body(f"{files_url}/{name}.jpg", boxes[name][0], width, height)
                requests.post(predict, json=b, timeout=300).raise_for_status()

            with ThreadPoolExecutor(args.clients) as pool:
                start = time.perf_counter()
                list(pool.map(client_ask, names[: args.requests]))
                served = args.requests / (time.perf_counter() - start)
        finally:
            launcher.stop(backend)
            files.shutdown()

    predictor = build_predictor(None, args.checkpoint)

    def core(name: str) -> None:
        mask = predictor.predict(
            read_image(KVASIR / "images" / f"{name}.jpg"), Prompt(box=boxes[name][0])
        ).mask
        encode_brush_rle(mask)

    core(names[-1])
    core_times = [timed(lambda n=n: core(n)) for n in names[:10]]
    start = time.perf_counter()
    for name in names[: args.requests]:
        core(name)
    core_rate = args.requests / (time.perf_counter() - start)

    rows = [
        ("first box on an image (HTTP)", f"{1000 * statistics.median(first):.0f} ms"),
        ("next prompt, same image (HTTP)", f"{1000 * statistics.median(again):.0f} ms"),
        ("core alone, read + predict + RLE (reference)", f"{1000 * statistics.median(core_times):.0f} ms"),
        ("HTTP round trip / core alone", f"{statistics.median(first) / statistics.median(core_times):.2f}x"),
        (f"throughput, {args.clients} clients", f"{served:.1f} requests/s"),
        ("core alone, one after another (reference)", f"{core_rate:.1f} images/s"),
    ]
    title = (
        f"model {predictor.version}, {platform.machine()}, python {platform.python_version()}, "
        f"{args.requests} images"
    )
    print_table(title, ("measurement", "value"), rows, args.markdown)


if __name__ == "__main__":
    main()
