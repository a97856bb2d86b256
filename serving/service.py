"""The BentoML service: one request path from HTTP to ONNX Runtime and back, on BentoML's public API.

    POST /segment | /overlay | /stats                                     (the three @bentoml.api methods)
      1. gate: bearer token (401), requests in flight on this worker (429)      serving.http.Gate
      2. body: multipart by python-multipart with limits (400, 413, 415)        ImageInput.from_http_request
      3. plan: image header (413 pixel cap), model inputs it needs (413 SEG_MAX_TILES)
      4. admit: the work queued ahead fits SEG_MAX_LATENCY_MS, or 503 + Retry-After  serving.batching.Admission
      5. decode, resize to the model, batches through ONNX Runtime, mask back to the upload's size
      6. encode: palette PNG, overlay PNG or JSON                               serving.imaging
    GET /model, GET /ui (the page, serving/ui/index.html)                  (FastAPI routes, mounted)

Nothing is shed after step 4: an admitted request always gets its answer. Configuration: serving/config.py.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import logging
import time
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, ClassVar

import attrs
import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from fastapi import Depends, FastAPI, Header
from fastapi import Path as FastAPIPath
from pydantic import BaseModel, Field
from starlette.responses import FileResponse, HTMLResponse, Response

from contract import store

from . import imaging, pipeline
from .batching import QUEUED_BATCHES, Admission, Batcher
from .config import ServeConfig
from .http import ERROR_RESPONSES, Gate, Problem, Upload, busy, check_token, problem_doc, read_upload
from .runtime import ContractError, SegmentationRuntime

log = logging.getLogger("serving.service")

CONFIG, CONFIG_ERROR = ServeConfig.load()  # read once; a bad setting stops `bentoml serve` in check_deployment
ROUTES = ("/segment", "/overlay", "/stats")
UI_PAGE = (Path(__file__).parent / "ui" / "index.html").read_text()  # static: no CDN, no build step, works offline


class StartupError(BentoMLException):
    """A bad setting or model: `bentoml serve` prints the message as one line and exits non-zero."""


@functools.cache
def _metrics() -> SimpleNamespace:
    """Our Prometheus metrics, created in the worker: BentoML points prometheus_client at its multiprocess
    directory only after the service module is imported (bentoml.metrics is deprecated for prometheus_client)."""
    import prometheus_client as prom

    return SimpleNamespace(
        batch_size=prom.Histogram(
            "seg_batch_size", "Model inputs per ONNX Runtime call", buckets=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
        ),
        batch_seconds=prom.Histogram(
            "seg_batch_seconds", "Seconds per ONNX Runtime call", buckets=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3]
        ),
        refused=prom.Counter("seg_refused", "Requests refused before any model work, by status", ["status"]),
    )


class ImageInput(bentoml.IODescriptor):
    """multipart/form-data: the image file in the field `image`; options as form fields or query parameters."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("tile",)
    image: Path = Field(
        description="the photo: JPEG, PNG, WebP, BMP, TIFF or GIF (first frame); EXIF orientation is applied; "
        "other bytes are answered 415",
        json_schema_extra={"minLength": 1},
    )
    tile: bool = Field(
        False,
        description="segment at full resolution by overlapping tiles at the model size (also automatic above "
        "SEG_TILE_ABOVE pixels)",
    )

    @classmethod
    async def from_http_request(cls, request, serde):
        """The body, parsed with limits (serving.http.read_upload). A problem travels in `image` to the method, which
        answers it."""
        svc = bentoml.get_current_service()
        try:
            upload = await read_upload(request, cls.OPTIONS, max_bytes=svc.config.max_bytes)
        except Problem as problem:
            return cls.model_construct(image=problem)
        return cls.model_construct(image=upload, **upload.options)


class StatsInput(ImageInput):
    """multipart/form-data: the image file in the field `image`; options as form fields or query parameters."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("tile", "rle")
    rle: bool = Field(False, description="add each class's mask as COCO uncompressed RLE (column-major run lengths)")


class ClassStats(BaseModel):
    id: int
    name: str
    pixels: int
    fraction: float
    rle: dict | None = Field(None, description="with rle=true: {size: [H, W], counts: [...]}")


class Stats(bentoml.IODescriptor):
    """Per-class pixel counts of the mask at the upload's size."""

    width: int
    height: int
    classes: list[ClassStats]


# The wire type of /segment and /overlay: BentoML documents it as image/png and its client saves it to a file. The
# methods return a starlette Response holding those PNG bytes (BentoML passes a Response through as it is).
PNG = Annotated[Path, bentoml.validators.ContentType("image/png")]


def _current():
    try:
        return bentoml.get_current_service()
    except BentoMLException:
        return None


info_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@info_app.exception_handler(Problem)
async def _problem(request, problem: Problem):
    return problem.response()


def _token(authorization: str = Header("")) -> None:
    """The routes of info_app that need the bearer token depend on this (the inference routes: the Gate)."""
    check_token(CONFIG, authorization)


DESCRIPTION = """Semantic segmentation with a fastai U-Net exported to ONNX, served with BentoML over ONNX Runtime
(CUDA when a GPU is there, CPU otherwise). POST an image to /segment (palette PNG mask), /overlay or /stats: the
answer has the image's own size. Try it in the browser at /ui; GET /model describes the model."""


class DescribedService(bentoml.Service):
    """BentoML's Swagger UI shows `doc`: a built bento's README (written from this description), and BentoML's
    generic text under `bentoml serve` from the source tree. Ours says what this service is in both."""

    @property
    def doc(self) -> str:
        return self.bento.doc if self.bento is not None else self.description

    @property
    def openapi_spec(self):
        """BentoML's document, with the statuses the inference routes really send (and Retry-After) in place
        of its generic 400/404/500: a client generated from /docs.json knows every answer."""
        spec = super().openapi_spec
        for route in ROUTES:
            operation = spec.paths[route].post
            operation["responses"] = {200: operation["responses"][200], **ERROR_RESPONSES}
            operation["requestBody"]["required"] = True  # no body: 415
            content = operation["requestBody"]["content"]
            for kind, media in content.items():  # an unknown field: 400 (BentoML's document objects are frozen attrs)
                content[kind] = attrs.evolve(media, schema=attrs.evolve(media.schema, additionalProperties=False))
        return spec


@bentoml.service(
    name="segmentation",
    description=DESCRIPTION,
    service_class=DescribedService,
    workers=CONFIG.resolved_workers,
    # no max_concurrency here: BentoML's refusal is a 429 without Retry-After; the Gate answers it with one
    traffic={"timeout": CONFIG.timeout_s},
    http={"port": 3000},
    logging={"access": {"enabled": CONFIG.access_log}},
    # BentoML always installs its OpenTelemetry middleware; its exclude list is the one way to skip it
    tracing={"excluded_urls": [] if CONFIG.tracing else list(ROUTES)},
)
@bentoml.asgi_app(info_app, path="/")
class SegmentationService:
    """Semantic segmentation with a fastai U-Net exported to ONNX: POST an image, get its mask (palette PNG),
    an overlay or per-class statistics at the image's own size. Batched ONNX Runtime on CUDA or CPU.
    Try it in the browser at /ui; GET /model describes the model."""

    @bentoml.on_deployment
    def check_deployment() -> None:
        """Under `bentoml serve`, once, before the workers start: a bad setting or model stops the server
        with one line on stderr and a non-zero exit (BentoML prints a BentoMLException that way)."""
        if CONFIG_ERROR is not None:
            raise StartupError(str(CONFIG_ERROR))
        try:
            SegmentationRuntime.load(
                store.resolve(CONFIG.model_source), CONFIG.device, CONFIG.variant, threads=1, recheck=False
            )
        except ContractError as exc:
            raise StartupError(str(exc)) from None

    def __init__(self) -> None:
        if CONFIG_ERROR is not None:
            raise CONFIG_ERROR
        self.config = CONFIG
        self.metrics = _metrics()
        self.runtime = SegmentationRuntime.load(
            store.resolve(CONFIG.model_source),
            CONFIG.device,
            CONFIG.variant,
            threads=CONFIG.intra_op_threads,
            spin=CONFIG.ort_spin,
        )
        self.meta = self.runtime.meta
        shapes = pipeline.warmup_shapes(self.meta)
        t = time.perf_counter()
        self.runtime.warmup(range(1, CONFIG.max_batch_size + 1), shapes)
        log.warning(
            "warm-up of batch sizes 1..%d at %s took %.2f s", CONFIG.max_batch_size, shapes, time.perf_counter() - t
        )
        h, w = shapes[0]
        t = time.perf_counter()
        self._run(np.zeros((CONFIG.max_batch_size, h, w, 3), np.uint8))
        seed = (time.perf_counter() - t) / CONFIG.max_batch_size
        self.admission = Admission(CONFIG.max_latency_ms / 1000, CONFIG.max_batch_size)
        self.batcher = Batcher(
            self._run,
            max_batch_size=CONFIG.max_batch_size,
            unit_pixels=h * w,
            seed_seconds_per_unit=seed,
            on_batch=self._observe_batch,
            share_cap=self.admission.batch_share_cap,
        )
        self.admission.watch(self.batcher)
        folder = self.runtime.path.parent / "samples"
        self.samples = {p.name: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}
        # What is loaded by now (BentoML, ONNX Runtime, numpy: ~130k objects) lives as long as the worker. Out of
        # the collector's reach, a full collection no longer walks it: the first one under load took ~110 ms and
        # stalled every request in flight on the worker (the p99 at c=16 with a near-zero-cost model).
        gc.collect()
        gc.freeze()

    def _run(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """A batch through ONNX Runtime: (mask, probs or None) per input."""
        masks, probs = self.runtime.run_scores(batch)
        return list(zip(masks, probs if probs is not None else [None] * len(masks)))

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    @bentoml.api(route="/segment", input_spec=ImageInput)
    async def segment(self, image: Path, tile: bool = False) -> PNG:
        """The mask as a palette PNG of the upload's size: pixel values are class ids, the palette holds the class
        colours.
        Errors: 400 bad request, 401 token, 413 too large, 415 not an image, 429/503 busy (with Retry-After)."""
        return await self._answer("/segment", image, tile=tile)

    @bentoml.api(route="/overlay", input_spec=ImageInput)
    async def overlay(self, image: Path, tile: bool = False) -> PNG:
        """The photo with the class colours blended over it (background left as is), as a PNG of the same size.
        Errors: 400 bad request, 401 token, 413 too large, 415 not an image, 429/503 busy (with Retry-After)."""
        return await self._answer("/overlay", image, tile=tile)

    @bentoml.api(route="/stats", input_spec=StatsInput)
    async def stats(self, image: Path, tile: bool = False, rle: bool = False) -> Stats:
        """Per-class pixel counts and fractions of the mask (and COCO RLE with rle=true), as JSON.
        Errors: 400 bad request, 401 token, 413 too large, 415 not an image, 429/503 busy (with Retry-After)."""
        return await self._answer("/stats", image, tile=tile, rle=rle)

    @info_app.get(
        "/ui",
        summary="A page to try the model: pick or drop an image, see its overlay, legend and mask",
        response_class=HTMLResponse,
    )
    def ui(self) -> HTMLResponse:
        return HTMLResponse(UI_PAGE)

    @info_app.get(
        "/ui/samples",
        summary="Names of the held-out images the export kept beside the model (for the page)",
        responses={401: ERROR_RESPONSES[401]},
        dependencies=[Depends(_token)],
    )
    def ui_samples(self) -> list[str]:
        return sorted(self.samples)

    @info_app.get(
        "/ui/samples/{name}",
        summary="One of those images (PNG)",
        response_class=FileResponse,
        responses={
            200: {"content": {"image/png": {}}},
            401: ERROR_RESPONSES[401],
            404: problem_doc("no sample of that name: GET /ui/samples lists them"),
        },
        dependencies=[Depends(_token)],
    )
    def ui_sample(self, name: Annotated[str, FastAPIPath(pattern=r"^[A-Za-z0-9_.-]+$")]):
        if name not in self.samples:
            return Problem(404, f"no sample {name!r}: GET /ui/samples lists them").response()
        return FileResponse(self.samples[name], media_type="image/png")

    @info_app.get(
        "/model",
        summary="The model served, how, and the limits",
        responses={
            200: {
                "description": "metadata (classes, colours, input size, metrics...), provider, variant and why, "
                "batching, admission, limits"
            },
            401: ERROR_RESPONSES[401],
        },
        dependencies=[Depends(_token)],
    )
    def model_info(self) -> dict:
        return self.describe()

    async def _answer(self, route: str, image: Path | Upload | Problem, **options: bool) -> Response:
        """One request, from its parsed upload to its HTTP answer (a Python caller may pass a file path)."""
        if isinstance(image, Path):
            image = Upload(image.read_bytes(), image.name)
        try:
            if isinstance(image, Problem):
                raise image
            return await self._serve(route, image.data, options)
        except imaging.ImageError as exc:
            return Problem(exc.status, str(exc)).response()
        except Problem as problem:
            self.metrics.refused.labels(status=str(problem.status)).inc()
            return problem.response()

    async def _serve(self, route: str, data: bytes, options: dict[str, bool]) -> Response:
        cfg = self.config
        im = imaging.open_image(data, max_bytes=cfg.max_bytes, max_pixels=cfg.max_pixels)
        size = imaging.displayed_size(im, data)
        plan = pipeline.plan(
            self.meta, size, tile=options.get("tile", False), tile_above=cfg.tile_above, overlap=cfg.tile_overlap
        )
        if plan.inputs > cfg.max_tiles:
            raise Problem(
                413,
                f"a {size[0]}x{size[1]} image needs {plan.inputs} tiles of {plan.input_hw[1]}x{plan.input_hw[0]}, "
                f"over this server's SEG_MAX_TILES={cfg.max_tiles}: send it without tile=true, downscale it, "
                "or segment it offline with `python -m serving predict INPUT_DIR OUTPUT_DIR --tile`",
            )
        share = self.admission.share(self.batcher.units(plan.input_hw), plan.inputs)
        retry = self.admission.try_admit(share)
        if retry is not None:
            raise busy(self.admission, retry)
        try:
            heavy = (
                size[0] * size[1] > cfg.offload_pixels
            )  # big images: Pillow and numpy work in a thread, the event loop stays free
            # the overlay draws on the photo itself; the other answers only need the model's scale
            img = await self._call(
                heavy, imaging.load_rgb, im, data, None if route == "/overlay" else pipeline.decode_size(plan)
            )
            job = await self._call(heavy, pipeline.Job, self.meta, img, plan)
            await self._infer(job)
            mask = await self._call(heavy, job.mask)
            body = await self._call(heavy, self._encode, route, img, mask, options.get("rle", False))
        finally:
            self.admission.release(share)
        return Response(body, media_type="application/json" if route == "/stats" else "image/png")

    @staticmethod
    async def _call(offload: bool, fn, *args):
        return await asyncio.to_thread(fn, *args) if offload else fn(*args)

    async def _infer(self, job: pipeline.Job) -> None:
        """The job's inputs through the batcher in full batches, at most QUEUED_BATCHES queued at a time (the
        share admission reserved), their outputs handed back in order as they come."""
        pending: deque[asyncio.Future] = deque()
        try:
            for chunk in job.chunks(self.config.max_batch_size):
                pending.append(asyncio.ensure_future(self.batcher.submit(chunk)))
                if len(pending) == QUEUED_BATCHES:
                    job.add(await pending.popleft())
            while pending:
                job.add(await pending.popleft())
        finally:
            for fut in pending:
                fut.cancel()

    def _encode(self, route: str, img, mask: np.ndarray, rle: bool) -> bytes:
        if route == "/segment":
            return imaging.palette_png(mask, self.meta.colours)
        if route == "/overlay":
            return imaging.overlay_png(img, mask, self.meta.colours)
        return json.dumps(imaging.class_stats(mask, self.meta.classes, rle=rle)).encode()

    def describe(self) -> dict:
        """The model's metadata, the provider and variant in use (and why), batching, admission and limits (GET
        /model)."""
        cfg = self.config
        return {
            "metadata": self.meta.describe(),
            "provider": self.runtime.provider,
            "device_reason": self.runtime.device_reason,
            "variant": self.runtime.variant,
            "variant_reason": self.runtime.variant_reason,
            "int8_check": self.runtime.int8_check,
            "model_file": str(self.runtime.path),
            "model_source": cfg.model_source,
            "batching": {
                "max_batch_size": cfg.max_batch_size,
                "policy": "same-shape inputs, batched whenever the model is free (no fixed window)",
                "seconds_per_input": self.batcher.seconds_per_unit,
            },
            "admission": {
                "max_latency_ms": cfg.max_latency_ms,
                "max_concurrency_per_worker": cfg.max_concurrency,
                "max_tiles": cfg.max_tiles,
                "queued_seconds": self.admission.ahead_s(),
                "in_flight": self.admission.in_flight,
            },
            "geometry": {
                "dynamic_hw": self.meta.dynamic_hw,
                "training_size": list(self.meta.input_size),
                "resize": "keep aspect, short side to the training size, pad to 32, scores upsampled"
                if self.meta.dynamic_hw
                else "squish to the model size, scores upsampled",
                "warmed_up_shapes": [list(x) for x in pipeline.warmup_shapes(self.meta)],
            },
            "tiling": {"tile_above_pixels": cfg.tile_above, "overlap": cfg.tile_overlap or "a quarter of a tile"},
            "threads": cfg.intra_op_threads,
            "workers": cfg.resolved_workers,
            "limits": {"max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels, "timeout_s": cfg.timeout_s},
        }


SegmentationService.add_asgi_middleware(Gate, routes=ROUTES, service=_current)
