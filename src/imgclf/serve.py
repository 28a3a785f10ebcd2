"""The HTTP service: a FastAPI app that classifies uploaded images with a model loaded once.

Endpoints: `POST /predict` (multipart field `file`, repeatable), `GET /health`,
`GET /metadata`, the web page at `/`, and FastAPI's OpenAPI docs at `/docs`.
Requests are decoded in the thread pool, and a `MicroBatcher` collects the
images of concurrent requests into one model call on a single inference thread.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from imgclf.inference import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    LoadedModel,
    ModelMetadata,
    image_array,
    load_model,
    top_k,
)

log = logging.getLogger("imgclf.serve")

WEB_DIR = Path(str(resources.files("imgclf") / "web"))

# ImageError.kind -> HTTP status
STATUS_FOR_IMAGE_ERROR = {"not_an_image": 415, "undecodable": 400, "too_large": 413}


@dataclass(frozen=True)
class ServiceSettings:
    model: Path
    max_upload_bytes: int = 10 * 1024 * 1024  # whole request body
    max_pixels: int = DEFAULT_MAX_PIXELS  # width x height of one image, read from its header
    max_batch_size: int = 16  # images per model call
    max_wait_ms: float = 5.0  # time the first image of a batch waits for more


# --- logging ------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_json_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# --- batching -----------------------------------------------------------------------------


class MicroBatcher:
    """Collect single images from concurrent requests into batched model calls.

    The first image waits at most `max_wait_ms` for others; a batch is also cut
    at `max_batch_size`. Model calls run one at a time on a dedicated thread, so
    the event loop keeps accepting requests while the model runs.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], *, max_batch_size: int,
                 max_wait_ms: float):
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-inference")
        self._task: asyncio.Task | None = None
        self.batches = 0  # model calls so far
        self.images = 0  # images classified so far
        self.largest_batch = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="imgclf-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def predict(self, image: np.ndarray) -> np.ndarray:
        """Classify one (size, size, 3) image; returns its (n_classes,) probabilities."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((image, future))
        return await future

    async def _collect(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    batch.append(self._queue.get_nowait())
                else:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except (asyncio.QueueEmpty, TimeoutError):
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            # Callers that disconnected have cancelled their futures.
            batch = [(image, future) for image, future in batch if not future.done()]
            if not batch:
                continue

            images = np.stack([image for image, _ in batch])  # (batch, size, size, 3)
            try:
                probabilities = await loop.run_in_executor(self._executor, self._predict, images)
            except Exception as error:  # every waiting request gets the error, the loop goes on
                log.exception("model call failed", extra={"fields": {"batch_size": len(batch)}})
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue

            self.batches += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            for (_, future), row in zip(batch, probabilities, strict=True):
                if not future.done():
                    future.set_result(row)


# --- request size -------------------------------------------------------------------------


class BodySizeLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, by Content-Length and while reading.

    A chunked upload without Content-Length is counted as it arrives. Once it
    passes the limit, the client gets the 413 at once and the app receives a
    client disconnect. Whatever the app sends afterwards is dropped.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(send, int(declared))
            return

        received = 0
        started = False
        rejected = False

        async def counting_receive():
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request" and not rejected:
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    rejected = True
                    await self._reject(send, received)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _reject(self, send, size: int) -> None:
        log.warning("request body too large", extra={"fields": {
            "status": 413, "body_bytes": size, "limit_bytes": self.max_bytes}})
        response = JSONResponse(status_code=413, content={"detail": (
            f"request body of {size:,} bytes or more exceeds the limit of {self.max_bytes:,} "
            "bytes; send a smaller image or start the service with a larger --max-upload-mb"
        )})
        await response({"type": "http"}, None, send)


# --- the app ------------------------------------------------------------------------------


def create_app(settings: ServiceSettings) -> FastAPI:
    """Load the model (raising ModelError before any port is bound) and build the app."""
    loaded: LoadedModel = load_model(settings.model)
    metadata = loaded.metadata
    log.info("model loaded", extra={"fields": {
        "model": str(settings.model), "classes": metadata.classes, "image_size": metadata.image_size}})

    batcher = MicroBatcher(loaded.predictor.predict, max_batch_size=settings.max_batch_size,
                           max_wait_ms=settings.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        log.info("service started", extra={"fields": {
            "max_batch_size": settings.max_batch_size, "max_wait_ms": settings.max_wait_ms}})
        yield
        await batcher.stop()
        log.info("service stopped", extra={"fields": {
            "batches": batcher.batches, "images": batcher.images}})

    app = FastAPI(
        title="imgclf",
        description=f"Image classifier over {len(metadata.classes)} classes: {', '.join(metadata.classes)}",
        lifespan=lifespan,
    )
    app.state.batcher = batcher

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:12]
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["x-request-id"] = request_id
        log.info("request", extra={"fields": {
            "request_id": request_id, "method": request.method, "path": request.url.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        }})
        return response

    @app.exception_handler(RequestValidationError)
    async def explain_validation_error(request: Request, error: RequestValidationError):
        missing_file = any(
            problem.get("type") == "missing" and "file" in problem.get("loc", ())
            for problem in error.errors()
        )
        detail = (
            "missing file field: send each image as a multipart/form-data field named 'file', "
            "e.g. curl -F file=@photo.jpg"
            if missing_file else "invalid request: " + "; ".join(
                f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
                for problem in error.errors()
            )
        )
        log.warning("request rejected", extra={"fields": {"status": 422, "detail": detail}})
        return JSONResponse(status_code=422, content={"detail": detail})

    @app.get("/health")
    async def health() -> dict:
        """Report that the model is loaded and how many batches it has run."""
        return {"status": "ok", "batches": batcher.batches, "images": batcher.images,
                "largest_batch": batcher.largest_batch}

    @app.get("/metadata")
    async def get_metadata() -> dict:
        """Describe the model: class names, image size, backbone, and the upload limits."""
        return {
            **metadata.model_dump(),
            "model": settings.model.name,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_pixels": settings.max_pixels,
        }

    @app.post("/predict")
    async def predict(
        file: Annotated[list[UploadFile], File(description="one or more images (JPEG, PNG, GIF, BMP, WebP, TIFF)")],
        top: Annotated[int, Query(ge=1, description="classes to return per image, most probable first")] = 3,
    ) -> dict:
        """Classify each uploaded image; returns the top classes and all class probabilities."""
        arrays = []
        for index, upload in enumerate(file):
            arrays.append(await _decode_upload(upload, index, metadata, settings.max_pixels))

        rows = await asyncio.gather(*(batcher.predict(array) for array in arrays))
        count = min(top, len(metadata.classes))
        return {"predictions": [
            {
                "filename": upload.filename,
                "top": [{"class": name, "probability": p} for name, p in top_k(row, metadata.classes, count)],
                "probabilities": {name: float(p) for name, p in zip(metadata.classes, row, strict=True)},
            }
            for upload, row in zip(file, rows, strict=True)
        ]}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    # Added last, so it is the outermost middleware: an oversized body is
    # rejected before logging, routing or multipart parsing see it.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    return app


async def _decode_upload(
    upload: UploadFile, index: int, metadata: ModelMetadata, max_pixels: int
) -> np.ndarray:
    """Read and decode one upload, or raise HTTPException with the status for its problem."""
    name = upload.filename or f"file #{index + 1}"
    declared = (upload.content_type or "").split(";")[0].strip().lower()
    if declared and not (declared.startswith("image/") or declared == "application/octet-stream"):
        raise _reject(415, f"{name}: declared type {declared!r} is not an image type; send an image file")

    data = await upload.read()
    try:
        return await run_in_threadpool(
            functools.partial(image_array, **metadata.conversion(), max_pixels=max_pixels),
            data, metadata.image_size,
        )
    except ImageError as error:
        raise _reject(STATUS_FOR_IMAGE_ERROR[error.kind], f"{name}: {error}") from None


def _reject(status: int, detail: str) -> HTTPException:
    log.warning("upload rejected", extra={"fields": {"status": status, "detail": detail}})
    return HTTPException(status_code=status, detail=detail)
