"""The served model, and a new version of it without a restart.

A `ServedModel` is one loaded version: its ONNX Runtime session (serving.runtime, with its start-up checks: the
contract, the int8 accuracy rule on this CPU), warmed up at every batch size, its own batcher, and its version. The
service answers each request with the model that was current when the request was admitted; a new version replaces
it for the requests that come after, while the admitted ones finish on the one they started with.

`Watcher` polls the model source every SEG_RELOAD_S seconds: for a folder, any change to the files a load reads
(model.onnx, the variants, check/; the folder replaced by another export counts), for a BentoML tag such as
segmentation:latest, the version the tag resolves to. On a change it loads the new version in a thread beside the
old one, runs the same checks and warm-up, and hands it over at once; a version that fails a check is not served:
the old one stays, and the log, /model and `seg_model_reloads_total{outcome="failed"}` say why.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract import store

from . import imaging, pipeline
from .batching import Batcher
from .runtime import VARIANT_FILES, SegmentationRuntime

log = logging.getLogger("serving.models")


def fingerprint(source: str) -> tuple:
    """What identifies the version `source` (a folder or a tag) resolves to now: its folder and, for each file a
    load reads, its name, size, modification time and inode. Cheap: no file is read."""
    folder = store.resolve(source)
    files = [folder / f for f in VARIANT_FILES.values()] + sorted((folder / "check").glob("*"))
    stats = []
    for f in files:
        try:
            st = f.stat()
            stats.append((f.name, st.st_size, st.st_mtime_ns, st.st_ino))
        except FileNotFoundError:
            continue
    return (str(folder.resolve()), tuple(stats))


def version_of(source: str, folder: Path) -> str:
    """The version's name: a BentoML tag's own (segmentation:abc123), or a folder's name and the first 12 hex
    digits of its model.onnx's SHA-256 (default@3f2a9c1b4e7d)."""
    if store.is_tag(source):
        return f"{folder.parent.name}:{folder.name}"
    digest = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()[:12]
    return f"{folder.name}@{digest}"


@dataclass
class ServedModel:
    runtime: SegmentationRuntime
    batcher: Batcher
    version: str
    source: str
    fingerprint: tuple
    loaded_at: float = field(default_factory=time.time)

    @property
    def meta(self):
        return self.runtime.meta

    @property
    def reference(self) -> dict | None:
        """The confidence on the held-out images the export stored (None for older exports or without probs)."""
        raw = self.meta.raw.get("confidence_reference")
        return json.loads(raw) if raw else None


def load(config, *, on_batch, share_cap) -> ServedModel:
    """Load, check and warm up the version `config.model_source` resolves to now, with a batcher of its own."""
    source = config.model_source
    stamp = fingerprint(source)
    folder = Path(stamp[0])
    rt = SegmentationRuntime.load(folder, config.device, config.variant, threads=config.intra_op_threads,
                                  spin=config.ort_spin)  # fmt: skip
    shapes = pipeline.warmup_shapes(rt.meta)
    t = time.perf_counter()
    rt.warmup(range(1, config.max_batch_size + 1), shapes)
    log.warning(
        "warm-up of batch sizes 1..%d at %s took %.2f s", config.max_batch_size, shapes, time.perf_counter() - t
    )
    h, w = shapes[0]
    run = batch_runner(rt)
    t = time.perf_counter()
    run(np.zeros((config.max_batch_size, h, w, 3), np.uint8))
    seed = (time.perf_counter() - t) / config.max_batch_size
    batcher = Batcher(run, max_batch_size=config.max_batch_size, unit_pixels=h * w, seed_seconds_per_unit=seed,
                      on_batch=on_batch, share_cap=share_cap)  # fmt: skip
    return ServedModel(rt, batcher, version_of(source, folder), source, stamp)


def batch_runner(rt: SegmentationRuntime):
    """A batch through ONNX Runtime: (mask, probs or None) per input."""

    def run(batch: np.ndarray) -> list[tuple[np.ndarray, np.ndarray | None]]:
        masks, probs = rt.run_scores(batch)
        return list(zip(masks, probs if probs is not None else [None] * len(masks)))

    return run


def price_pixels(model: ServedModel) -> float:
    """Seconds per upload pixel of a request's work around the model (decode, resize, upsample, encode), measured
    once on a synthetic photo at twice the model's scale: the admission's price until real requests measure it."""
    h, w = model.meta.input_size
    yy, xx = np.mgrid[0 : 2 * h, 0 : 2 * w]
    photo = np.stack([xx * 255 // (2 * w), yy * 255 // (2 * h), (xx + yy) % 256], -1).astype(np.uint8)
    data, run = imaging.png_bytes(photo), batch_runner(model.runtime)
    spent = []
    for _ in range(3):
        t = time.perf_counter()
        im = imaging.open_image(data, max_bytes=len(data), max_pixels=photo.shape[0] * photo.shape[1])
        plan = pipeline.plan(model.meta, im.size)
        job = pipeline.Job(model.meta, imaging.load_rgb(im, data, pipeline.decode_size(plan)), plan)
        around = time.perf_counter() - t
        job.add(run(np.stack(next(job.chunks(1)))))
        t = time.perf_counter()
        imaging.palette_png(job.mask(), model.meta.colours)
        spent.append(around + time.perf_counter() - t)
    return min(spent) / photo.shape[0] / photo.shape[1]


class Watcher:
    """Polls the model source and swaps in a new version (see the module docstring). `swap(model)` installs it."""

    def __init__(self, config, current: ServedModel, swap, loader, counter):
        self.config, self.current, self.swap, self.loader, self.counter = config, current, swap, loader, counter
        self.checked_at: float | None = None
        self.last_error: str | None = None
        self.failed: tuple | None = None  # the fingerprint that failed: not retried until it changes
        self.history: list[dict] = [{"version": current.version, "loaded_at": current.loaded_at}]
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.config.reload_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._poll(), name="model-watcher")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.reload_s)
            await self.check()

    async def check(self) -> bool:
        """One poll: True when a new version was loaded and swapped in."""
        self.checked_at = time.time()
        try:
            stamp = await asyncio.to_thread(fingerprint, self.config.model_source)
        except Exception as exc:  # the tag or folder is gone for now: keep serving, say why
            self.last_error = f"cannot resolve {self.config.model_source}: {str(exc).splitlines()[0][:200]}"
            return False
        if stamp == self.current.fingerprint or stamp == self.failed:
            return False
        await asyncio.sleep(min(1.0, self.config.reload_s))  # a folder being replaced: let the writer finish
        try:
            new = await asyncio.to_thread(self.loader)
        except Exception as exc:  # ContractError, a half-written file, a failed int8 rule...: the old one stays
            self.failed = stamp
            self.last_error = f"{time.strftime('%H:%M:%S')}: not served: {str(exc).splitlines()[0][:300]}"
            self.counter.labels(outcome="failed").inc()
            log.warning("model %s: new version %s", self.config.model_source, self.last_error)
            return False
        self.current, self.failed, self.last_error = new, None, None
        self.swap(new)
        self.counter.labels(outcome="ok").inc()
        self.history.append({"version": new.version, "loaded_at": new.loaded_at})
        log.warning("model %s: now serving %s", self.config.model_source, new.version)
        return True

    def describe(self) -> dict:
        return {"poll_s": self.config.reload_s or "off (SEG_RELOAD_S=0)", "last_check": self.checked_at,
                "last_error": self.last_error, "versions": self.history[-10:]}  # fmt: skip
