"""Tiled inference for images larger than the model: overlapping tiles at the model size go through the
same batched runtime, and their votes (or probabilities) are blended back into one full-resolution mask.

Each tile's contribution is weighted by a window that is 1 in the middle and ramps down towards the
tile's edges inside the overlap, so pixels near a tile border are decided by the neighbouring tile
that sees them in its middle: no visible seams.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TileLayout:
    image_hw: tuple[int, int]  # original (H, W)
    padded_hw: tuple[int, int]  # after padding images smaller than a tile
    tile_hw: tuple[int, int]
    overlap: int
    origins: tuple[tuple[int, int], ...]  # (y, x) of each tile in the padded image


def _starts(length: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(length - tile, 0) + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def make_tiles(image: np.ndarray, tile_hw: tuple[int, int], overlap: int) -> tuple[np.ndarray, TileLayout]:
    """(H, W, 3) uint8 -> tiles (N, th, tw, 3) uint8 covering the whole image, and their layout.

    Neighbouring tiles overlap by `overlap` pixels (at least; the last row/column is aligned to the edge).
    Images smaller than a tile are padded by reflection (edge replication when too small to reflect)."""
    th, tw = tile_hw
    if not 0 <= overlap < min(th, tw):
        raise ValueError(f"overlap {overlap} must be in [0, {min(th, tw)})")
    h, w = image.shape[:2]
    ph, pw = max(h, th), max(w, tw)
    if (ph, pw) != (h, w):
        mode = "reflect" if (ph - h < h and pw - w < w) else "edge"
        image = np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode=mode)
    origins = tuple((y, x) for y in _starts(ph, th, th - overlap) for x in _starts(pw, tw, tw - overlap))
    tiles = np.stack([image[y : y + th, x : x + tw] for y, x in origins])
    return np.ascontiguousarray(tiles), TileLayout((h, w), (ph, pw), (th, tw), overlap, origins)


def _window(tile_hw: tuple[int, int], overlap: int) -> np.ndarray:
    """(th, tw) float32 weights: 1 inside, a raised-cosine ramp over `overlap` pixels at each edge, never 0."""
    def ramp(n):
        r = np.ones(n, np.float32)
        if overlap:
            t = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
            edge = 0.5 - 0.5 * np.cos(np.pi * t)
            r[:overlap] = np.minimum(r[:overlap], edge)
            r[-overlap:] = np.minimum(r[-overlap:], edge[::-1])
        return np.maximum(r, 1e-3)

    return np.outer(ramp(tile_hw[0]), ramp(tile_hw[1]))


def blend_probs(probs: np.ndarray, layout: TileLayout) -> np.ndarray:
    """(N, C, th, tw) float per tile -> (H, W) uint8 class ids, window-weighted average over overlaps."""
    n_classes = probs.shape[1]
    acc = np.zeros((n_classes, *layout.padded_hw), np.float32)
    win = _window(layout.tile_hw, layout.overlap)
    th, tw = layout.tile_hw
    for p, (y, x) in zip(probs, layout.origins):
        acc[:, y : y + th, x : x + tw] += p * win
    h, w = layout.image_hw
    return acc[:, :h, :w].argmax(axis=0).astype(np.uint8)


def blend_masks(masks: np.ndarray, layout: TileLayout, n_classes: int) -> np.ndarray:
    """(N, th, tw) uint8 class ids per tile -> (H, W) uint8: window-weighted votes over overlaps."""
    onehot = (masks[:, None, :, :] == np.arange(n_classes, dtype=masks.dtype)[None, :, None, None]).astype(np.float32)
    return blend_probs(onehot, layout)


def segment_tiled(image: np.ndarray, run_batch, tile_hw: tuple[int, int], overlap: int, n_classes: int, batch_size: int = 8) -> np.ndarray:
    """Offline convenience: tile, run `run_batch` ((n, th, tw, 3) uint8 -> (n, th, tw) uint8 masks or
    (n, C, th, tw) probabilities) in batches of `batch_size`, blend. Returns (H, W) uint8."""
    tiles, layout = make_tiles(image, tile_hw, overlap)
    outs = [run_batch(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    out = np.concatenate(outs)
    if out.ndim == 4:
        return blend_probs(out, layout)
    return blend_masks(out, layout, n_classes)


def default_overlap(tile_hw: tuple[int, int]) -> int:
    """A quarter of the tile: enough context at the borders for a U-Net at these sizes."""
    return min(tile_hw) // 4
