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
import contextlib
import gc
import json
import logging
import time
from collections import deque
from pathlib import Path
from typing import Annotated

import bentoml
import numpy as np
from bentoml.exceptions import BentoMLException
from fastapi import Depends, FastAPI, Header
from fastapi import Path as FastAPIPath
from starlette.responses import FileResponse, HTMLResponse, Response

from contract import store

from . import imaging, models, monitor, oip, pipeline, status
from .backlog import Backlog
from .batching import QUEUED_BATCHES, Admission
from .capture import Capture, Rule
from .config import ServeConfig
from .http import ERROR_RESPONSES, Gate, JsonErrors, Problem, Upload, busy, check_token, json_problems, problem_doc
from .io import DESCRIPTION, PNG, ROUTES, DescribedService, ImageInput, Stats, StatsInput
from .runtime import ContractError, SegmentationRuntime

log = logging.getLogger("serving.service")

CONFIG, CONFIG_ERROR = ServeConfig.load()  # read once; a bad setting stops `bentoml serve` in check_deployment
UI_PAGE = (Path(__file__).parent / "ui" / "index.html").read_text()  # static: no CDN, no build step, works offline


class StartupError(BentoMLException):
    """A bad setting or model: `bentoml serve` prints the message as one line and exits non-zero."""


def _current():
    try:
        return bentoml.get_current_service()
    except BentoMLException:
        return None


info_app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
info_app.include_router(oip.router)
json_problems(info_app)


@info_app.exception_handler(Problem)
async def _problem(request, problem: Problem):
    return problem.response()


def _token(authorization: str = Header("")) -> None:
    """The routes of info_app that need the bearer token depend on this (the inference routes: the Gate)."""
    check_token(CONFIG, authorization)


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
        self.config = cfg = CONFIG
        self.metrics = monitor.metrics()
        self.admission = Admission(cfg.max_latency_ms / 1000, cfg.max_batch_size)
        self.backlog = Backlog(cfg.resolved_workers)  # how long a request on a new connection waited to be accepted
        self.model = self._load()
        self.admission.seed_per_pixel = models.price_pixels(self.model)
        self.admission.watch(self.model.batcher)
        self.monitor = monitor.Monitor(cfg.drift_window)
        self.monitor.use(self.model.reference)
        rule = Rule(Path(cfg.capture_dir), cfg.capture_below, cfg.capture_sample, cfg.capture_max_files,
                    cfg.capture_max_bytes)  # fmt: skip
        self.capture = Capture(rule, self.metrics.captures) if cfg.capture_dir else None
        self.watcher = models.Watcher(cfg, self.model, self._swap, self._load, self.metrics.reloads)
        self.samples = self._samples(self.model)
        # What is loaded by now (BentoML, ONNX Runtime, numpy: ~130k objects) lives as long as the worker. Out of
        # the collector's reach, a full collection no longer walks it: the first one under load took ~110 ms and
        # stalled every request in flight on the worker (the p99 at c=16 with a near-zero-cost model).
        gc.collect()
        gc.freeze()

    def _load(self) -> models.ServedModel:
        return models.load(self.config, on_batch=self._observe_batch, share_cap=self.admission.batch_share_cap)

    def _swap(self, new: models.ServedModel) -> None:
        """A new version, checked and warmed up: the requests admitted from now on get it."""
        self.model, self.samples = new, self._samples(new)
        self.admission.watch(new.batcher)
        self.monitor.use(new.reference)

    @bentoml.on_startup
    def _start_watching(self) -> None:
        """In the worker's event loop: poll the model source every SEG_RELOAD_S (off at 0)."""
        self.watcher.start()

    @staticmethod
    def _samples(model: models.ServedModel) -> dict[str, Path]:
        folder = model.runtime.path.parent / "samples"
        return {p.name: p for p in sorted(folder.glob("*.png"))} if folder.is_dir() else {}

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.batch_seconds.observe(seconds)

    @bentoml.api(route="/segment", input_spec=ImageInput)
    async def segment(self, image: Path, tile: bool = False) -> PNG:
        """The mask as a palette PNG of the upload's size: pixel values are class ids, the palette holds the class
        colours; how sure the model was in the Seg-Confidence and Seg-Uncertain-Fraction headers.
        Errors: 400 bad request, 401 token, 413 too large, 415 not an image, 429/503 busy (with Retry-After)."""
        return await self._answer("/segment", image, tile=tile)

    @bentoml.api(route="/overlay", input_spec=ImageInput)
    async def overlay(self, image: Path, tile: bool = False) -> PNG:
        """The photo with the class colours blended over it (background left as is), as a PNG of the same size.
        Errors: 400 bad request, 401 token, 413 too large, 415 not an image, 429/503 busy (with Retry-After)."""
        return await self._answer("/overlay", image, tile=tile)

    @bentoml.api(route="/stats", input_spec=StatsInput)
    async def stats(self, image: Path, tile: bool = False, rle: bool = False) -> Stats:
        """Per-class pixel counts and fractions of the mask (and COCO RLE with rle=true), and the answer's
        confidence, as JSON.
        Errors: 400 bad request, 401 token, 413 too large, 415 not an image, 429/503 busy (with Retry-After)."""
        return await self._answer("/stats", image, tile=tile, rle=rle)

    @bentoml.api(route="/confidence", input_spec=ImageInput)
    async def confidence(self, image: Path, tile: bool = False) -> PNG:
        """How sure the model was of each pixel: a greyscale PNG of the upload's size, each pixel its top-1 class
        probability x 255 (white: sure). Errors: as /segment, and 409 for a model without class probabilities."""
        return await self._answer("/confidence", image, tile=tile)

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
        except Problem as problem:
            self.metrics.refused.labels(status=str(problem.status)).inc()
            return problem.response()

    async def _serve(self, route: str, data: bytes, options: dict[str, bool]) -> Response:
        model = self.model  # the version current now answers this request, whatever comes after
        if route == "/confidence" and not model.runtime.has_probs:
            raise Problem(409, f"the model served ({model.version}) has no class probabilities, so no confidence: "
                               "re-export it without --no-probs")  # fmt: skip
        (upload,) = self._prepare(model, [data], options.get("tile", False))
        async with self._admitted(model, route, [upload]):
            answer = await self._segment(model, route, upload)
            body = await self._call(upload.heavy, self._encode, route, model, answer, options)
        self._observe(model, upload, answer)
        return Response(body, media_type="application/json" if route == "/stats" else "image/png",
                        headers=answer_headers(model.version, answer.figures))  # fmt: skip

    async def infer_many(self, sources: list) -> tuple[list[pipeline.Answer], models.ServedModel]:
        """The images of one request (encoded bytes, or (H, W, 3) uint8 pixels) through the same path as the multipart
        routes, admitted together and batched together: their answers in order, and the model version that gave them
        (the Open Inference Protocol's infer, serving.oip)."""
        model = self.model
        uploads = self._prepare(model, sources, False)
        async with self._admitted(model, "/v2", uploads):
            answers = await asyncio.gather(*(self._segment(model, "/v2", u) for u in uploads))
        for upload, answer in zip(uploads, answers):
            self._observe(model, upload, answer)
        return answers, model

    def _prepare(self, model, sources: list, tile: bool) -> list[pipeline.Prepared]:
        """Each upload's header (or raw pixels) checked against the limits and its model work planned; 4xx otherwise."""
        cfg, out = self.config, []
        for i, source in enumerate(sources):
            where = f"image {i}: " if len(sources) > 1 else ""
            try:
                if isinstance(source, np.ndarray):
                    im, data = imaging.Image.fromarray(source), None
                    size = im.size
                else:
                    im, data = imaging.open_image(source, max_bytes=cfg.max_bytes, max_pixels=cfg.max_pixels), source
                    size = imaging.displayed_size(im, source)
            except imaging.ImageError as exc:
                raise Problem(exc.status, where + str(exc)) from None
            plan = pipeline.plan(model.meta, size, tile=tile, tile_above=cfg.tile_above, overlap=cfg.tile_overlap)
            out.append(pipeline.Prepared(im, data, size, plan, size[0] * size[1] > cfg.offload_pixels))
        tiles = sum(u.plan.inputs for u in out)
        if tiles > cfg.max_tiles:
            w, h = out[0].size
            raise Problem(
                413,
                (f"a {w}x{h} image needs {tiles} tiles" if len(out) == 1 else f"{len(out)} images need {tiles} inputs")
                + f" of {out[0].plan.input_hw[1]}x{out[0].plan.input_hw[0]}, over this server's SEG_MAX_TILES="
                f"{cfg.max_tiles}: send it without tile=true, downscale it, or segment it offline with "
                "`python -m serving predict INPUT_DIR OUTPUT_DIR --tile`",
            )
        return out

    @contextlib.asynccontextmanager
    async def _admitted(self, model, route: str, uploads: list[pipeline.Prepared]):
        """Admission by work for these uploads together (model units and their own pixel work), or 503 + Retry-After;
        nothing sheds them once admitted. Their measured work around the model updates the route's price."""
        share = sum(self.admission.share(model.batcher.units(u.plan.input_hw), u.plan.inputs) for u in uploads)
        own = sum(self.admission.own_seconds(route, u.pixels) for u in uploads)
        predicted = self.admission.ahead_s() / self.admission.scale + share * model.batcher.seconds_per_unit + own
        retry = self.admission.try_admit(share, own)
        if retry is not None:
            raise busy(self.admission, retry)
        t = time.perf_counter()
        try:
            yield
        finally:
            self.admission.release(share, own)
        took = time.perf_counter() - t
        self.admission.measured(predicted, took)
        spent = took - max(u.model_s for u in uploads)
        self.admission.observe(route, sum(u.pixels for u in uploads), max(spent, 0.0))

    async def _segment(self, model, route: str, u: pipeline.Prepared) -> pipeline.Answer:
        """Decode, resize, batches through ONNX Runtime, the mask at the upload's size and the confidence."""
        try:
            if u.data is None:
                img = u.im
            else:  # the overlay draws on the photo itself; the others only need the model's scale
                at_least = None if route == "/overlay" else pipeline.decode_size(u.plan)
                img = await self._call(u.heavy, imaging.load_rgb, u.im, u.data, at_least)
        except imaging.ImageError as exc:
            raise Problem(exc.status, str(exc)) from None
        job = await self._call(u.heavy, pipeline.Job, model.meta, img, u.plan)
        t = time.perf_counter()
        await self._infer(job, model.batcher)
        u.model_s = time.perf_counter() - t
        mask = await self._call(u.heavy, job.mask)
        return pipeline.Answer(mask, job.confidence(self.config.uncertain_below), job, img)

    def _observe(self, model, upload: pipeline.Prepared, answer: pipeline.Answer) -> None:
        """After the answer: the metrics and drift window, and the capture of an upload the model was unsure of."""
        pixels = answer.job.class_pixels(len(model.meta.classes))
        self.monitor.answer(answer.figures, pixels, model.meta.classes, model.version)
        if self.capture is not None:
            data = upload.data if upload.data is not None else imaging.png_bytes(np.asarray(upload.im))
            fmt = upload.im.format if upload.data is not None else "PNG"
            self.capture.offer(data, fmt, answer.mask, answer.figures, model.meta.classes, model.meta.colours,
                               model.version)  # fmt: skip

    @staticmethod
    async def _call(offload: bool, fn, *args):
        return await asyncio.to_thread(fn, *args) if offload else fn(*args)

    async def _infer(self, job: pipeline.Job, batcher) -> None:
        """The job's inputs through the batcher in full batches, at most QUEUED_BATCHES queued at a time (the
        share admission reserved), their outputs handed back in order as they come."""
        pending: deque[asyncio.Future] = deque()
        try:
            for chunk in job.chunks(self.config.max_batch_size):
                pending.append(asyncio.ensure_future(batcher.submit(chunk)))
                if len(pending) == QUEUED_BATCHES:
                    job.add(await pending.popleft())
            while pending:
                job.add(await pending.popleft())
        finally:
            for fut in pending:
                fut.cancel()

    @staticmethod
    def _encode(route: str, model, answer: pipeline.Answer, options: dict) -> bytes:
        meta, mask = model.meta, answer.mask
        if route == "/segment":
            return imaging.palette_png(mask, meta.colours)
        if route == "/overlay":
            return imaging.overlay_png(answer.img, mask, meta.colours)
        if route == "/confidence":
            return imaging.png_bytes(answer.job.confidence_map())
        stats = imaging.class_stats(mask, meta.classes, rle=options.get("rle", False))
        return json.dumps({**stats, "confidence": answer.figures, "model": model.version}).encode()

    def describe(self) -> dict:
        """GET /model: serving.status.describe."""
        return status.describe(self)


def answer_headers(version: str, figures: dict | None) -> dict[str, str]:
    """Seg-Model on every answer; Seg-Confidence and Seg-Uncertain-Fraction where the model gives probabilities."""
    headers = {"Seg-Model": version}
    if figures is not None:
        headers["Seg-Confidence"] = f"{figures['mean']:.4f}"
        headers["Seg-Uncertain-Fraction"] = f"{figures['uncertain_fraction']:.4f}"
    return headers


SegmentationService.add_asgi_middleware(Gate, routes=ROUTES, service=_current, pattern=oip.INFER)
SegmentationService.add_asgi_middleware(JsonErrors)
