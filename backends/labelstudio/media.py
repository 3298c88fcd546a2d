"""Fetching a task's image or video: Label Studio uploads, local-files storage, cloud storage
(presigned through Label Studio), plain URLs and data: URLs.

Label Studio's token goes to Label Studio's own host and nowhere else: not to another host
named in the task, and not across a redirect (requests drops the Authorization header when a
redirect leaves the host).
"""

from __future__ import annotations

import base64
import binascii
import logging
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from backends.labelstudio.errors import MediaError

log = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi", "gcs")
CHUNK = 1 << 20


class LabelStudioAuth:
    """The Authorization header for Label Studio: `Token <key>` for a legacy token, `Bearer
    <access>` for a personal access token (a JWT refresh token, which label-studio-sdk's client
    exchanges for short-lived access tokens and renews)."""

    def __init__(self, url: str, api_key: str) -> None:
        self.url = url
        self.api_key = api_key
        self._client: Any = None  # label_studio_sdk.LabelStudio, made on first use
        self._lock = threading.Lock()

    def header(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        with self._lock:
            if self._client is None:
                from label_studio_sdk.client import LabelStudio

                try:
                    self._client = LabelStudio(base_url=self.url, api_key=self.api_key)
                except Exception as exc:  # the SDK raises its ApiError for an expired token
                    raise MediaError(f"LABEL_STUDIO_API_KEY is not usable: {exc}") from None
        try:
            # The SDK's own request headers: the one place it keeps the token logic.
            authorization = self._client._client_wrapper.get_headers()["Authorization"]
        except Exception as exc:
            raise MediaError(f"Label Studio refused to renew the access token: {exc}") from None
        return {"Authorization": authorization}


def split_url(url: str) -> urllib.parse.SplitResult:
    """A task's media URL in parts; one that cannot be parsed (e.g. `http://[host/x.jpg`) is
    a MediaError naming it, never a crash of the request that brought it."""
    try:
        return urllib.parse.urlsplit(url)
    except ValueError as exc:
        raise MediaError(f"{url}: not a valid URL ({exc})") from None


def media_suffix(url: str, default: str, length: int) -> str:
    """The file suffix of the media at `url` (lower case, at most `length` characters)."""
    return (Path(split_url(url).path).suffix.lower() or default)[:length]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = split_url(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # a port that is not a number from 0 to 65535
        raise MediaError(f"{url}: not a valid URL (its port)") from None
    return parts.scheme, (parts.hostname or "").lower(), port


class MediaFetcher:
    def __init__(
        self, label_studio_url: str, api_key: str, max_bytes: int = 2 << 30, timeout: float = 60
    ) -> None:
        self.label_studio_url = label_studio_url.rstrip("/")
        self.auth = LabelStudioAuth(self.label_studio_url, api_key)
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._local = threading.local()

    def resolve(self, url: str, task_id: int | None = None) -> str:
        """The http(s) URL to read `url` from."""
        scheme = split_url(url).scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise MediaError(f"{url}: cloud storage links need the task id to be presigned")
            encoded = base64.urlsafe_b64encode(url.encode()).decode()
            return self._on_label_studio(f"/tasks/{task_id}/presign/?fileuri={encoded}", url)
        if scheme in ("http", "https"):
            return url
        if not scheme and url.startswith("/"):
            return self._on_label_studio(url, url)
        raise MediaError(
            f"{url}: not a URL polypseg can read (http, https, Label Studio paths, cloud storage)"
        )

    def _on_label_studio(self, path: str, original: str) -> str:
        if not self.label_studio_url:
            raise MediaError(
                f"{original}: set LABEL_STUDIO_URL (and LABEL_STUDIO_API_KEY) so that the backend "
                "can read files stored in Label Studio"
            )
        return self.label_studio_url + path

    def _headers_for(self, url: str) -> dict[str, str]:
        if self.label_studio_url and _origin(url) == _origin(self.label_studio_url):
            return self.auth.header()
        return {}

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    @contextmanager
    def _open(self, url: str, task_id: int | None) -> Iterator[requests.Response]:
        resolved = self.resolve(url, task_id)
        try:
            response = self._session().get(
                resolved, headers=self._headers_for(resolved), stream=True, timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise MediaError(f"{url}: could not be fetched ({type(exc).__name__}: {exc})", 502) from None
        with response:
            if response.status_code in (401, 403):
                hint = (
                    " (check LABEL_STUDIO_API_KEY)"
                    if self._headers_for(response.url) or self._headers_for(resolved)
                    else ""
                )
                raise MediaError(f"{url}: access refused ({response.status_code}){hint}")
            if response.status_code == 404:
                raise MediaError(f"{url}: not found (404)")
            if response.status_code >= 400:
                raise MediaError(f"{url}: the server answered {response.status_code}", 502)
            length = response.headers.get("Content-Length", "")
            declared = int(length) if length.isdigit() else 0  # the stream is counted anyway
            if declared > self.max_bytes:
                raise MediaError(f"{url}: {declared} bytes is over the limit of {self.max_bytes}", 413)
            yield response

    def _chunks(self, response: requests.Response, url: str) -> Iterator[bytes]:
        total = 0
        try:
            for chunk in response.iter_content(CHUNK):
                total += len(chunk)
                if total > self.max_bytes:
                    raise MediaError(f"{url}: larger than the limit of {self.max_bytes} bytes", 413)
                yield chunk
        except requests.RequestException as exc:
            raise MediaError(f"{url}: download broke off ({exc})", 502) from None

    def fetch(self, url: str, task_id: int | None = None) -> bytes:
        """The whole file at `url` (an image)."""
        if url.startswith("data:"):
            return _data_url(url)
        with self._open(url, task_id) as response:
            return b"".join(self._chunks(response, url))

    @contextmanager
    def download(self, url: str, task_id: int | None = None) -> Iterator[Path]:
        """`url` (a video) in a temporary file, written in chunks, removed afterwards."""
        suffix = media_suffix(url, ".mp4", 8)
        with tempfile.TemporaryDirectory(prefix="polypseg-") as folder:
            path = Path(folder) / f"media{suffix}"
            with self._open(url, task_id) as response, path.open("wb") as out:
                for chunk in self._chunks(response, url):
                    out.write(chunk)
            yield path


def _data_url(url: str) -> bytes:
    header, _, payload = url.partition(",")
    if not header.endswith(";base64"):
        raise MediaError("data: URLs must be base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError("data: URL holds invalid base64") from None
