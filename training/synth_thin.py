"""Synthetic greyscale scenes with a thin class: `python -m training synth --layout thin` (512x512 by default).

A real greyscale photo of skimage.data as the textured background (camera, moon, page, coins, grass, gravel...),
contrast and brightness varied, crossed by a few thin curved structures (vessels, cracks, wires): 1.5-4 px wide,
a little darker or brighter than their surroundings, some branching, under 5 % of the pixels; sensor noise on
top. Two classes, background and `thin`, in the generic layout (images/, masks/, codes.txt). What a fit that
squishes 512 px to 128 px cannot see: at a quarter of the resolution the structures are under a pixel wide.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

THIN_CLASSES = ("background", "thin")
_TEXTURES = ("camera", "moon", "page", "coins", "grass", "gravel", "brick", "text")


def _texture(rng: np.random.Generator, side: int) -> np.ndarray:
    """A crop of a real greyscale photo, resized to side x side, contrast and brightness drawn at random: float."""
    import skimage.data
    from skimage.color import rgb2gray

    photo = np.asarray(getattr(skimage.data, _TEXTURES[rng.integers(len(_TEXTURES))])(), np.float64)
    photo = rgb2gray(photo[..., :3]) * 255 if photo.ndim == 3 else photo
    h, w = photo.shape
    c = int(min(h, w) * rng.uniform(0.5, 1.0))
    y, x = rng.integers(0, h - c + 1), rng.integers(0, w - c + 1)
    crop = np.asarray(Image.fromarray(photo[y : y + c, x : x + c].astype(np.uint8)).resize((side, side)), float)
    return (crop - crop.mean()) * rng.uniform(0.3, 0.8) + rng.uniform(70, 170)


def _curve(rng: np.random.Generator, side: int, start=None) -> list[tuple[float, float]]:
    """A smooth random path across the image (from `start`, else anywhere): a random walk whose heading turns
    slowly."""
    x, y = start if start is not None else rng.uniform(0, side, 2)
    heading, points = rng.uniform(0, 2 * np.pi), []
    for _ in range(int(rng.uniform(0.6, 1.6) * side / 4)):
        points.append((x, y))
        heading += rng.normal(0, 0.12)
        x, y = x + 4 * np.cos(heading), y + 4 * np.sin(heading)
    return points


def make_thin_scene(rng: np.random.Generator, side: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(side, side) uint8 greyscale image and (side, side) uint8 mask (1 = thin structure)."""
    image = _texture(rng, side)
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(rng.integers(3, 7)):
        path = _curve(rng, side)
        draw.line(path, fill=255, width=int(rng.integers(2, 5)))
        if len(path) > 20 and rng.random() < 0.6:  # a branch from somewhere along it
            draw.line(_curve(rng, side, start=path[rng.integers(len(path))]), fill=255, width=2)
    soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.7)), float) / 255  # edges as a lens draws them
    contrast = rng.uniform(25, 60) * rng.choice([-1, 1])
    image = image + soft * contrast + rng.normal(0, rng.uniform(3, 10), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), (np.asarray(mask) > 127).astype(np.uint8)
