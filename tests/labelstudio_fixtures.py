"""Helpers for the Label Studio backend tests: a file server on loopback that stands for Label
Studio's media URLs (token-checked) and for another host (which must never see the token),
and Label Studio request bodies."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TOKEN = "test-token-1234"
CONFIGS = Path(__file__).resolve().parent.parent / "backends" / "labelstudio" / "configs"


@dataclass
class FileServer:
    """Serves files from `root`: /data/upload/NAME wants `Authorization: Token TOKEN`,
    /plain/NAME is open, /redirect/NAME sends to `redirect_to`/plain/NAME, /text is not an image."""

    root: Path
    redirect_to: str = ""
    seen_authorization: list[str | None] = field(default_factory=list)
    url: str = ""


@contextmanager
def file_server(root: Path, redirect_to: str = "") -> Iterator[FileServer]:
    state = FileServer(root, redirect_to)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", kind: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.seen_authorization.append(self.headers.get("Authorization"))
            path = self.path.split("?")[0]
            if path == "/text":
                return self._send(200, b"<html>not an image</html>", "text/html")
            if path.startswith("/redirect/"):
                self.send_response(302)
                self.send_header("Location", f"{state.redirect_to}/plain/{path.split('/')[-1]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if path.startswith("/data/upload/") and self.headers.get("Authorization") != f"Token {TOKEN}":
                return self._send(401, b"unauthorised")
            file = state.root / path.split("/")[-1]
            if not (path.startswith(("/data/upload/", "/plain/")) and file.is_file()):
                return self._send(404, b"no such file")
            return self._send(200, file.read_bytes(), "application/octet-stream")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def image_config() -> str:
    return (CONFIGS / "polyp-image.xml").read_text()


def rectangle(box: tuple[float, float, float, float], width: int, height: int, label: str = "Polyp") -> dict:
    """A smart rectangle as Label Studio sends it in `params.context.result`."""
    x1, y1, x2, y2 = box
    return {
        "type": "rectanglelabels",
        "from_name": "box",
        "to_name": "image",
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "origin": "manual",
        "value": {
            "x": 100 * x1 / width,
            "y": 100 * y1 / height,
            "width": 100 * (x2 - x1) / width,
            "height": 100 * (y2 - y1) / height,
            "rotation": 0,
            "rectanglelabels": [label],
        },
    }


def predict_body(url: str, regions: list[dict] | None, config: str | None = None, **task: Any) -> dict:
    params: dict[str, Any] = {"login": None, "password": None}
    if regions is not None:
        params["context"] = {"result": regions}
    return {
        "tasks": [{"id": 7, "data": {"image": url}, **task}],
        "project": "3.1732870000",
        "label_config": config or image_config(),
        "params": params,
    }
