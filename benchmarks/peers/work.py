"""The per-request work every server in the comparison does, with the same functions as our service
(serving.pipeline): decode and validate the upload, resize it to the model's scale; after the model,
the class scores upsampled to the upload's size, argmax, a palette PNG."""

from __future__ import annotations

import numpy as np

from serving import imaging, pipeline
from serving.config import ServeConfig
from serving.runtime import SegmentationRuntime

LIMITS = {
    "max_bytes": ServeConfig().max_bytes,
    "max_pixels": ServeConfig().max_pixels,
}  # the service's own upload limits


def load(model: str, variant: str) -> SegmentationRuntime:
    """One ONNX Runtime session with one intra-op thread: each peer runs one per worker or replica."""
    return SegmentationRuntime.load(model, "cpu", variant, threads=1)


def prepare(rt: SegmentationRuntime, data: bytes) -> pipeline.Job:
    """Upload bytes -> the job of one image (its model input: `job.single_input`)."""
    im = imaging.open_image(data, **LIMITS)
    plan = pipeline.plan(rt.meta, imaging.displayed_size(im, data))
    return pipeline.Job(rt.meta, imaging.load_rgb(im, data, pipeline.decode_size(plan)), plan)


def run(rt: SegmentationRuntime, inputs: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """A batch of model inputs -> (mask, probs) per input, in order; inputs of different shapes (uploads
    of other aspects) run as separate ONNX Runtime calls, as our batcher does."""
    out: list = [None] * len(inputs)
    for shape in dict.fromkeys(x.shape for x in inputs):
        idx = [i for i, x in enumerate(inputs) if x.shape == shape]
        masks, probs = rt.run_scores(np.stack([inputs[i] for i in idx]))
        for k, i in enumerate(idx):
            out[i] = (masks[k], probs[k] if probs is not None else None)
    return out


def finish(rt: SegmentationRuntime, job: pipeline.Job, output) -> bytes:
    """The model's output for the job -> palette PNG bytes at the upload's size."""
    job.add([output])
    return imaging.palette_png(job.mask(), rt.meta.colours)
