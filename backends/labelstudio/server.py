"""The Label Studio ML backend protocol on FastAPI, served by uvicorn.

Routes as `label-studio` 1.2x servers call them: `GET /health`, `POST /setup`, `POST /predict`,
`POST /webhook` (and the older `POST /train`), `GET /versions`, `GET /metrics`. Every failure
is an HTTP error with a JSON reason (`{"status": "error", "error": ...}`), logged; the process
goes on serving.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from backends.labelstudio.brush import encode_brush_rle
from backends.labelstudio.concurrency import (
    ConcurrencySettings,
    ModelBusy,
    ModelSlots,
    apply_torch_threads,
    for_worker_processes,
)
from backends.labelstudio.errors import INPUT_ERROR_STATUS
from backends.labelstudio.label_config import parse_label_config
from backends.labelstudio.model import PolypModel
from backends.labelstudio.settings import Settings
from backends.labelstudio.webhooks import TRAIN_EVENTS, Handler, RetrainTrigger, WebhookQueue, log_event
from backends.request_errors import RequestError
from polypseg.errors import PolypsegError
from polypseg.prompts import Box, Prompt

log = logging.getLogger("polypseg.labelstudio")

MAX_BODY_BYTES = 64 << 20  # a request lists tasks and regions, never media


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"status": "error", "error": reason}, status_code=status)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.seconds: dict[str, float] = defaultdict(float)

    def record(self, route: str, seconds: float, failed: bool) -> None:
        with self._lock:
            self.requests[route] += 1
            self.seconds[route] += seconds
            if failed:
                self.errors[route] += 1

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                route: {
                    "requests": n,
                    "errors": self.errors[route],
                    "mean_seconds": round(self.seconds[route] / n, 4),
                }
                for route, n in self.requests.items()
            }


async def _json_body(request: Request) -> dict[str, Any]:
    if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
        raise RequestError(f"request body is larger than {MAX_BODY_BYTES} bytes", 413)
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(f"request body is larger than {MAX_BODY_BYTES} bytes", 413)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not JSON ({exc})", 400) from None
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", 400)
    return data


def create_app(
    settings: Settings | None = None,
    model: PolypModel | None = None,
    on_webhook: Handler | None = None,
    slots: ModelSlots | None = None,
) -> FastAPI:
    """The application; `model` defaults to the predictor the settings name, loaded now, once.
    Webhooks start retraining where MODEL_DIR is set, else they are logged. `slots` bound the
    requests running the model at once (default: from the environment, see concurrency.py)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings or Settings.from_env()
    warm = model is None  # a model handed in (tests) is the caller's to prepare
    model = model or PolypModel(settings)
    metrics = Metrics()
    webhooks = WebhookQueue(on_webhook or _webhook_handler(settings))
    concurrency: ConcurrencySettings | None = None
    if slots is None:
        concurrency = ConcurrencySettings.from_env()
        slots = ModelSlots(concurrency.limit, concurrency.queue_timeout)
    model_slots = slots

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests run on worker threads; `slots` bounds those running the model, so the pool
        # must not be the tighter bound (its waiters would be served in no promised order).
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(1, settings.threads, model_slots.limit)
        if concurrency is not None:  # a served process (not an app handed its slots by a test)
            apply_torch_threads(concurrency.torch_threads)
            log.info(
                "model: %d request(s) at once, %d torch thread(s) each, queue time-out %.0f s",
                model_slots.limit,
                concurrency.torch_threads,
                model_slots.queue_timeout,
            )
        if warm:
            await run_in_threadpool(_warm_up, model)
        yield

    app = FastAPI(title="polypseg Label Studio ML backend", version=model.version, lifespan=lifespan)
    app.state.model, app.state.webhooks, app.state.metrics = model, webhooks, metrics

    @app.middleware("http")
    async def _guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        # /health stays open (it says only whether the server is up) for health checks and probes.
        if settings.basic_auth_user and request.url.path != "/health" and not _authorised(request, settings):
            response: Response = Response(
                "Unauthorized", status_code=401, headers={"WWW-Authenticate": 'Basic realm="polypseg"'}
            )
        else:
            try:
                response = await call_next(request)
            except Exception:  # answered 500 by the outermost handler, counted here as an error
                metrics.record(route_of(request), time.perf_counter() - started, True)
                raise
        metrics.record(route_of(request), time.perf_counter() - started, response.status_code >= 400)
        return response

    def route_of(request: Request) -> str:
        """By the app's own routes: any other path (a scan, a typo) is "other", so the table
        stays small."""
        return request.url.path if request.url.path in routes else "other"

    @app.exception_handler(RequestError)
    async def _bad_request(request: Request, exc: RequestError) -> JSONResponse:
        status = exc.status or INPUT_ERROR_STATUS
        log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc.reason)
        return _error(status, exc.reason)

    @app.exception_handler(ModelBusy)
    async def _busy(request: Request, exc: ModelBusy) -> JSONResponse:
        log.warning("%s %s -> 503: %s", request.method, request.url.path, exc)
        response = _error(503, str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(PolypsegError)
    async def _bad_input(request: Request, exc: PolypsegError) -> JSONResponse:
        log.warning("%s %s -> %d: %s", request.method, request.url.path, INPUT_ERROR_STATUS, exc)
        return _error(INPUT_ERROR_STATUS, str(exc))

    @app.exception_handler(Exception)
    async def _failure(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); see the backend's log")

    @app.get("/")
    @app.get("/health")
    def health() -> dict[str, Any]:
        return {
            "status": "UP",
            "model_class": type(model).__name__,
            "model": model.predictor.name,
            "model_version": model.version,
        }

    @app.post("/setup")
    async def setup(request: Request) -> dict[str, Any]:
        data = await _json_body(request)
        parse_label_config(data.get("schema"))  # refuse a project polypseg cannot serve
        return {"model_version": model.version}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        data = await _json_body(request)
        params = data.get("params") or {}
        context = params.get("context") if isinstance(params, dict) else None
        if context is not None and not isinstance(context, dict):
            raise RequestError("params.context must be an object", 400)
        # The slot covers the whole prediction, the image download from Label Studio included
        # (on loopback or a LAN a few ms against the model's tens).
        async with model_slots.slot():
            results = await run_in_threadpool(
                model.predict, data.get("tasks"), data.get("label_config"), context
            )
        return {"results": results, "model_version": model.version}

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        data = await _json_body(request)
        event = data.get("action")
        if event not in TRAIN_EVENTS:
            return JSONResponse({"status": "Unknown event", "action": event}, status_code=200)
        webhooks.put(event, data)
        return JSONResponse({"status": "ok", "queued": event}, status_code=201)

    @app.post("/train")
    async def train(request: Request) -> JSONResponse:
        """Label Studio's older way to ask for training: the same as a START_TRAINING webhook."""
        webhooks.put("START_TRAINING", await _json_body(request))
        return JSONResponse({"status": "ok", "queued": "START_TRAINING"}, status_code=201)

    @app.get("/versions")
    def versions() -> dict[str, Any]:
        return {"versions": [model.version]}

    @app.get("/metrics")
    def metrics_route() -> dict[str, Any]:
        predictor = model.predictor
        return {
            "model_version": model.version,
            "routes": metrics.summary(),
            "encoder_runs": predictor.encoder_runs,
            "cached_images": len(predictor.cache),
            "webhooks": {"received": webhooks.received, "handled": webhooks.handled},
            # None where pre-annotation is off (POLYPSEG_PREANNOTATE=0)
            "detector": None
            if model.detector is None
            else {"version": model.detector.version, "mirror_image": model.detector.tta},
            "model_slots": {
                "limit": model_slots.limit,
                "running": model_slots.running,
                "waiting": model_slots.waiting,
                "refused": model_slots.refused,
            },
        }

    routes = frozenset(getattr(route, "path", None) for route in app.routes)  # read by _guard
    return app


def _warm_up(model: PolypModel) -> None:
    """One box on a blank frame before the first request: the first annotator's box would
    otherwise wait for the first forward pass and the lazy imports of the answer's path
    (label-studio-sdk's client and brush encoder), about 2 s on a CPU."""
    started = time.perf_counter()
    blank = np.zeros((256, 256, 3), np.uint8)
    mask = model.predictor.predict(blank, Prompt(box=Box(64, 64, 192, 192))).mask
    encode_brush_rle(mask)
    import label_studio_sdk.client  # noqa: F401 (the media fetcher's token client, imported now)

    log.info("model %s warmed up in %.1f s", model.version, time.perf_counter() - started)


def _webhook_handler(settings: Settings) -> Handler:
    if settings.model_dir is None:
        return log_event
    if not settings.label_studio_url:
        log.warning(
            "MODEL_DIR is set but LABEL_STUDIO_URL is not: webhooks are logged, no retrain pulls labels"
        )
        return log_event
    dataset = settings.dataset or settings.model_dir / "dataset"
    return RetrainTrigger(
        settings.model_dir,
        dataset,
        settings.label_studio_url,
        settings.label_studio_api_key,
        settings.retrain_after,
        settings.retrain_args,
    )


def _authorised(request: Request, settings: Settings) -> bool:
    import base64

    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    # As bytes: compare_digest refuses str holding anything but ASCII.
    return hmac.compare_digest(user.encode(), settings.basic_auth_user.encode()) & hmac.compare_digest(
        password.encode(), settings.basic_auth_pass.encode()
    )


def serve(host: str = "0.0.0.0", port: int = 9090, workers: int = 1, log_level: str = "info") -> None:
    """Run under uvicorn; each worker process loads the model once (settings from the environment).
    With one worker the model loads here, first, so that a bad checkpoint ends with its reason."""
    import uvicorn

    options: dict[str, Any] = {"host": host, "port": port, "log_level": log_level}
    for_worker_processes(workers)  # each worker's share of the cores
    if workers > 1:
        uvicorn.run("backends.labelstudio.server:create_app", factory=True, workers=workers, **options)
    else:
        uvicorn.run(create_app(), **options)
