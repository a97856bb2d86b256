"""The Python API: an exported model in this process, no server.

    from serving import Segmenter
    seg = Segmenter.load("exported_models/default")
    mask = seg.predict("photo.jpg")          # (H, W) uint8 class ids at the photo's size
    seg.overlay("photo.jpg").save("o.png")    # the photo with the class colours blended over it
    seg.stats("photo.jpg")                    # {"width", "height", "classes": [{"id", "name", "pixels", "fraction"}]}
    seg.confidence("photo.jpg")               # {"mean": 0.97, "uncertain_fraction": 0.02}: how sure the model was

The same data path as the service (serving.pipeline), with ONNX Runtime called directly; used by
`python -m serving predict` and its Ray runner. Images may be a path, bytes, a PIL image or an
(H, W, 3) uint8 array.
"""

from __future__ import annotations

import io
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from contract.metadata import DEFAULT_BATCH_SIZE
from contract.metrics import UNCERTAIN_BELOW

from . import imaging, pipeline
from .runtime import SegmentationRuntime

MAX_PIXELS = (
    400_000_000  # per file offline (a 20000 x 20000 photo); a larger one is reported and skipped, the run goes on
)


def to_image(image, max_pixels: int = imaging.NO_LIMIT["max_pixels"]) -> Image.Image:
    """A path, bytes, PIL image or (H, W, 3) uint8 array -> RGB PIL image (EXIF orientation applied);
    imaging.ImageError says what is wrong with a file."""
    if isinstance(image, Image.Image):
        return imaging.to_rgb(image)
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.ascontiguousarray(image[..., :3]).astype(np.uint8))
    data = Path(image).read_bytes() if isinstance(image, (str, Path)) else bytes(image)
    return imaging.decode_image(data, max_bytes=imaging.NO_LIMIT["max_bytes"], max_pixels=max_pixels)


class Segmenter:
    """One exported model: `predict`, `overlay` and `stats` for single images, `predict_many` batched."""

    def __init__(self, runtime: SegmentationRuntime):
        self.runtime, self.meta = runtime, runtime.meta

    @classmethod
    def load(
        cls, model: str | Path, device: str = "auto", variant: str = "auto", threads: int | None = None
    ) -> "Segmenter":
        """Open an exported model, a folder (model.onnx + variants) or a BentoML model tag such as
        "segmentation:latest", on `device` ("auto", "cuda", "cpu")."""
        from contract.store import resolve

        return cls(SegmentationRuntime.load(resolve(model), device, variant, threads=threads))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.meta.classes

    def predict(self, image, tile: bool = False) -> np.ndarray:
        """One image -> (H, W) uint8 class ids at its own size."""
        return self.predict_many([to_image(image)], tile=tile)[0]

    def predict_many(
        self, images: list[Image.Image], tile: bool = False, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[np.ndarray]:
        """RGB images -> their masks, in order. Untiled images of the same model input shape share batches."""
        return [mask for mask, _ in self.analyse_many(images, tile=tile, batch_size=batch_size)]

    def confidence(self, image, tile: bool = False, below: float = UNCERTAIN_BELOW) -> dict | None:
        """How sure the model was of one image: {"mean": mean top-1 probability, "uncertain_fraction": share of its
        pixels below `below`} (the service's Seg-Confidence and Seg-Uncertain-Fraction); None without probabilities."""
        return self.analyse_many([to_image(image)], tile=tile, below=below)[0][1]

    def analyse_many(
        self, images: list[Image.Image], tile: bool = False, batch_size: int = DEFAULT_BATCH_SIZE,
        below: float = UNCERTAIN_BELOW,
    ) -> list[tuple[np.ndarray, dict | None]]:  # fmt: skip
        """RGB images -> (mask, confidence figures or None) each, in order; batched as `predict_many`."""
        jobs = [pipeline.Job(self.meta, img, pipeline.plan(self.meta, img.size, tile=tile)) for img in images]
        by_shape = defaultdict(list)
        for job in jobs:
            if job.plan.tiled:
                for chunk in job.chunks(batch_size):
                    job.add(self._run(np.stack(chunk)))
            else:
                by_shape[job.plan.input_hw].append(job)
        for group in by_shape.values():
            for i in range(0, len(group), batch_size):
                part = group[i : i + batch_size]
                for job, out in zip(part, self._run(np.stack([job.single_input for job in part]))):
                    job.add([out])
        return [(job.mask(), job.confidence(below)) for job in jobs]

    def _run(self, batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        masks, probs = self.runtime.run_scores(batch)
        return list(zip(masks, probs if probs is not None else [None] * len(masks)))

    def overlay(self, image, tile: bool = False) -> Image.Image:
        """The image with the class colours blended over it (background left as is), same size."""
        img = to_image(image)
        return Image.open(
            io.BytesIO(imaging.overlay_png(img, self.predict_many([img], tile=tile)[0], self.meta.colours))
        )

    def stats(self, image, tile: bool = False, rle: bool = False) -> dict:
        """Per-class pixel counts and fractions of the mask (and COCO RLE with rle=True)."""
        return imaging.class_stats(self.predict(image, tile=tile), self.meta.classes, rle=rle)

    def mask_png(self, mask: np.ndarray) -> bytes:
        """A mask as a palette PNG: pixel values are class ids, the palette the class colours."""
        return imaging.palette_png(mask, self.meta.colours)


@dataclass
class Result:
    """What one input becomes; `error` set means it was skipped."""

    name: str
    mask_png: bytes = b""
    overlay_png: bytes = b""
    row: dict | None = None
    error: str = ""


def segment_items(
    seg: Segmenter,
    items: list[tuple[str, bytes]],
    *,
    tile: bool = False,
    overlays: bool = False,
    stats: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pixels: int = MAX_PIXELS,
) -> list[Result]:
    """Decode, segment and encode a batch of (name, file bytes): one Result per item, in order.

    The images that decode go through the service's data path (serving.pipeline) in batches of equal
    model input shape; masks come back at each image's own size."""
    results = [Result(name) for name, _ in items]
    decoded = []
    for res, (_, data) in zip(results, items):
        try:
            decoded.append(
                (res, imaging.decode_image(data, max_bytes=imaging.NO_LIMIT["max_bytes"], max_pixels=max_pixels))
            )
        except imaging.ImageError as exc:
            res.error = str(exc)
    answers = seg.analyse_many([img for _, img in decoded], tile=tile, batch_size=batch_size)
    for (res, img), (mask, figures) in zip(decoded, answers):
        res.mask_png = seg.mask_png(mask)
        if overlays:
            res.overlay_png = imaging.overlay_png(img, mask, seg.meta.colours)
        if stats:
            s = imaging.class_stats(mask, seg.meta.classes)
            res.row = {
                "width": s["width"],
                "height": s["height"],
                **{c["name"]: round(c["fraction"], 6) for c in s["classes"]},
                "confidence": round(figures["mean"], 6) if figures else "",
                "uncertain_fraction": round(figures["uncertain_fraction"], 6) if figures else "",
            }
    return results


def read_items(paths) -> tuple[list[tuple[str, bytes]], list[Result]]:
    """(name, bytes) of each readable file, and a failed Result for each one that cannot be read."""
    items, unread = [], []
    for p in map(Path, paths):
        try:
            items.append((p.name, p.read_bytes()))
        except OSError as exc:
            unread.append(Result(p.name, error=f"cannot read on {os.uname().nodename}: {exc.strerror}"))
    return items, unread
