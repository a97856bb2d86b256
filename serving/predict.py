"""Folder prediction without a server: the same runtime and data path as the service, batched.

    python -m serving predict INPUT_DIR OUTPUT_DIR [--model DIR] [--overlays] [--csv] [--tile] [--batch-size N]

Writes OUTPUT_DIR/<stem>.png (palette mask at the image's size), optionally <stem>.overlay.png and
classes.csv (class fractions per image). Resumable: images whose mask exists are skipped. Inputs are
never overwritten: OUTPUT_DIR may not be INPUT_DIR. An unreadable image is reported in one line and
skipped; the exit code is non-zero if any failed.
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import imaging, tiling
from .runtime import SegmentationRuntime

EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class PredictError(Exception):
    """Bad arguments: printed as one line, exit code 2."""


@dataclass
class PredictConfig:
    input_dir: Path
    output_dir: Path
    model_dir: Path = Path("exported_models/default")
    device: str = "auto"
    variant: str = "auto"
    batch_size: int = 8
    overlays: bool = False
    csv: bool = False
    tile: bool = False
    max_pixels: int = 400_000_000


def _progress(total: int):
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="img", file=sys.stderr)
    except ImportError:  # the serving image may not have tqdm: a line every 10 %
        class Lines:
            n = 0

            def update(self, k):
                self.n += k
                if total and (self.n == total or self.n % max(total // 10, 1) == 0):
                    print(f"{self.n}/{total} images", file=sys.stderr, flush=True)

            def close(self):
                pass

        return Lines()


def predict_folder(cfg: PredictConfig) -> dict:
    """Segment every image in `cfg.input_dir` into `cfg.output_dir`; returns counts (done, skipped, failed)."""
    src, dst = Path(cfg.input_dir).resolve(), Path(cfg.output_dir).resolve()
    if not src.is_dir():
        raise PredictError(f"{cfg.input_dir}: input folder not found")
    if dst == src:
        raise PredictError(f"{cfg.output_dir}: output folder is the input folder; pass another one so no input is overwritten")
    if cfg.batch_size < 1:
        raise PredictError(f"--batch-size {cfg.batch_size}: must be >= 1")
    images = sorted(p for p in src.iterdir() if p.suffix.lower() in EXTS and p.is_file())
    if not images:
        raise PredictError(f"{cfg.input_dir}: no images ({', '.join(EXTS)})")
    rt = SegmentationRuntime.load(cfg.model_dir, cfg.device, cfg.variant)
    dst.mkdir(parents=True, exist_ok=True)
    todo = [p for p in images if not (dst / f"{p.stem}.png").exists()]
    counts = {"done": 0, "skipped": len(images) - len(todo), "failed": 0}
    rows = []
    bar = _progress(len(todo))

    def save(path: Path, img, mask):
        (dst / f"{path.stem}.png").write_bytes(imaging.palette_png(mask, rt.meta.colours))
        if cfg.overlays:
            (dst / f"{path.stem}.overlay.png").write_bytes(imaging.overlay_png(img, mask, rt.meta.colours))
        if cfg.csv:
            s = imaging.class_stats(mask, rt.meta.classes)
            rows.append({"image": path.name, "width": s["width"], "height": s["height"], **{c["name"]: round(c["fraction"], 6) for c in s["classes"]}})

    pending: list[tuple[Path, object]] = []

    def flush():
        if not pending:
            return
        batch = np.stack([imaging.resize_to_model(img, rt.meta.input_size) for _, img in pending])
        for (path, img), m in zip(pending, rt.run(batch)):
            save(path, img, imaging.resize_mask(m, img.size))
            counts["done"] += 1
        bar.update(len(pending))
        pending.clear()

    for path in todo:
        try:
            img = imaging.decode_image(path.read_bytes(), max_bytes=10**10, max_pixels=cfg.max_pixels)
        except (imaging.ImageError, OSError) as exc:
            print(f"skipped {path.name}: {exc}", file=sys.stderr, flush=True)
            counts["failed"] += 1
            bar.update(1)
            continue
        if cfg.tile:
            overlap = tiling.default_overlap(rt.meta.input_size)
            mask = tiling.segment_tiled(np.asarray(img), rt.run, rt.meta.input_size, overlap, rt.meta.n_classes, cfg.batch_size)
            save(path, img, mask)
            counts["done"] += 1
            bar.update(1)
            continue
        pending.append((path, img))
        if len(pending) == cfg.batch_size:
            flush()
    flush()
    bar.close()
    if cfg.csv and rows:
        out = dst / "classes.csv"
        new = not out.exists()
        with out.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
    return counts
