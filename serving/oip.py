"""The Open Inference Protocol (KServe's "v2", spoken by Triton, KServe, Seldon, OpenVINO Model Server): a client
written for those platforms calls this service unchanged.

    GET  /v2                                          server metadata (name, version, extensions)
    GET  /v2/health/live | /v2/health/ready           liveness, readiness
    GET  /v2/models/segmentation[/versions/V]         model metadata (inputs, outputs, classes, version)
    GET  /v2/models/segmentation[/versions/V]/ready   model readiness
    POST /v2/models/segmentation[/versions/V]/infer   inference

One input, `image`, declared in the metadata as the model's own tensor, raw pixels UINT8 [-1, -1, -1, 3] (what a
client that builds its request from the metadata sends: Triton's perf_analyzer, generic KServe clients), and taking,
as OpenVINO Model Server does for its image inputs, encoded images as a BYTES tensor of shape [N] too (each its own
size and format; in JSON each base64-encoded): the metadata's `parameters.image_bytes` says so. Both as JSON or with the
binary tensor data extension (`Inference-Header-Content-Length`: the JSON header, then the tensors' bytes; BYTES
elements each prefixed by their length, 4 bytes little-endian). Outputs on request (all by default): `mask` UINT8
[N, H, W] (images of one size), `mask_png` BYTES [N] (palette PNGs, any sizes), `stats` BYTES [N] (each image's
class statistics and confidence, JSON), `confidence` FP32 [N, 2] (mean top-1 probability, uncertain share); binary
when asked (`binary_data` per output, `binary_data_output` per request). The images of a request go through the
service's own path (serving.service.SegmentationService.infer_many): the gate, admission by work, the batcher, tiles,
limits and refusals; errors are the protocol's `{"error": "..."}` with the statuses of the multipart routes.
"""

from __future__ import annotations

import base64
import json
import struct
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import bentoml
import numpy as np
from fastapi import APIRouter, Depends, Header, Request
from fastapi import Path as FastAPIPath
from starlette.responses import JSONResponse, Response

from .http import ERROR_RESPONSES, Problem, check_token, problem_doc

MODEL = "segmentation"  # the service's name: whatever model it serves
EXTENSIONS = ["binary_tensor_data"]
OUTPUTS = ("mask", "mask_png", "stats", "confidence")
INFER = r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"  # the gated paths (serving.http.Gate)

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
Name = Annotated[str, FastAPIPath(pattern=r"^[A-Za-z0-9_.:@-]+$", description="the model: `segmentation`")]
Version = Annotated[str, FastAPIPath(pattern=r"^[A-Za-z0-9_.:@-]+$", description="the version served (GET /model)")]


def _service():
    return bentoml.get_current_service()


def _token(authorization: str = Header("")) -> None:
    check_token(_service().config, authorization)


def _model(name: str, ver: str | None):
    """The served model, if `name` (and `ver`, when given) address it; else a 404 saying what is served."""
    model = _service().model
    if name != MODEL or (ver is not None and ver != model.version):
        raise Problem(404, f"model {name!r}" + (f" version {ver!r}" if ver else "") + f" is not served here: "
                           f"the model is {MODEL!r}, version {model.version!r}")  # fmt: skip
    return model


NOT_FOUND = {404: problem_doc("no such model or version: the model is `segmentation`, at the version served")}
TOKEN = {401: ERROR_RESPONSES[401]}


@router.get("", summary="Server metadata: name, version and the protocol extensions supported")
def server_metadata() -> dict:
    try:
        release = version("fastai-seg-serving")
    except PackageNotFoundError:  # the bento: serving/ copied in without the project's metadata
        release = "bento"
    return {"name": MODEL, "version": release, "extensions": EXTENSIONS}


@router.get("/health/live", summary="Live: the server answers")
def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Ready: the model is loaded and warmed up")
def ready() -> dict:
    return {"ready": _service() is not None}


# the extension, as the metadata states it: a client reads `datatype` and `shape` from here to send encoded images
IMAGE_BYTES = {"datatype": "BYTES", "shape": [-1], "description": "encoded images (PNG, JPEG, WebP, BMP, TIFF, GIF), "
               "each at its own size, accepted for `image` in place of its UINT8 pixels"}  # fmt: skip


def _metadata(name: str, ver: str | None = None) -> dict:
    model = _model(name, ver)
    meta, probs = model.meta, model.runtime.has_probs
    outputs = [
        {"name": "mask", "datatype": "UINT8", "shape": [-1, -1, -1]},
        {"name": "mask_png", "datatype": "BYTES", "shape": [-1]},
        {"name": "stats", "datatype": "BYTES", "shape": [-1]},
    ] + ([{"name": "confidence", "datatype": "FP32", "shape": [-1, 2]}] if probs else [])
    return {"name": MODEL, "versions": [model.version], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]}],
            "outputs": outputs,
            "parameters": {"classes": list(meta.classes), "colours": [list(c) for c in meta.colours],
                           "training_size": list(meta.input_size), "image_bytes": IMAGE_BYTES,
                           "variant": model.runtime.variant}}  # fmt: skip


@router.get(
    "/models/{name}", summary="Model metadata", responses={**TOKEN, **NOT_FOUND}, dependencies=[Depends(_token)]
)
def model_metadata(name: Name) -> dict:
    return _metadata(name)


@router.get("/models/{name}/versions/{ver}", summary="Model metadata at a version", responses={**TOKEN, **NOT_FOUND},
            dependencies=[Depends(_token)])  # fmt: skip
def model_version_metadata(name: Name, ver: Version) -> dict:
    return _metadata(name, ver)


@router.get("/models/{name}/ready", summary="Model ready", responses={**TOKEN, **NOT_FOUND},
            dependencies=[Depends(_token)])  # fmt: skip
def model_ready(name: Name) -> dict:
    return {"name": MODEL, "ready": _model(name, None) is not None}


@router.get("/models/{name}/versions/{ver}/ready", summary="Model ready at a version",
            responses={**TOKEN, **NOT_FOUND}, dependencies=[Depends(_token)])  # fmt: skip
def model_version_ready(name: Name, ver: Version) -> dict:
    return {"name": MODEL, "ready": _model(name, ver) is not None}


TENSOR = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
    "name": {"type": "string"}, "datatype": {"type": "string"},
    "shape": {"type": "array", "items": {"type": "integer"}}, "parameters": {"type": "object"},
    "data": {"type": "array"}}}  # fmt: skip
REQUEST = {"type": "object", "required": ["inputs"], "properties": {
    "id": {"type": "string"}, "parameters": {"type": "object"},
    "inputs": {"type": "array", "items": TENSOR, "minItems": 1},
    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string", "enum": list(OUTPUTS)}, "parameters": {"type": "object"}}}}}}  # fmt: skip
INFER_DOC = {
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": REQUEST},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": "the binary tensor data extension: the JSON request (its length in "
                                                    "Inference-Header-Content-Length), then the tensors' bytes"}}},
    "parameters": [{"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                    "schema": {"type": "integer", "minimum": 0}}],
}  # fmt: skip
INFER_RESPONSES = {
    200: {"description": "the outputs, JSON or JSON and binary (Inference-Header-Content-Length)", "headers": {
        "Inference-Header-Content-Length": {"description": "length of the JSON part when outputs are binary",
                                            "schema": {"type": "integer"}}}},
    **{s: r for s, r in ERROR_RESPONSES.items()}, **NOT_FOUND,
}  # fmt: skip


@router.post("/models/{name}/infer", summary="Inference", openapi_extra=INFER_DOC, responses=INFER_RESPONSES)
async def infer(name: Name, request: Request) -> Response:
    return await _infer(name, None, request)


@router.post("/models/{name}/versions/{ver}/infer", summary="Inference at a version", openapi_extra=INFER_DOC,
             responses=INFER_RESPONSES)  # fmt: skip
async def infer_version(name: Name, ver: Version, request: Request) -> Response:
    return await _infer(name, ver, request)


async def _infer(name: str, ver: str | None, request: Request) -> Response:
    svc = _service()
    try:
        model = _model(name, ver)
        body = await _read(request, svc.config.max_bytes)
        req, binary = _split(body, request.headers.get("inference-header-content-length"))
        sources = _images(req, binary, svc.config)
        wanted = _wanted(req, model)
        results, model = await svc.infer_many(sources)
        return _response(req, wanted, results, model)
    except Problem as problem:
        svc.metrics.refused.labels(status=str(problem.status)).inc()
        return problem.response()


async def _read(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise Problem(413, f"request body is {int(length)} bytes, over the {limit}-byte limit (SEG_MAX_BYTES): "
                           "send fewer or smaller images per request")  # fmt: skip
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"request body is over the {limit}-byte limit (SEG_MAX_BYTES): send fewer images")
        chunks.append(chunk)
    return b"".join(chunks)


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON request and the binary part after it (the binary tensor data extension)."""
    if header_length is not None:
        if not header_length.strip().isdigit():
            raise Problem(400, f"Inference-Header-Content-Length {header_length!r} is not a byte count")
        n = int(header_length)
        if n > len(body):
            raise Problem(400, f"Inference-Header-Content-Length is {n} but the body has only {len(body)} bytes: "
                               "send the JSON header and the binary tensors it announces")  # fmt: skip
        head, binary = body[:n], body[n:]
    else:
        head, binary = body, b""
    try:
        req = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        why = 'the inference request is not JSON: send {"inputs": [{"name": "image", ...}]}'
        raise Problem(400, why + " (with binary tensors, its length in Inference-Header-Content-Length)") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise Problem(400, 'the inference request needs "inputs": a list with one tensor named `image`')
    return req, binary


def _images(req: dict, binary: bytes, cfg) -> list:
    """The images of the request's `image` tensor: encoded bytes (BYTES) or (H, W, 3) uint8 arrays (UINT8)."""
    inputs = req["inputs"]
    if len(inputs) != 1 or not isinstance(inputs[0], dict) or inputs[0].get("name") != "image":
        got = [t.get("name") if isinstance(t, dict) else t for t in inputs]
        raise Problem(400, f"one input named `image` is expected, got {got}")
    t = inputs[0]
    dtype, shape, params = t.get("datatype"), t.get("shape"), t.get("parameters") or {}
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise Problem(400, f"`image` shape {shape!r}: give a list of sizes, [N] for BYTES or [N, H, W, 3] for UINT8")
    size = params.get("binary_data_size")
    if size is not None and (not isinstance(size, int) or size < 0 or size != len(binary)):
        raise Problem(400, f"`image` says binary_data_size {size} but {len(binary)} bytes follow the JSON header")
    raw = binary if size is not None else None
    if raw is None and "data" not in t:
        raise Problem(400, '`image` has no data: put it in "data" or send it binary (binary_data_size)')
    if dtype == "BYTES":
        return _encoded(shape, t.get("data"), raw, cfg)
    if dtype == "UINT8":
        return _pixels(shape, t.get("data"), raw, cfg)
    raise Problem(400, f"`image` datatype {dtype!r}: send BYTES (encoded images, shape [N]) or UINT8 "
                       "(raw RGB pixels, shape [N, H, W, 3])")  # fmt: skip


def _encoded(shape: list, data, raw: bytes | None, cfg) -> list[bytes]:
    if len(shape) != 1 or shape[0] < 1:
        raise Problem(400, f"BYTES `image` shape {shape}: give [N], one encoded image per element (N >= 1)")
    n = shape[0]
    if n > cfg.max_tiles:
        raise Problem(413, f"{n} images in one request, over SEG_MAX_TILES={cfg.max_tiles}: send fewer per request")
    if raw is not None:
        out, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise Problem(400, "BYTES `image` is cut off inside an element's 4-byte length")
            (k,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + k > len(raw):
                raise Problem(400, f"BYTES `image` element {len(out)} says {k} bytes but the body ends first: "
                                   "the binary tensor is truncated")  # fmt: skip
            out.append(raw[pos + 4 : pos + 4 + k])
            pos += 4 + k
    else:
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise Problem(400, 'BYTES `image` in JSON: "data" is a list of base64 strings, one encoded image each')
        try:
            out = [base64.b64decode(x, validate=True) for x in data]
        except ValueError:
            raise Problem(400, "BYTES `image` in JSON: each element must be the image's bytes in base64") from None
    if len(out) != n:
        raise Problem(400, f"BYTES `image` shape [{n}] but {len(out)} elements were sent")
    return out


def _pixels(shape: list, data, raw: bytes | None, cfg) -> list[np.ndarray]:
    if len(shape) != 4 or shape[3] != 3 or min(shape[:3]) < 1:
        raise Problem(400, f"UINT8 `image` shape {shape}: give [N, H, W, 3] (RGB), N, H and W at least 1")
    n, h, w, _ = shape
    if h * w > cfg.max_pixels:
        raise Problem(413, f"UINT8 `image` of {w}x{h} = {w * h} pixels, over the {cfg.max_pixels}-pixel limit "
                           "(SEG_MAX_PIXELS): downscale it")  # fmt: skip
    if n > cfg.max_tiles:
        raise Problem(413, f"{n} images in one request, over SEG_MAX_TILES={cfg.max_tiles}: send fewer per request")
    count = n * h * w * 3
    if raw is not None:
        if len(raw) != count:
            raise Problem(400, f"UINT8 `image` shape {shape} needs {count} bytes, {len(raw)} were sent")
        arr = np.frombuffer(raw, np.uint8)
    else:
        if not isinstance(data, list) or len(data) != count:
            raise Problem(400, f'UINT8 `image` shape {shape} needs {count} values in "data" (flat, row-major)')
        arr = np.asarray(data)
        if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() > 255:
            raise Problem(400, "UINT8 `image` values must be integers from 0 to 255")
        arr = arr.astype(np.uint8)
    return list(arr.reshape(n, h, w, 3))


def _wanted(req: dict, model) -> dict[str, bool]:
    """{output name: binary?} of the outputs asked for (all there are by default)."""
    params = req.get("parameters") or {}
    binary_all = bool(params.get("binary_data_output", False))
    asked = req.get("outputs")
    if asked is None:
        names = [o for o in OUTPUTS if o != "confidence" or model.runtime.has_probs]
        return {o: binary_all for o in names}
    if not isinstance(asked, list):
        raise Problem(400, f'"outputs" must be a list of {{"name": ...}}, one of {", ".join(OUTPUTS)}')
    wanted = {}
    for o in asked:
        name = o.get("name") if isinstance(o, dict) else None
        if name not in OUTPUTS:
            raise Problem(400, f"output {name!r} is not one of {', '.join(OUTPUTS)}")
        if name == "confidence" and not model.runtime.has_probs:
            raise Problem(400, "output `confidence`: the model served has no class probabilities")
        wanted[name] = bool((o.get("parameters") or {}).get("binary_data", binary_all))
    return wanted


def _response(req: dict, wanted: dict, results: list, model) -> Response:
    from . import imaging

    meta = model.meta
    tensors = []
    for name, binary in wanted.items():
        if name == "mask":
            shapes = {r.mask.shape for r in results}
            if len(shapes) > 1:
                raise Problem(400, f"output `mask` needs images of one size, these have {len(shapes)} sizes: "
                                   "ask for `mask_png` (one palette PNG per image) instead")  # fmt: skip
            tensors.append((name, "UINT8", np.stack([r.mask for r in results]), binary))
        elif name == "mask_png":
            tensors.append((name, "BYTES", [imaging.palette_png(r.mask, meta.colours) for r in results], binary))
        elif name == "stats":
            docs = [json.dumps({**imaging.class_stats(r.mask, meta.classes), "confidence": r.figures,
                                "model": model.version}).encode() for r in results]  # fmt: skip
            tensors.append((name, "BYTES", docs, binary))
        else:
            values = [[r.figures["mean"], r.figures["uncertain_fraction"]] for r in results]
            tensors.append((name, "FP32", np.asarray(values, np.float32), binary))
    outputs, parts = [], []
    for name, dtype, value, binary in tensors:
        shape = [len(value)] if dtype == "BYTES" else list(value.shape)
        out = {"name": name, "datatype": dtype, "shape": shape}
        if binary:
            blob = b"".join(struct.pack("<I", len(v)) + v for v in value) if dtype == "BYTES" else value.tobytes()
            out["parameters"] = {"binary_data_size": len(blob)}
            parts.append(blob)
        else:
            out["data"] = [v.decode() if name == "stats" else base64.b64encode(v).decode() for v in value] \
                if dtype == "BYTES" else value.ravel().tolist()  # fmt: skip
        outputs.append(out)
    doc = {"model_name": MODEL, "model_version": model.version, "outputs": outputs}
    if isinstance(req.get("id"), str):
        doc["id"] = req["id"]
    head = json.dumps(doc).encode()
    headers = {"Seg-Model": model.version}
    if not parts:
        return JSONResponse(doc, headers=headers)
    headers["Inference-Header-Content-Length"] = str(len(head))
    return Response(head + b"".join(parts), media_type="application/octet-stream", headers=headers)
