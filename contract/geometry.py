"""The geometry a model was trained at and is served at, shared by training's evaluation and the service:
an image keeps its aspect at the training scale, and an any-size graph takes heights and widths in
multiples of 32 (ONNX Runtime fails at others: the U-Net's skip connections would not line up)."""

from __future__ import annotations

import numpy as np


def ceil32(n: int) -> int:
    return max(32, -(-n // 32) * 32)


def scaled_hw(training_hw: tuple[int, int], size_wh: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of an image of `size_wh` at the training scale of an any-size model: the aspect kept, the
    short side made the training size's short side (up or down)."""
    W, H = size_wh
    s = min(training_hw) / min(W, H)
    return max(1, round(H * s)), max(1, round(W * s))


def pad_reflect(image: np.ndarray, ph: int, pw: int) -> np.ndarray:
    """(h, w, 3) -> (ph, pw, 3): bottom and right filled by reflection (edge replication when too small)."""
    h, w = image.shape[:2]
    if (h, w) == (ph, pw):
        return np.ascontiguousarray(image)
    mode = "reflect" if (ph - h < h and pw - w < w) else "edge"
    return np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode=mode)
