"""The per-request work every server in the comparison does, with the same functions as our service:
decode and validate the upload, squish to the model size (PIL bilinear); after the model, the mask back to
the upload's size (nearest) and a palette PNG."""
from __future__ import annotations

import numpy as np

from serving import imaging
from serving.runtime import SegmentationRuntime

LIMITS = {"max_bytes": 20_000_000, "max_pixels": 40_000_000}


def load(model: str, variant: str) -> SegmentationRuntime:
    """One ONNX Runtime session with one intra-op thread: each peer runs one per worker or replica."""
    return SegmentationRuntime.load(model, "cpu", variant, threads=1)


def prepare(rt: SegmentationRuntime, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    """Upload bytes -> (model input (H, W, 3) uint8, the upload's (W, H))."""
    img = imaging.decode_image(data, **LIMITS)
    return imaging.resize_to_model(img, rt.meta.input_size), img.size


def finish(rt: SegmentationRuntime, mask: np.ndarray, size_wh: tuple[int, int]) -> bytes:
    """Model-size mask -> palette PNG bytes at the upload's size."""
    return imaging.palette_png(imaging.resize_mask(mask, size_wh), rt.meta.colours)
