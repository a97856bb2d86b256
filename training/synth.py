"""Synthetic segmentation scenes built from the real photos that ship in `skimage.data`.

Two kinds, both textured with crops of real photos (grass, gravel, brick, coffee, chelsea, astronaut...),
so a model has to learn texture and shape, not a flat colour:

- `layout="generic"` (the demo's): square scenes with "butterfly" (four wing ellipses and a body) and
  "leaf" (a random polygon) objects, several per image, some cut by the border.
- `layout="camvid"` (the seed's second data set, in miniature): non-square street scenes (360x480 by
  default) with Sky, Building, Road, Tree, Car, thin Poles (2-4 px wide, under 1 % of the pixels) and
  a Void class for unlabelled clutter, written in the CamVid layout (images/, labels/<stem>_P.png,
  codes.txt with Void last). Classes are as unbalanced as in CamVid.

Everything is drawn from one `numpy.random.Generator` seeded per image, so a seed gives the same data
set on every machine.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .synth_thin import THIN_CLASSES, make_thin_scene

CLASSES = ("background", "butterfly", "leaf")

# Which photos feed which class: distinct sources per class keep the task about texture and shape.
_BACKGROUNDS = ("grass", "gravel", "brick", "coffee", "astronaut", "rocket", "camera", "moon")
_BUTTERFLY_FILLS = ("chelsea", "cat", "immunohistochemistry", "colorwheel", "coffee")
_LEAF_FILLS = ("grass", "brick", "retina", "coins", "page")


STREET_CLASSES = ("Sky", "Building", "Road", "Tree", "Car", "Pole", "Void")


@dataclass(frozen=True)
class SynthConfig:
    out: Path
    n: int = 200
    size: int | tuple[int, int] = 128  # generic: one side; camvid: (H, W) or one side for both
    seed: int = 0
    min_objects: int = 2
    max_objects: int = 5
    # "generic" (butterflies and leaves), "camvid" (street scenes), "leeds" (hard butterflies), "thin" (greyscale,
    # thin structures: training.synth_thin)
    layout: str = "generic"


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


def make_scene(
    rng: np.random.Generator, size: int, min_objects: int = 2, max_objects: int = 5
) -> tuple[np.ndarray, np.ndarray]:
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
            fill = _crop(
                rng,
                str(rng.choice(_BUTTERFLY_FILLS)),
                size,
                np.array([1.3, 0.9, 0.5], np.float32) * rng.uniform(0.8, 1.2),
            )
        else:
            fill = _crop(
                rng, str(rng.choice(_LEAF_FILLS)), size, np.array([0.5, 1.25, 0.45], np.float32) * rng.uniform(0.8, 1.2)
            )
        image.paste(fill, (0, 0), alpha)
        mask.paste(cls, (0, 0), alpha)
    return np.asarray(image), np.asarray(mask)


def make_hard_butterfly(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A harder scene, Leeds-style (one class, butterfly): 1-2 butterflies whose fill is a crop of any
    photo, half the time from the same photo as the background with a close tint, so colour and texture
    alone do not separate them; shape and edges must. Mask 0/1."""
    photos = _BACKGROUNDS + _BUTTERFLY_FILLS
    bg_name = str(rng.choice(photos))
    bg_tint = rng.uniform(0.7, 1.2, size=3).astype(np.float32)
    image = _crop(rng, bg_name, size, bg_tint)
    mask = Image.new("L", (size, size), 0)
    for _ in range(int(rng.integers(1, 3))):
        shape = _butterfly(rng, size)
        scale = size / shape.width * float(rng.uniform(1.2, 2.0))
        shape = shape.resize((int(shape.width * scale), int(shape.height * scale)), Image.NEAREST)
        cx, cy = rng.uniform(size * 0.2, size * 0.8, size=2)
        alpha = Image.new("L", (size, size), 0)
        alpha.paste(shape, (int(cx - shape.width / 2), int(cy - shape.height / 2)))
        same = rng.random() < 0.5
        fill = _crop(
            rng,
            bg_name if same else str(rng.choice(photos)),
            size,
            bg_tint * rng.uniform(0.85, 1.15, size=3).astype(np.float32),
        )
        image.paste(fill, (0, 0), alpha)
        mask.paste(1, (0, 0), alpha)
    return np.asarray(image), np.asarray(mask)


def _fill(rng: np.random.Generator, names, h: int, w: int, tint) -> Image.Image:
    """A (w x h) texture: a random crop of one of `names`, tinted (per-channel gain)."""
    return _texture(rng, str(rng.choice(names)), h, w, tint)


def _texture(rng: np.random.Generator, name: str, h: int, w: int, tint) -> Image.Image:
    return _crop(rng, name, max(h, w), np.asarray(tint, np.float32)).crop((0, 0, w, h))


@dataclass(frozen=True)
class Part:
    """One shape drawn into a street scene, as `make_street_scene(..., parts=[])` records them (for
    diagnostics: which photo and tint a class's pixels came from). `alpha`: where it was drawn, before
    later shapes covered any of it."""

    cls: int
    photo: str
    tint: tuple[float, ...]
    alpha: np.ndarray


def make_street_scene(
    rng: np.random.Generator, h: int = 360, w: int = 480, parts: list | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: image (h, w, 3) uint8 and mask (h, w) uint8 with ids into STREET_CLASSES.

    Sky above a horizon; a row of buildings on it; a road below narrowing to a vanishing point; trees
    along the buildings; cars on the road, smaller further away; 1-3 poles 2-4 px wide (scaled with w)
    from the road up into the sky; and a few patches of clutter labelled Void. Drawn back to front, in
    this order (the random draws too: a seed gives the same scene). `parts`: a list that receives a `Part`
    for every textured shape, in drawing order."""
    image = Image.new("RGB", (w, h))
    mask = Image.new("L", (w, h), 0)
    k = w / 480  # sizes below are for 480 px wide scenes
    horizon = int(h * rng.uniform(0.42, 0.55))
    _street_sky_and_buildings(rng, image, mask, horizon, k, parts)
    vx = _street_ground(rng, image, mask, horizon, k, parts)
    _street_trees_and_cars(rng, image, mask, horizon, vx, k, parts)
    _street_poles_and_void(rng, image, mask, horizon, k, parts)
    return np.asarray(image), np.asarray(mask)


def _paste(
    rng, image: Image.Image, mask: Image.Image, alpha: Image.Image, names, tint, cls: int, parts: list | None
) -> None:
    """A textured shape: `alpha` (L) cut from a fill of `names` pasted on the image, `cls` on the mask."""
    h, w = image.height, image.width
    name = str(rng.choice(names))
    image.paste(_texture(rng, name, h, w, tint), (0, 0), alpha)
    mask.paste(cls, (0, 0), alpha)
    if parts is not None:
        parts.append(Part(cls, name, tuple(float(t) for t in np.asarray(tint).ravel()), np.asarray(alpha) > 0))


def _street_sky_and_buildings(rng, image, mask, horizon: int, k: float, parts: list | None) -> None:
    """Sky: a vertical gradient with faint texture; buildings: rectangles standing on the horizon."""
    h, w = image.height, image.width
    top, bottom = rng.uniform([90, 140, 190], [150, 190, 240]), rng.uniform([170, 190, 210], [230, 235, 250])
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    sky = (top * (1 - ramp) + bottom * ramp) * np.ones((1, w, 1), np.float32)
    sky += (
        np.asarray(_fill(rng, ("moon", "gravel"), h, w, (1, 1, 1)).convert("L"), np.float32)[..., None] - 128
    ) * 0.08
    image.paste(Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8)))
    x = int(rng.integers(-40, 0))
    while x < w:
        bw, bh = int(rng.uniform(50, 150) * k), int(h * rng.uniform(0.15, 0.4))
        alpha = Image.new("L", (w, h), 0)
        ImageDraw.Draw(alpha).rectangle((x, horizon - bh, x + bw, horizon + 2), fill=255)
        _paste(
            rng,
            image,
            mask,
            alpha,
            ("brick", "camera", "text", "page"),
            rng.uniform(0.6, 1.2, 3),
            STREET_CLASSES.index("Building"),
            parts,
        )
        x += bw + int(rng.integers(0, 25 * k))


def _street_ground(rng, image, mask, horizon: int, k: float, parts: list | None) -> float:
    """Everything below the horizon, then the road's trapezoid narrowing to a vanishing point; returns its x."""
    h, w = image.height, image.width
    vx = w * rng.uniform(0.35, 0.65)
    road = [
        (vx - 6 * k, horizon),
        (vx + 6 * k, horizon),
        (w * rng.uniform(1.0, 1.3), h),
        (w * rng.uniform(-0.3, 0.0), h),
    ]
    ground = [(0, horizon), (w, horizon), (w, h), (0, h)]
    for poly, names, tint, cls in (
        (ground, ("grass",), (0.6, 0.9, 0.5), "Tree"),
        (road, ("gravel", "coffee"), (0.45, 0.45, 0.45), "Road"),
    ):
        alpha = Image.new("L", (w, h), 0)
        ImageDraw.Draw(alpha).polygon(poly, fill=255)
        _paste(
            rng, image, mask, alpha, names, np.asarray(tint) * rng.uniform(0.8, 1.2), STREET_CLASSES.index(cls), parts
        )
    return vx


def _street_trees_and_cars(rng, image, mask, horizon: int, vx: float, k: float, parts: list | None) -> None:
    """Trees: clusters of ellipses around the horizon; cars on the road, smaller towards it, drawn far to near."""
    h, w = image.height, image.width
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = w * rng.uniform(0, 1), horizon - h * rng.uniform(0.0, 0.15), rng.uniform(20, 55) * k
        alpha = Image.new("L", (w, h), 0)
        for _ in range(6):
            ox, oy, rr = rng.normal(0, r * 0.5), rng.normal(0, r * 0.4), r * rng.uniform(0.5, 1.0)
            ImageDraw.Draw(alpha).ellipse((cx + ox - rr, cy + oy - rr, cx + ox + rr, cy + oy + rr), fill=255)
        _paste(rng, image, mask, alpha, ("grass", "retina"), (0.5, 1.1, 0.45), STREET_CLASSES.index("Tree"), parts)
    for y in sorted(rng.uniform(horizon + 0.1 * (h - horizon), h, size=int(rng.integers(1, 4)))):
        depth = (y - horizon) / (h - horizon)
        cw, ch = w * 0.28 * depth, h * 0.12 * depth
        cx = vx + (rng.uniform(-0.7, 0.7)) * (w * 0.55 * depth)
        alpha = Image.new("L", (w, h), 0)
        d = ImageDraw.Draw(alpha)
        d.rounded_rectangle((cx - cw / 2, y - ch, cx + cw / 2, y), radius=max(1, ch * 0.25), fill=255)
        d.rounded_rectangle(
            (cx - cw * 0.3, y - ch * 1.5, cx + cw * 0.3, y - ch * 0.8), radius=max(1, ch * 0.2), fill=255
        )
        tint = rng.choice([(1.3, 0.5, 0.5), (0.5, 0.6, 1.3), (1.1, 1.1, 1.1), (0.4, 0.4, 0.4)])
        _paste(rng, image, mask, alpha, ("coffee", "rocket", "chelsea"), tint, STREET_CLASSES.index("Car"), parts)


def _street_poles_and_void(rng, image, mask, horizon: int, k: float, parts: list | None) -> None:
    """Poles: thin vertical bars (2-4 px at 480 px) from the road up into the sky; Void: unlabelled clutter."""
    h, w = image.height, image.width
    for _ in range(int(rng.integers(1, 4))):
        px, pw = w * rng.uniform(0.05, 0.95), max(1, int(round(rng.uniform(2, 4) * k)))
        foot = horizon + (h - horizon) * rng.uniform(0.05, 0.6)
        head = max(0, horizon - h * rng.uniform(0.25, 0.45))
        alpha = Image.new("L", (w, h), 0)
        ImageDraw.Draw(alpha).rectangle((int(px), int(head), int(px) + pw - 1, int(foot)), fill=255)
        _paste(rng, image, mask, alpha, ("camera", "moon"), (0.55, 0.55, 0.6), STREET_CLASSES.index("Pole"), parts)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy, r = w * rng.uniform(0, 1), horizon + (h - horizon) * rng.uniform(0, 0.5), rng.uniform(4, 14) * k
        pts = [
            (cx + r * rng.uniform(0.5, 1.2) * math.cos(a), cy + r * rng.uniform(0.5, 1.2) * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 7)[:-1]
        ]
        alpha = Image.new("L", (w, h), 0)
        ImageDraw.Draw(alpha).polygon(pts, fill=255)
        _paste(
            rng,
            image,
            mask,
            alpha,
            ("astronaut", "coins", "colorwheel"),
            rng.uniform(0.6, 1.3, 3),
            STREET_CLASSES.index("Void"),
            parts,
        )


def _hw(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def synth(config: SynthConfig) -> Path:
    """Write `config.n` scenes under `config.out`: the generic layout (images/, masks/, codes.txt); with
    layout="camvid" the CamVid layout (images/, labels/<stem>_P.png, codes.txt); with layout="leeds" the
    Leeds Butterfly layout (images/<id>.png, segmentations/<id>_seg0.png holding 0/255) of hard scenes."""
    out = Path(config.out)
    labels, mask_name = {"camvid": ("labels", "{}_P.png"), "leeds": ("segmentations", "{}_seg0.png")}.get(
        config.layout, ("masks", "{}.png")
    )
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / labels).mkdir(parents=True, exist_ok=True)
    h, w = _hw(config.size)
    for i in range(config.n):
        rng = np.random.default_rng([config.seed, i])
        if config.layout == "camvid":
            image, mask = make_street_scene(rng, h, w)
        elif config.layout == "leeds":
            image, mask = make_hard_butterfly(rng, h)
            mask = mask * 255
        elif config.layout == "thin":
            image, mask = make_thin_scene(rng, h)
        else:
            image, mask = make_scene(rng, h, config.min_objects, config.max_objects)
        stem = f"scene_{i:05d}"
        Image.fromarray(image).save(out / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8)).save(out / labels / mask_name.format(stem))
    if config.layout != "leeds":  # Leeds data carry no codes.txt: background and butterfly
        codes = {"camvid": STREET_CLASSES, "thin": THIN_CLASSES}.get(config.layout, CLASSES)
        (out / "codes.txt").write_text("\n".join(codes) + "\n")
    return out
