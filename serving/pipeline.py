"""From an image to the model's inputs and from their outputs back to a mask at the image's own size.

The same for the service (whose inputs go through the batcher), for `python -m serving predict`, the Ray
runner and the Python API (which call ONNX Runtime directly): `plan` decides the work, a `Job` cuts the
inputs and assembles the outputs.

- Any-size models (`dynamic_hw`): the image is resized to the training scale keeping its aspect (its
  short side becomes the training size's short side, PIL bilinear), padded to a multiple of 32 by
  reflection, run, cropped back, and the class scores are upsampled bilinearly to the image's size
  before the argmax. Inputs of the same padded shape batch together. An image that is still larger
  than twice the training area at that scale (a panorama), or asked with tile=true, is cut into
  overlapping tiles of the training size at that scale.
- Fixed-size models (older exports): squished to the model size (what their training did), scores
  upsampled the same way; tile=true cuts overlapping model-size tiles at full resolution.
A model without a `probs` output gets its class ids resized with nearest neighbour instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

from contract.geometry import ceil32, pad_reflect, scaled_hw
from contract.metadata import ModelMeta
from contract.metrics import UNCERTAIN_BELOW, confidence

from . import imaging, tiling

AUTO_TILE_AREA = 2.0  # any-size models: tile when the image at training scale exceeds this many training areas


@dataclass(frozen=True)
class Plan:
    """One image's model work. `scaled_hw`: the image at model scale (tiles and outputs live there);
    `input_hw`: the shape of every model input; `inputs`: how many."""

    size_wh: tuple[int, int]
    scaled_hw: tuple[int, int]
    input_hw: tuple[int, int]
    inputs: int
    layout: tiling.TileLayout | None = None

    @property
    def tiled(self) -> bool:
        return self.layout is not None


def scaled_size(meta: ModelMeta, size_wh: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of an image of `size_wh` at the model's scale: any-size models keep the aspect
    (`scaled_hw`); fixed-size models squish to their input size."""
    return scaled_hw(meta.input_size, size_wh) if meta.dynamic_hw else meta.input_size


def plan(
    meta: ModelMeta, size_wh: tuple[int, int], *, tile: bool = False, tile_above: int = 0, overlap: int = 0
) -> Plan:
    """The work for an image of `size_wh` (as displayed). `tile_above` (pixels of the upload) forces
    tiles for fixed-size models; `overlap` 0 means a quarter of a tile."""
    W, H = size_wh
    if meta.dynamic_hw:
        h, w = scaled_size(meta, size_wh)
        th, tw = ceil32(meta.input_size[0]), ceil32(meta.input_size[1])
        if tile or h * w > AUTO_TILE_AREA * th * tw:
            layout = tiling.plan_tiles((h, w), (th, tw), overlap or tiling.default_overlap((th, tw)))
            return Plan(size_wh, (h, w), (th, tw), len(layout.origins), layout)
        return Plan(size_wh, (h, w), (ceil32(h), ceil32(w)), 1)
    if tile or (tile_above and W * H > tile_above):
        layout = tiling.plan_tiles((H, W), meta.input_size, overlap or tiling.default_overlap(meta.input_size))
        return Plan(size_wh, (H, W), meta.input_size, len(layout.origins), layout)
    return Plan(size_wh, meta.input_size, meta.input_size, 1)


def decode_size(plan: Plan) -> tuple[int, int]:
    """(W, H) an upload may be decoded at for `plan` (imaging.load_rgb's `at_least`): twice its size at the
    model's scale, so that the bilinear resize still antialiases. A 1.2 Mpx JPEG for a 128 px model is
    decoded 5x faster, and the model input differs from a full decode by JPEG noise (mean 0.3-0.5 levels
    on skimage's photos)."""
    h, w = plan.scaled_hw
    return 2 * w, 2 * h


class Job:
    """The model work of one image: `chunks(n)` yields its inputs in lists of at most n (H, W, 3) uint8
    arrays; `add(outputs)` takes their outputs in the same order, each a (mask, probs-or-None) pair;
    `mask()` is the (H, W) uint8 result at the image's own size; then `confidence()` and `confidence_map()` tell
    how sure the model was (from its class probabilities; None for a model without a `probs` output)."""

    def __init__(self, meta: ModelMeta, img: Image.Image, plan: Plan):
        self.meta, self.plan = meta, plan
        self.size_wh = plan.size_wh  # `img` may have been decoded smaller (decode_size)
        sh, sw = plan.scaled_hw
        scaled = np.asarray(img if (img.size == (sw, sh)) else img.resize((sw, sh), Image.BILINEAR))
        if plan.tiled:
            self._padded = tiling.pad_for_tiles(scaled, plan.layout)
            # full-resolution tiles of a fixed model are decided by votes, row band by row band; tiles at
            # model scale keep their blended scores, which are upsampled afterwards
            self._blender = tiling.Blender(plan.layout, meta.n_classes, keep_scores=meta.dynamic_hw)
        else:
            ph, pw = plan.input_hw
            self._input = pad_reflect(scaled, ph, pw)
        self._output = None
        self.top1: np.ndarray | None = None  # each pixel's top-1 probability, at the scale the scores were decided
        self.decided: np.ndarray | None = None  # the class ids at that scale

    @property
    def single_input(self) -> np.ndarray:
        """The one model input of an untiled job."""
        return self._input

    def chunks(self, n: int) -> Iterator[list[np.ndarray]]:
        if not self.plan.tiled:
            yield [self._input]
            return
        total = self.plan.inputs
        for i in range(0, total, n):
            yield list(tiling.tiles_of(self._padded, self.plan.layout, i, min(i + n, total)))

    def add(self, outputs: list[tuple[np.ndarray, np.ndarray | None]]) -> None:
        if not self.plan.tiled:
            (self._output,) = outputs
            return
        masks, probs = zip(*outputs)
        self._blender.add(np.stack(probs) if probs[0] is not None else np.stack(masks))

    def mask(self) -> np.ndarray:
        sh, sw = self.plan.scaled_hw
        if self.plan.tiled and not self.meta.dynamic_hw:
            mask = self._blender.result()  # already at full resolution
            self.top1, self.decided = self._blender.top1, mask
            return mask
        if self.plan.tiled:
            probs, ids = self._blender.scores()
        else:
            ids, probs = self._output
            ids, probs = ids[:sh, :sw], (probs[:, :sh, :sw] if probs is not None else None)
        self.decided = ids
        if probs is None:
            return imaging.resize_mask(np.ascontiguousarray(ids), self.size_wh)
        self.top1 = probs.max(axis=0)
        return imaging.upsample_scores(probs, self.size_wh, np.ascontiguousarray(ids))

    def confidence(self, below: float = UNCERTAIN_BELOW) -> dict | None:
        """After `mask()`: {"mean", "uncertain_fraction"} of the top-1 probabilities (contract.metrics.confidence),
        over the pixels at the scale the model decided them (the model's scale; full resolution for the tiles of a
        fixed-size model); None when the model gives no probabilities."""
        return None if self.top1 is None else confidence(self.top1, below)

    def class_pixels(self, n_classes: int) -> np.ndarray:
        """After `mask()`: pixels per class at the image's own size, from the class ids at the scale the model decided
        them (exact for the full-resolution tiles of a fixed-size model), scaled by the area: counting a 1.2 Mpx mask
        cost ~2 ms a request, its 128 px decision 0.01 ms."""
        w, h = self.size_wh
        ids = self.decided
        if n_classes <= 16:  # a comparison per class beats bincount's copy to intp (3 classes: 7 vs 24 us at 128 px)
            counts = np.array([np.count_nonzero(ids == k) for k in range(n_classes)])
        else:
            counts = np.bincount(ids.ravel(), minlength=n_classes)
        return counts * (w * h / ids.size)

    def confidence_map(self) -> np.ndarray | None:
        """After `mask()`: (H, W) uint8 at the image's own size, each pixel's top-1 probability x 255 (bilinear)."""
        if self.top1 is None:
            return None
        top = Image.fromarray(np.asarray(self.top1, np.float32), "F").resize(self.size_wh, Image.BILINEAR)
        return np.clip(np.asarray(top) * 255 + 0.5, 0, 255).astype(np.uint8)


def warmup_shapes(meta: ModelMeta) -> list[tuple[int, int]]:
    """Input shapes worth compiling before the first request: the training shape (and its transpose
    for any-size models, whose portrait and landscape uploads make two buckets)."""
    if not meta.dynamic_hw:
        return [meta.input_size]
    th, tw = ceil32(meta.input_size[0]), ceil32(meta.input_size[1])
    return list(dict.fromkeys([(th, tw), (tw, th)]))


@dataclass
class Prepared:
    """An upload checked and planned: its image (not decoded yet), bytes (None: raw pixels), size (W, H), plan."""

    im: Image.Image
    data: bytes | None
    size: tuple[int, int]
    plan: Plan
    heavy: bool  # decoded, resized and encoded in a thread (SEG_OFFLOAD_PIXELS)
    model_s: float = 0.0  # seconds its model work took (what admission does not price per pixel)

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


@dataclass
class Answer:
    mask: np.ndarray  # (H, W) uint8 class ids at the upload's size
    figures: dict | None  # contract.metrics.confidence, None without probabilities
    job: Job
    img: Image.Image
