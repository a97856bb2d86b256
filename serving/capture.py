"""The uploads to label next: the ones the model was unsure of (and, optionally, a random sample), kept with the
predicted mask as a pre-annotation, in the layout `python -m training fit` reads.

    SEG_CAPTURE_DIR/images/<id>.<ext>    the upload as it came (its own format and bytes)
    SEG_CAPTURE_DIR/images/<id>.json     the predicted mask as LabelMe polygons (labelme.LabelFile opens it)
    SEG_CAPTURE_DIR/masks/<id>.png       the predicted mask, class ids (a palette PNG)
    SEG_CAPTURE_DIR/codes.txt            the model's classes, in the model's order

A person opens images/ in LabelMe, corrects the polygons, and `python -m training masks --labelme DIR/images --out
DATA` turns them back into masks (in the model's class order, from codes.txt); or `fit --data DIR` trains on the
predicted masks as they are. Writing happens in a thread of its own, off the request path, through a bounded queue:
a full queue, a full disk, an unwritable folder or a cap reached never fails or slows an answer; each outcome is
counted (`seg_captures_total{outcome}`) and each kind of failure logged once.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("serving.capture")
QUEUE = 64  # captures waiting to be written; beyond, dropped (counted)
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif"}


@dataclass(frozen=True)
class Rule:
    folder: Path
    below: float  # an answer whose mean confidence is below this is kept
    sample: float  # and this share of all answers at random
    max_files: int
    max_bytes: int


def polygons(mask: np.ndarray, classes, skip=("background", "void")) -> list[dict]:
    """LabelMe shapes: the outline of each connected region of each class (contourpy's lines at 0.5 around the
    class's pixels), largest first so that a region inside another is drawn after it; points in pixel coordinates."""
    from contourpy import contour_generator

    shapes = []
    for c, name in enumerate(classes):
        if name.lower() in skip or not (mask == c).any():
            continue
        z = np.pad((mask == c).astype(np.float32), 1)  # closed outlines at the image border too
        for line in contour_generator(z=z, line_type="Separate").lines(0.5):
            pts = np.clip(line[:-1] - 1, 0, [mask.shape[1] - 1, mask.shape[0] - 1])
            if len(pts) >= 3:
                pts = pts[:: max(1, len(pts) // 200)]  # at most ~200 points: a person edits these
                area = 0.5 * abs(np.dot(pts[:, 0], np.roll(pts[:, 1], 1)) - np.dot(pts[:, 1], np.roll(pts[:, 0], 1)))
                shapes.append((area, {"label": name, "points": pts.round(1).tolist(), "group_id": None,
                                      "description": "predicted", "shape_type": "polygon", "flags": {}}))  # fmt: skip
    return [s for _, s in sorted(shapes, key=lambda t: -t[0])]


def labelme(image_name: str, mask: np.ndarray, classes, figures: dict | None, version: str) -> dict:
    """A LabelMe document for the image `image_name` (beside it) holding the predicted mask as polygons."""
    flags = {"predicted": True}
    return {"version": "5.5.0", "flags": flags, "shapes": polygons(mask, classes), "imagePath": image_name,
            "imageData": None, "imageHeight": int(mask.shape[0]), "imageWidth": int(mask.shape[1]),
            "predicted_by": version, "confidence": figures}  # fmt: skip


class Capture:
    """Decides which answers to keep and writes them in a thread of its own (see the module docstring)."""

    def __init__(self, rule: Rule, counter):
        self.rule, self.counter = rule, counter
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE)
        self.logged: set[str] = set()
        self.files = self.bytes = 0
        self.written = 0
        threading.Thread(target=self._writer, name="capture", daemon=True).start()

    def wanted(self, figures: dict | None) -> bool:
        if figures is not None and figures["mean"] < self.rule.below:
            return True
        return self.rule.sample > 0 and random.random() < self.rule.sample

    def offer(self, data: bytes, fmt: str, mask: np.ndarray, figures: dict | None, classes, colours, version) -> None:
        """Keep this answer if the rule wants it: queued, never waited for."""
        if not self.wanted(figures):
            return
        try:
            self.queue.put_nowait((data, fmt, mask, figures, tuple(classes), colours, version))
        except queue.Full:
            self._count("dropped_busy", "the capture queue is full (more captures than the disk takes)")

    def _count(self, outcome: str, why: str = "") -> None:
        self.counter.labels(outcome=outcome).inc()
        if why and outcome not in self.logged:
            self.logged.add(outcome)
            log.warning("capture to %s: %s (counted in seg_captures_total{outcome=%r}; logged once)",
                        self.rule.folder, why, outcome)  # fmt: skip

    def _writer(self) -> None:
        while True:
            item = self.queue.get()
            try:
                self._write(*item)
            except OSError as exc:
                self._count("failed", f"cannot write ({exc.strerror or exc.__class__.__name__}); answers go on")

    def _usage(self) -> tuple[int, int]:
        """Images and bytes already in the folder (every worker writes there): counted from the disk."""
        files = size = 0
        with os.scandir(self.rule.folder / "images") as it:
            for e in it:
                if not e.name.endswith(".json"):
                    files += 1
                    size += e.stat().st_size
        return files, size

    def _write(self, data: bytes, fmt: str, mask: np.ndarray, figures, classes, colours, version) -> None:
        from .imaging import palette_png

        root = self.rule.folder
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        files, size = self._usage()
        mask_png = palette_png(mask, colours)
        if files >= self.rule.max_files or size + len(data) + len(mask_png) > self.rule.max_bytes:
            caps = "SEG_CAPTURE_MAX_FILES, SEG_CAPTURE_MAX_BYTES"
            return self._count("dropped_cap", f"cap reached ({files} images, {size} bytes): {caps}")
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{self.written}"
        image = f"{name}{FORMATS.get(fmt, '.png')}"
        codes = root / "codes.txt"
        if not codes.is_file():
            codes.write_text("\n".join(classes) + "\n")
        (root / "masks" / f"{name}.png").write_bytes(mask_png)
        (root / "images" / f"{name}.json").write_text(json.dumps(labelme(image, mask, classes, figures, version)))
        (root / "images" / image).write_bytes(data)  # last: an image without its mask is never seen by fit
        self.written += 1
        self._count("written")

    def describe(self) -> dict:
        r = self.rule
        return {"folder": str(r.folder), "below": r.below, "sample": r.sample, "max_files": r.max_files,
                "max_bytes": r.max_bytes, "written_by_this_worker": self.written,
                "queued": self.queue.qsize()}  # fmt: skip
