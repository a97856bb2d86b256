"""Folder prediction without a server: the same runtime and data path as the service, batched.

    python -m serving predict INPUT_DIR OUTPUT_DIR [--model DIR] [--overlays] [--csv] [--tile] [--batch-size N]
                                                   [--ray ADDRESS [--ray-actors N] [--ray-gpus F]]

Writes OUTPUT_DIR/<stem>.png (palette mask at the image's size), optionally <stem>.overlay.png and
classes.csv (class fractions per image). Resumable: images whose mask exists are skipped. Inputs are
never overwritten: OUTPUT_DIR may not be INPUT_DIR. An unreadable image is reported in one line and
skipped; the exit code is non-zero if any failed. With --ray the batches run on a Ray cluster
(serving/ray_predict.py); the driver still decides what to skip and writes every output.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from contract.metadata import DEFAULT_BATCH_SIZE, DEFAULT_MODEL_DIR, IMAGE_EXTENSIONS

from .segmenter import MAX_PIXELS, Segmenter, read_items, segment_items


class PredictError(Exception):
    """Bad arguments: printed as one line, exit code 2."""


@dataclass
class PredictConfig:
    input_dir: Path
    output_dir: Path
    model_dir: Path = DEFAULT_MODEL_DIR
    device: str = "auto"
    variant: str = "auto"
    batch_size: int = DEFAULT_BATCH_SIZE
    overlays: bool = False
    csv: bool = False
    tile: bool = False
    max_pixels: int = MAX_PIXELS
    ray: str | None = None  # None: this process; "local": a Ray cluster started here; else a Ray address
    ray_actors: int = 2
    ray_gpus: float = 0.0


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


def _check_folders(cfg: PredictConfig) -> tuple[Path, list[Path], int]:
    """Check the arguments; returns the output folder, the images still to do and how many are done."""
    src, dst = Path(cfg.input_dir).resolve(), Path(cfg.output_dir).resolve()
    if not src.is_dir():
        raise PredictError(f"{cfg.input_dir}: input folder not found")
    if dst == src:
        raise PredictError(
            f"{cfg.output_dir}: output folder is the input folder; pass another one so no input is overwritten"
        )
    if cfg.batch_size < 1:
        raise PredictError(f"--batch-size {cfg.batch_size}: must be >= 1")
    images = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not images:
        raise PredictError(f"{cfg.input_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    todo = [p for p in images if not (dst / f"{p.stem}.png").exists()]
    return dst, todo, len(images) - len(todo)


def _local_batches(cfg: PredictConfig, todo: list[Path]):
    seg = Segmenter.load(cfg.model_dir, cfg.device, cfg.variant)  # fails here, before any output

    def batches():
        for i in range(0, len(todo), cfg.batch_size):
            items, unread = read_items(todo[i : i + cfg.batch_size])
            yield unread + segment_items(
                seg,
                items,
                tile=cfg.tile,
                overlays=cfg.overlays,
                stats=cfg.csv,
                batch_size=cfg.batch_size,
                max_pixels=cfg.max_pixels,
            )

    return batches()


def predict_folder(cfg: PredictConfig) -> dict:
    """Segment every image in `cfg.input_dir` into `cfg.output_dir`; returns counts (done, skipped, failed)."""
    dst, todo, skipped = _check_folders(cfg)
    if cfg.ray is not None:
        from .ray_predict import ray_batches

        batches = ray_batches(cfg, todo) if todo else iter(())
    else:
        batches = _local_batches(cfg, todo)
    counts = {"done": 0, "skipped": skipped, "failed": 0}
    dst.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = _progress(len(todo))
    for results in batches:
        for r in results:
            stem = Path(r.name).stem
            if r.error:
                print(f"skipped {r.name}: {r.error}", file=sys.stderr, flush=True)
                counts["failed"] += 1
                continue
            if r.overlay_png:
                (dst / f"{stem}.overlay.png").write_bytes(r.overlay_png)
            if r.row is not None:
                rows.append({"image": r.name, **r.row})
            (dst / f"{stem}.png").write_bytes(r.mask_png)  # last: its presence marks the image done
            counts["done"] += 1
        bar.update(len(results))
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
