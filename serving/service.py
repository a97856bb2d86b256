"""The BentoML service: HTTP in, batched ONNX Runtime, PNG/JSON out. It wires pure functions together.

Batching: every request's image (already decoded and squished to the model size) goes through one
`CorkDispatcher`, BentoML's own adaptive-batching dispatcher, held in this process. We do not route it
through a `batchable=True` API called from another API: in BentoML that call goes through the service's
internal proxy, which serialises the arrays to JSON (1.4.30) or loses 4-10 % of requests under load
(aiohttp disconnects, 1.4.31+, BentoML issue 5540). Calling the dispatcher directly keeps its algorithm
(latency-aware batch windows, `max_batch_size`, load shedding after `max_latency_ms`) with zero copies.
"""
from __future__ import annotations

import asyncio
import logging
import re
import os
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs
from typing import Annotated

import anyio
import bentoml
import numpy as np
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from starlette.responses import JSONResponse, Response

from . import imaging, tiling
from .config import ConfigError, ServeConfig
from .runtime import ContractError, SegmentationRuntime

log = logging.getLogger("serving.service")

try:
    CONFIG = ServeConfig.from_env()
except ConfigError as exc:  # a bad setting stops `bentoml serve` with one line
    raise SystemExit(f"error: {exc}") from None

_SHED = object()
_FIELD_NAME = re.compile(rb'(?i)content-disposition:\s*form-data;[^\r\n]*?\bname="([^"]*)"')
_FIELDS = {"/stats": {"image", "rle", "tile"}, "/segment": {"image", "tile"}, "/overlay": {"image", "tile"}}
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
RETRY_AFTER_S = "1"


def admit(in_flight: int, seconds_per_image: float, max_latency_s: float) -> bool:
    """Admission control: take a request only if the images ahead of it, at the measured model time per
    image, would be done within max latency. Beyond that the batcher would shed it anyway, but only after
    it had waited max_latency_ms; refusing at the door answers 503 in milliseconds and spends no decode."""
    return (in_flight + 1) * seconds_per_image <= max_latency_s


_batch_hist = bentoml.metrics.Histogram(
    name="seg_batch_size", documentation="Images per ONNX Runtime call (adaptive batching)",
    buckets=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64],
)
_infer_hist = bentoml.metrics.Histogram(
    name="seg_batch_seconds", documentation="Seconds per ONNX Runtime call", buckets=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3],
)


def _overloaded() -> JSONResponse:
    return JSONResponse({"error": "server is overloaded: retry after the Retry-After delay"}, status_code=503,
                        headers={"Retry-After": RETRY_AFTER_S})


def _unauthorized() -> JSONResponse:
    return JSONResponse({"error": "missing or wrong bearer token: send `Authorization: Bearer <SEG_API_TOKEN>`"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


class EdgeMiddleware:
    """Checks at the edge, before BentoML parses anything, so bad uploads get a 4xx that says what to fix
    (BentoML answers a malformed multipart body with 500), plus `Retry-After` on every 503 (our load
    shedding and BentoML's own max_concurrency refusal)."""

    ROUTES = tuple(_FIELDS)

    def __init__(self, app):
        self.app = app
        config = ServeConfig.from_env()  # read when the app is built, like the service's own config
        self.max_bytes = config.max_bytes
        self.max_body = config.max_bytes + 65536  # multipart headers around the file
        self.fast_path = config.fast_path.lower() != "false"

    def _too_big(self, size: str) -> JSONResponse:
        return JSONResponse({"error": f"request body is {size + ', ' if size else ''}over the {self.max_bytes}-byte upload limit: send a smaller image"},
                            status_code=413, headers={"Connection": "close"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_retry(message):
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"retry-after" for k, _ in headers):
                    headers.append((b"retry-after", RETRY_AFTER_S.encode()))
                message = {**message, "headers": headers}
            await send(message)

        if scope["path"] == "/model":  # the info app is mounted at /model/; answer /model without a redirect
            scope = {**scope, "path": "/model/", "raw_path": b"/model/"}
        if scope["method"] == "POST" and scope["path"].rstrip("/") in self.ROUTES:
            headers = dict(scope.get("headers", []))
            ctype = headers.get(b"content-type", b"").decode("latin-1")
            boundary = ctype.partition("boundary=")[2].split(";")[0].strip().strip('"')
            if not ctype.lower().startswith("multipart/form-data") or not boundary:
                return await JSONResponse({"error": f"send the image as multipart/form-data in the field `image` (got Content-Type {ctype or 'none'!r}), e.g. curl -F image=@photo.jpg"},
                                          status_code=415)(scope, receive, send_with_retry)
            length = headers.get(b"content-length")
            if length and length.isdigit() and int(length) > self.max_body:
                return await self._too_big(f"{int(length)} bytes")(scope, receive, send_with_retry)
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_body:
                    return await self._too_big("")(scope, receive, send_with_retry)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            marker = b"--" + boundary.encode("latin-1")
            if not body.lstrip(b"\r\n").startswith(marker) or marker + b"--" not in body[-len(marker) - 64:]:
                return await JSONResponse({"error": "malformed multipart body (boundary missing or upload cut off): send the image with a multipart client, e.g. curl -F image=@photo.jpg"},
                                          status_code=400)(scope, receive, send_with_retry)
            # BentoML answers unknown binary fields with 500 (it tries to JSON-decode them): name the fix here.
            fields = _multipart_fields(body, marker)
            names = {name for name, _ in fields}
            allowed = _FIELDS.get(scope["path"].rstrip("/"), {"image"})
            if "image" not in names or not names <= allowed:
                extra = sorted(names - allowed)
                why = f"unknown form field(s) {', '.join(map(repr, extra))}" if extra else "no form field `image`"
                return await JSONResponse({"error": f"{why}: send the image file in the multipart field `image` (optional fields: {', '.join(sorted(allowed - {'image'}))})"},
                                          status_code=400)(scope, receive, send_with_retry)
            svc = bentoml.get_current_service() if self.fast_path else None
            if svc is not None and getattr(svc, "_ready", False):
                # Fast path: we hold the validated body already; answer here and skip BentoML's IO layer
                # (pydantic model, temporary file per upload), which costs several ms of CPU per request.
                # BentoML's metrics, tracing, access log, timeout and max-concurrency middlewares still wrap us.
                data = next((content for name, content in fields if name == "image"), b"")
                form = {name: content.decode("utf-8", "replace") for name, content in fields if name != "image"}
                query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
                response = await svc.answer(scope["path"].rstrip("/"), data, authorization=headers.get(b"authorization", b"").decode("latin-1"),
                                            query=query, form=form)
                return await response(scope, receive, send_with_retry)
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send_with_retry)
        await self.app(scope, receive, send_with_retry)


def _multipart_fields(body: bytes, marker: bytes) -> list[tuple[str, bytes]]:
    """(name, content) of each part of a multipart body whose framing EdgeMiddleware has checked. Names
    are read from each part's own headers only: by the multipart spec CRLF + marker never occurs inside
    content, so splitting on it first means bytes inside an uploaded file are never taken for a header."""
    fields = []
    for part in body.split(b"\r\n" + marker)[:-1]:
        head, _, content = part.partition(b"\r\n\r\n")
        if found := _FIELD_NAME.search(head):
            fields.append((found.group(1).decode("latin-1"), content))
    return fields


async def _model_info(request):
    """GET /model: the model's metadata, the provider and variant in use, and the batching settings."""
    svc = bentoml.get_current_service()
    if not svc.config.token_ok(request.headers.get("authorization", "")):
        return _unauthorized()
    return JSONResponse(svc.describe())


def _info_app():
    from starlette.applications import Starlette
    from starlette.routing import Route

    return Starlette(routes=[Route("/", _model_info, methods=["GET"])])


def _preflight() -> None:
    """Under `bentoml serve`, check the model once in the main process: a bad model exits in one line."""
    try:
        SegmentationRuntime.load(CONFIG.model_dir, CONFIG.device, CONFIG.variant, threads=1)
    except ContractError as exc:
        raise SystemExit(f"error: {exc}") from None


if Path(sys.argv[0]).name == "bentoml" and "serve" in sys.argv[1:3]:
    _preflight()


@bentoml.service(
    name="segmentation",
    workers=CONFIG.resolved_workers,
    traffic={"timeout": 60, "max_concurrency": CONFIG.max_concurrency},  # beyond: BentoML's 503 (+ our Retry-After)
    http={"port": 3000},
    logging={"access": {"enabled": CONFIG.access_log.lower() != "false"}},
    # BentoML 1.4 always installs the OpenTelemetry middleware; its exclude list is the one way to skip it
    tracing={"excluded_urls": [] if CONFIG.tracing.lower() != "false" else ["/segment", "/overlay", "/stats"]},
)
@bentoml.asgi_app(_info_app(), path="/model")
class SegmentationService:
    """Semantic segmentation with a fastai U-Net exported to ONNX."""

    def __init__(self) -> None:
        self.config = ServeConfig.from_env()
        try:
            self.runtime = SegmentationRuntime.load(self.config.model_dir, self.config.device, self.config.variant,
                                                    threads=self.config.intra_op_threads)
        except ContractError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            os._exit(3)  # a worker that cannot load the model must not linger half-alive
        self.meta = self.runtime.meta
        self._ready = False
        self._dispatch = CorkDispatcher(
            max_latency_in_ms=self.config.max_latency_ms,
            max_batch_size=self.config.max_batch_size,
            fallback=lambda: _SHED,
            get_batch_size=lambda item: 1,
        )(self._infer_batch)
        t = time.perf_counter()
        self.runtime.warmup(range(1, self.config.max_batch_size + 1))
        log.warning("warm-up of batch sizes 1..%d took %.2f s", self.config.max_batch_size, time.perf_counter() - t)
        self._in_flight = 0  # requests admitted and not yet answered (the event loop is single-threaded)
        full = np.zeros((self.config.max_batch_size, *self.meta.input_size, 3), np.uint8)
        t = time.perf_counter()
        self.runtime.run(full)
        self._s_per_image = (time.perf_counter() - t) / len(full)  # then a moving average of real batches
        self._ready = True

    def __is_ready__(self) -> bool:
        return self._ready

    async def _infer_batch(self, items) -> list[np.ndarray]:
        batch = np.stack(items)
        t = time.perf_counter()
        masks = await anyio.to_thread.run_sync(self.runtime.run, batch)
        took = time.perf_counter() - t
        self._s_per_image = 0.9 * self._s_per_image + 0.1 * took / len(items)
        _batch_hist.observe(len(items))
        _infer_hist.observe(took)
        return list(masks)

    async def answer(self, route: str, data: bytes, *, authorization: str, query: dict, form: dict) -> Response:
        """The whole request, once decoded from HTTP: route "/segment" | "/overlay" | "/stats", the upload's
        bytes, the Authorization header, query and form fields (`tile`, and `rle` for /stats)."""
        if not self.config.token_ok(authorization):
            return _unauthorized()
        flags = {}
        for name in ("tile", "rle") if route == "/stats" else ("tile",):
            raw = query.get(name, form.get(name, "false"))  # ?name=... works as well as the form field
            if str(raw).lower() not in _BOOLS:
                return JSONResponse({"error": f"{name}={raw!r} is not a boolean: use {name}=true or {name}=false"}, status_code=400)
            flags[name] = _BOOLS[str(raw).lower()]
        if not admit(self._in_flight, self._s_per_image, self.config.max_latency_ms / 1000):
            return _overloaded()
        self._in_flight += 1
        try:
            return await self._answer(route, data, flags)
        finally:
            self._in_flight -= 1

    async def _answer(self, route: str, data: bytes, flags: dict) -> Response:
        try:
            img = imaging.decode_image(data, max_bytes=self.config.max_bytes, max_pixels=self.config.max_pixels)
        except imaging.ImageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        big = self.config.tile_above and img.width * img.height > self.config.tile_above
        if flags["tile"] or big:
            mask = await self._segment_tiled(np.asarray(img))
        else:
            mask = await self._dispatch(imaging.resize_to_model(img, self.meta.input_size))
        if mask is _SHED:
            return _overloaded()
        mask = imaging.resize_mask(mask, img.size)
        if route == "/segment":
            return Response(imaging.palette_png(mask, self.meta.colours), media_type="image/png")
        if route == "/overlay":
            return Response(imaging.overlay_png(img, mask, self.meta.colours), media_type="image/png")
        return JSONResponse(imaging.class_stats(mask, self.meta.classes, rle=flags["rle"]))

    async def _via_api(self, route: str, image: Path, ctx: bentoml.Context, **fields) -> Response:
        """The BentoML API path (used when SEG_FAST_PATH=false): same answer, status copied to ctx."""
        try:
            data = Path(image).read_bytes()
        except OSError:
            data = b""
        response = await self.answer(route, data, authorization=ctx.request.headers.get("authorization", ""),
                                     query=dict(ctx.request.query_params), form={k: str(v) for k, v in fields.items()})
        ctx.response.status_code = response.status_code  # BentoML copies ctx's status onto the response
        return response

    async def _segment_tiled(self, image: np.ndarray):
        """Full-resolution tiles at the model size, each through the same batcher, blended back."""
        overlap = self.config.tile_overlap or tiling.default_overlap(self.meta.input_size)
        tiles, layout = tiling.make_tiles(image, self.meta.input_size, overlap)
        masks = await asyncio.gather(*(self._dispatch(t) for t in tiles))
        if any(m is _SHED for m in masks):
            return _SHED
        return tiling.blend_masks(np.stack(masks), layout, self.meta.n_classes)

    @bentoml.api(route="/segment")
    async def segment(self, image: Path, ctx: bentoml.Context, tile: bool = False) -> Annotated[Path, bentoml.validators.ContentType("image/png")]:
        """Mask as a palette PNG of the upload's size: pixel values are class ids, the palette the class colours."""
        return await self._via_api("/segment", image, ctx, tile=tile)

    @bentoml.api(route="/overlay")
    async def overlay(self, image: Path, ctx: bentoml.Context, tile: bool = False) -> Annotated[Path, bentoml.validators.ContentType("image/png")]:
        """The photo with the class colours blended over it, same size, as PNG."""
        return await self._via_api("/overlay", image, ctx, tile=tile)

    @bentoml.api(route="/stats")
    async def stats(self, image: Path, ctx: bentoml.Context, rle: bool = False, tile: bool = False) -> dict:
        """Per-class pixel counts and fractions (and COCO RLE with rle=true) as JSON."""
        return await self._via_api("/stats", image, ctx, rle=rle, tile=tile)

    def describe(self) -> dict:
        """The model's metadata, the provider and variant in use, and the batching settings (GET /model)."""
        return {
            "metadata": self.meta.describe(),
            "provider": self.runtime.provider,
            "variant": self.runtime.variant,
            "model_file": str(self.runtime.path),
            "batching": {"max_batch_size": self.config.max_batch_size, "max_latency_ms": self.config.max_latency_ms,
                         "dispatcher": "bentoml CorkDispatcher (in-process)"},
            "tiling": {"tile_above_pixels": self.config.tile_above, "overlap": self.config.tile_overlap or tiling.default_overlap(self.meta.input_size)},
            "threads": self.config.intra_op_threads,
            "workers": self.config.resolved_workers,
            "limits": {"max_bytes": self.config.max_bytes, "max_pixels": self.config.max_pixels},
        }


SegmentationService.add_asgi_middleware(EdgeMiddleware)
