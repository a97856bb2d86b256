"""Synthetic segmentation scenes built from the real photos that ship in `skimage.data`.

Backgrounds and object fills are crops of real photos (grass, gravel, brick, coffee, chelsea, astronaut...),
so the model has to learn texture and shape, not a flat colour. Two object classes with distinct shapes:
"butterfly" (four wing ellipses and a body) and "leaf" (a random polygon). Several objects per image,
some cut by the border. Everything is drawn from one `numpy.random.Generator` seeded per image, so a
seed gives the same data set on every machine.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("background", "butterfly", "leaf")

# Which photos feed which class: distinct sources per class keep the task about texture and shape.
_BACKGROUNDS = ("grass", "gravel", "brick", "coffee", "astronaut", "rocket", "camera", "moon")
_BUTTERFLY_FILLS = ("chelsea", "cat", "immunohistochemistry", "colorwheel", "coffee")
_LEAF_FILLS = ("grass", "brick", "retina", "coins", "page")


@dataclass(frozen=True)
class SynthConfig:
    out: Path
    n: int = 200
    size: int = 128
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 5


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A photo from skimage.data as (H, W, 3) uint8 (grey photos are stacked to RGB)."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _crop(rng: np.random.Generator, name: str, size: int, tint: np.ndarray | None = None) -> Image.Image:
    """A random crop of `name`, rescaled to (size, size), optionally tinted (per-channel gain)."""
    photo = _photo(name)
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    if tint is not None:
        arr = np.asarray(crop, dtype=np.float32) * tint
        crop = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return crop


def _butterfly(rng: np.random.Generator, size: int) -> Image.Image:
    """A binary 'L' shape: two large upper wings, two small lower wings and a thin body, rotated."""
    s = size * 4  # drawn large, then rotated and scaled down by the caller
    canvas = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(canvas)
    c, span = s / 2, rng.uniform(0.12, 0.3) * s
    for sx in (-1, 1):
        upper = sorted((c + sx * span * 0.05, c + sx * span))
        lower = sorted((c + sx * span * 0.05, c + sx * span * 0.7))
        d.ellipse([upper[0], c - span * 0.9, upper[1], c + span * 0.05], fill=255)
        d.ellipse([lower[0], c, lower[1], c + span * 0.75], fill=255)
    d.rectangle([c - span * 0.08, c - span * 0.8, c + span * 0.08, c + span * 0.8], fill=255)
    return canvas.rotate(float(rng.uniform(0, 360)), resample=Image.NEAREST)


def _leaf(rng: np.random.Generator, size: int) -> Image.Image:
    """A binary 'L' shape: a random star-like polygon."""
    s = size * 4
    canvas = Image.new("L", (s, s), 0)
    c, r = s / 2, rng.uniform(0.1, 0.25) * s
    k = int(rng.integers(5, 9))
    pts = []
    for i in range(k):
        a = 2 * math.pi * i / k + rng.uniform(-0.2, 0.2)
        rr = r * rng.uniform(0.45, 1.0)
        pts.append((c + rr * math.cos(a), c + rr * math.sin(a)))
    ImageDraw.Draw(canvas).polygon(pts, fill=255)
    return canvas


def make_scene(rng: np.random.Generator, size: int, min_objects: int = 2, max_objects: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (size, size, 3) uint8 and mask (size, size) uint8 with ids into CLASSES."""
    bg_tint = rng.uniform(0.7, 1.2, size=3).astype(np.float32)
    image = _crop(rng, str(rng.choice(_BACKGROUNDS)), size, bg_tint)
    mask = Image.new("L", (size, size), 0)
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        cls = int(rng.integers(1, len(CLASSES)))
        shape = (_butterfly if cls == 1 else _leaf)(rng, size)
        # place the big canvas so its centre may fall anywhere, including near the border
        scale = size / shape.width * float(rng.uniform(0.9, 1.5))
        shape = shape.resize((int(shape.width * scale), int(shape.height * scale)), Image.NEAREST)
        cx, cy = rng.uniform(0, size, size=2)
        ox, oy = int(cx - shape.width / 2), int(cy - shape.height / 2)
        alpha = Image.new("L", (size, size), 0)
        alpha.paste(shape, (ox, oy))
        if cls == 1:
            fill = _crop(rng, str(rng.choice(_BUTTERFLY_FILLS)), size, np.array([1.3, 0.9, 0.5], np.float32) * rng.uniform(0.8, 1.2))
        else:
            fill = _crop(rng, str(rng.choice(_LEAF_FILLS)), size, np.array([0.5, 1.25, 0.45], np.float32) * rng.uniform(0.8, 1.2))
        image.paste(fill, (0, 0), alpha)
        mask.paste(cls, (0, 0), alpha)
    return np.asarray(image), np.asarray(mask)


def synth(config: SynthConfig) -> Path:
    """Write `config.n` scenes in the generic layout (images/, masks/, codes.txt) under `config.out`."""
    out = Path(config.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(config.n):
        rng = np.random.default_rng([config.seed, i])
        image, mask = make_scene(rng, config.size, config.min_objects, config.max_objects)
        Image.fromarray(image).save(out / "images" / f"scene_{i:05d}.png")
        Image.fromarray(mask).save(out / "masks" / f"scene_{i:05d}.png")
    (out / "codes.txt").write_text("\n".join(CLASSES) + "\n")
    return out
