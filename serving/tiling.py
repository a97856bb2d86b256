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


def plan_tiles(image_hw: tuple[int, int], tile_hw: tuple[int, int], overlap: int) -> TileLayout:
    """Where the tiles go, without touching pixels: row by row, neighbours overlapping by at least
    `overlap` pixels, the last row/column aligned to the edge; images smaller than a tile are padded."""
    th, tw = tile_hw
    if not 0 <= overlap < min(th, tw):
        raise ValueError(f"overlap {overlap} must be in [0, {min(th, tw)})")
    h, w = image_hw
    ph, pw = max(h, th), max(w, tw)
    origins = tuple((y, x) for y in _starts(ph, th, th - overlap) for x in _starts(pw, tw, tw - overlap))
    return TileLayout((h, w), (ph, pw), (th, tw), overlap, origins)


def pad_for_tiles(image: np.ndarray, layout: TileLayout) -> np.ndarray:
    """(H, W, 3) -> the padded image the layout's origins refer to (reflection; edge replication when too small)."""
    (h, w), (ph, pw) = layout.image_hw, layout.padded_hw
    if (ph, pw) == (h, w):
        return image
    mode = "reflect" if (ph - h < h and pw - w < w) else "edge"
    return np.pad(image, ((0, ph - h), (0, pw - w), (0, 0)), mode=mode)


def tiles_of(padded: np.ndarray, layout: TileLayout, start: int, stop: int) -> np.ndarray:
    """Tiles start..stop-1 of `layout` cut from the padded image: (n, th, tw, 3) uint8, contiguous."""
    th, tw = layout.tile_hw
    return np.stack([padded[y : y + th, x : x + tw] for y, x in layout.origins[start:stop]])


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


class Blender:
    """Window-weighted votes (class ids) or scores of tiles, added batch by batch in layout order.

    By default tiles come row by row, so when a new row of tiles starts, the image rows above it are
    final: they are decided (argmax) and their accumulator freed. Memory: the (H, W) uint8 mask plus one
    band of classes x tile height x W float32, whatever the number of tiles. With `keep_scores` the
    whole (C, H, W) accumulator is kept, for `scores()`: the blended scores, to be upsampled."""

    def __init__(self, layout: TileLayout, n_classes: int, keep_scores: bool = False):
        self.layout, self.n_classes, self.keep_scores = layout, n_classes, keep_scores
        self.window = _window(layout.tile_hw, layout.overlap)
        ph, pw = layout.padded_hw
        self.mask = np.zeros((ph, pw), np.uint8)
        self._band = np.zeros((n_classes, ph if keep_scores else layout.tile_hw[0], pw), np.float32)
        self._weight = np.zeros((ph, pw), np.float32) if keep_scores else None
        self._wband = None if keep_scores else np.zeros((layout.tile_hw[0], pw), np.float32)
        self.top1 = None  # band mode with scores: (H, W) float16, each pixel's blended top-1 probability
        self._top = 0  # image row of the band's first row
        self._next = 0  # index of the next tile expected

    def _finish_rows(self, until: int) -> None:
        """Decide rows [top, until) and move the band down so it starts at `until`."""
        if self.keep_scores:
            return
        k = min(until, self.mask.shape[0]) - self._top
        if k <= 0:
            return
        self.mask[self._top : self._top + k] = self._band[:, :k].argmax(axis=0)
        if self.top1 is not None:
            self.top1[self._top : self._top + k] = self._band[:, :k].max(axis=0) / self._wband[:k]
        for band in (self._band, self._wband[None]):
            band[:, :-k] = band[:, k:].copy() if k < band.shape[1] else 0
            band[:, max(band.shape[1] - k, 0) :] = 0
        self._top += k

    def add(self, outputs: np.ndarray) -> None:
        """The next tiles' outputs, in layout order: (n, th, tw) uint8 class ids or (n, C, th, tw) scores."""
        th, tw = self.layout.tile_hw
        for out in outputs:
            y, x = self.layout.origins[self._next]
            self._finish_rows(y)
            row = y - self._top
            region = self._band[:, row : row + th, x : x + tw]
            if out.ndim == 2:
                for c in range(self.n_classes):
                    region[c] += self.window * (out == c)
            else:
                region += out * self.window
                if self._wband is not None:
                    if self.top1 is None:
                        self.top1 = np.zeros(self.mask.shape, np.float16)
                    self._wband[row : row + th, x : x + tw] += self.window
            if self._weight is not None:
                self._weight[y : y + th, x : x + tw] += self.window
            self._next += 1

    def _check_done(self) -> None:
        if self._next != len(self.layout.origins):
            raise ValueError(f"{self._next} of {len(self.layout.origins)} tiles added")

    def result(self) -> np.ndarray:
        """(H, W) uint8 class ids, once every tile was added (and in band mode with scores, `top1` filled)."""
        self._check_done()
        h, w = self.layout.image_hw
        if self.keep_scores:
            return self._band[:, :h, :w].argmax(axis=0).astype(np.uint8)
        self._finish_rows(self._top + self._band.shape[1])
        if self.top1 is not None:
            self.top1 = self.top1[:h, :w]
        return self.mask[:h, :w]

    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(keep_scores) ((C, H, W) float32 window-weighted mean scores, (H, W) uint8 their argmax)."""
        self._check_done()
        h, w = self.layout.image_hw
        probs = self._band[:, :h, :w] / self._weight[:h, :w]
        return probs, probs.argmax(axis=0).astype(np.uint8)


def default_overlap(tile_hw: tuple[int, int]) -> int:
    """A quarter of the tile: enough context at the borders for a U-Net at these sizes."""
    return min(tile_hw) // 4
