"""The HTTP face of the service: what the inference routes take and give (BentoML I/O descriptors), and the OpenAPI
document with every status, header and body the routes really send (schemathesis holds them to it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, ClassVar

import attrs
import bentoml
from pydantic import BaseModel, Field

from .http import ERROR_RESPONSES, Problem, problem_doc, read_upload

ROUTES = ("/segment", "/overlay", "/stats", "/confidence")
# the headers of every answer of the inference routes (serving.service.answer_headers)
ANSWER_HEADERS = {
    "Seg-Model": {"description": "the model version that answered", "schema": {"type": "string"}},
    "Seg-Confidence": {
        "description": "mean top-1 class probability over the answer's pixels (absent: a model without probabilities)",
        "schema": {"type": "string", "pattern": r"^[01]\.[0-9]{4}$"},
    },
    "Seg-Uncertain-Fraction": {
        "description": "share of the answer's pixels whose top-1 probability is below SEG_UNCERTAIN_BELOW",
        "schema": {"type": "string", "pattern": r"^[01]\.[0-9]{4}$"},
    },
}
INVALID = "a path or header value outside its declared pattern (the first one named)"
NO_PROBS = problem_doc("the model served has no class probabilities (exported with --no-probs): no confidence map")


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


class Confidence(BaseModel):
    mean: float = Field(description="mean top-1 class probability over the answer's pixels")
    uncertain_fraction: float = Field(
        description="share of the pixels whose top-1 probability is below SEG_UNCERTAIN_BELOW"
    )


class Stats(bentoml.IODescriptor):
    """Per-class pixel counts of the mask at the upload's size, how sure the model was, and its version."""

    width: int
    height: int
    classes: list[ClassStats]
    confidence: Confidence | None = Field(None, description="null when the model gives no class probabilities")
    model: str = Field("", description="the model version that answered (also the Seg-Model header)")


# The wire type of /segment and /overlay: BentoML documents it as image/png and its client saves it to a file. The
# methods return a starlette Response holding those PNG bytes (BentoML passes a Response through as it is).
PNG = Annotated[Path, bentoml.validators.ContentType("image/png")]


DESCRIPTION = """Semantic segmentation with a fastai U-Net exported to ONNX, served with BentoML over ONNX Runtime
(CUDA when a GPU is there, CPU otherwise). POST an image to /segment (palette PNG mask), /overlay, /stats or
/confidence: the answer has the image's own size, and says how sure the model was (Seg-Confidence) and which
version answered (Seg-Model). Try it in the browser at /ui; GET /model describes the model."""


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
            ok = {**operation["responses"][200], "headers": ANSWER_HEADERS}
            errors = {**ERROR_RESPONSES, **({409: NO_PROBS} if route == "/confidence" else {})}
            operation["responses"] = {200: ok, **errors}
            operation["requestBody"]["required"] = True  # no body: 415
            content = operation["requestBody"]["content"]
            for kind, media in content.items():  # an unknown field: 400 (BentoML's document objects are frozen attrs)
                content[kind] = attrs.evolve(media, schema=attrs.evolve(media.schema, additionalProperties=False))
        for item in spec.paths.values():  # the mounted routes' 422: {"error"} too (serving.http.json_problems)
            for method in ("get", "post", "put", "delete"):
                operation = getattr(item, method, None)
                doc = operation.get("responses", {}).get("422") if isinstance(operation, dict) else None
                if doc and "HTTPValidationError" in json.dumps(doc):  # FastAPI's own, not one we declared
                    operation["responses"]["422"] = problem_doc(INVALID)
        return spec
