"""The held-out images as a field camera gives them: seven named photometric and optical shifts, labels unchanged.

Each shift is a pure function of an (H, W, 3) uint8 image at its own resolution (noise seeded by the image's own
pixels, so a shift is the same image every time). Strengths are those of an ordinary camera on a bad day, not of a
broken one:

| shift | what | strength |
|---|---|---|
| `dark` | under-exposed | -1.5 EV in linear light (a third of the light), sRGB gamma 2.2 |
| `haze` | low contrast (haze, fog, a dirty lens) | 45 % of the scene blended with a light grey airlight (200) |
| `blur` | slightly out of focus | Gaussian, sigma 1.5 px at 480 px wide (scaled with the width) |
| `jpeg` | compressed hard | JPEG quality 15 |
| `noise` | sensor noise | Gaussian, sigma 12 of 255 per channel |
| `lowres` | a lower-resolution camera | a quarter of the width and height (box filter), then back up bilinearly |
| `warm` | a warm colour cast (tungsten white balance) | red x1.2, blue x0.7 in linear light |

`python -m training fit` scores its held-out images under each (report.json `shifted`, shifts.png);
`benchmarks.camvid` and `benchmarks.demo_seeds` tabulate them through the served ONNX path.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

GAMMA = 2.2


def _linear(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) / 255.0) ** GAMMA


def _srgb(linear: np.ndarray) -> np.ndarray:
    return (np.clip(linear, 0, 1) ** (1 / GAMMA) * 255.0 + 0.5).astype(np.uint8)


def dark(image: np.ndarray) -> np.ndarray:
    return _srgb(_linear(image) * 2.0**-1.5)


def haze(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) * 0.45 + 200.0 * 0.55 + 0.5).astype(np.uint8)


def blur(image: np.ndarray) -> np.ndarray:
    sigma = 1.5 * image.shape[1] / 480
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))


def jpeg(image: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=15)
    return np.asarray(Image.open(buf).convert("RGB"))


def noise(image: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(int(image[::7, ::7].sum()) % 2**32)
    return np.clip(image + rng.normal(0, 12.0, image.shape), 0, 255).round().astype(np.uint8)


def lowres(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((max(1, w // 4), max(1, h // 4)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BILINEAR))


def warm(image: np.ndarray) -> np.ndarray:
    return _srgb(_linear(image) * np.array([1.2, 1.0, 0.7], np.float32))


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "dark": dark,
    "haze": haze,
    "blur": blur,
    "jpeg": jpeg,
    "noise": noise,
    "lowres": lowres,
    "warm": warm,
}
LABELS = {
    "dark": "darker (under-exposed)",
    "haze": "lower contrast (haze)",
    "blur": "slightly out of focus",
    "jpeg": "JPEG-compressed hard",
    "noise": "with sensor noise",
    "lowres": "at low resolution, upscaled",
    "warm": "with a warm colour cast",
}
