"""Tiled inference: shapes, coverage, seams, and better masks than squishing on a large scene."""

from __future__ import annotations

import io

import numpy as np
import pytest
from contract_model import expected_mask, png_bytes
from PIL import Image

from serving import tiling
from serving.runtime import SegmentationRuntime


# Whole-image helpers over the public pieces (plan_tiles, pad_for_tiles, tiles_of, Blender): the service
# itself feeds tiles batch by batch (serving.pipeline.Job).
def make_tiles(image, tile_hw, overlap):
    layout = tiling.plan_tiles(image.shape[:2], tile_hw, overlap)
    return tiling.tiles_of(tiling.pad_for_tiles(image, layout), layout, 0, len(layout.origins)), layout


def blend(outputs, layout, n_classes):
    b = tiling.Blender(layout, n_classes)
    b.add(outputs)
    return b.result()


def dice(a, b, n):
    ds = []
    for c in range(1, n):
        inter, tot = np.logical_and(a == c, b == c).sum(), (a == c).sum() + (b == c).sum()
        if tot:
            ds.append(2 * inter / tot)
    return float(np.mean(ds))


def scene(h=384, w=512, seed=0) -> np.ndarray:
    """Fine red/green stripes and dots on a dark background: detail a 32 px squish cannot keep."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 30, np.uint8)
    for x in range(0, w, 6):
        img[:, x : x + 2, 0] = 220  # red vertical stripes, 2 px
    for y in range(0, h, 10):
        img[y : y + 3, :, 1] = 230  # green horizontal stripes, 3 px
    img[rng.integers(0, h, 400), rng.integers(0, w, 400)] = (0, 250, 0)
    return img


@pytest.mark.parametrize("shape", [(384, 512), (20, 25), (32, 32), (100, 37)])
def test_tiles_cover_and_blend_back_exactly(shape):
    img = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    tiles, layout = make_tiles(img, (32, 32), 8)
    assert tiles.shape[1:] == (32, 32, 3) and tiles.dtype == np.uint8
    masks = expected_mask(tiles)
    out = blend(masks, layout, 3)
    assert out.shape == shape and out.dtype == np.uint8
    assert np.array_equal(out, expected_mask(img[None])[0])  # a per-pixel model: tiling is exact everywhere


def test_tiled_beats_squish_on_a_large_scene(rule_model_dir):
    """A fixed-size model: full-resolution tiles keep 2-3 px structures that squishing loses."""
    from serving import Segmenter

    seg = Segmenter.load(rule_model_dir, "cpu")
    img = scene()
    truth = expected_mask(img[None])[0]
    tiled, squished = seg.predict(img, tile=True), seg.predict(img)
    d_tiled, d_squish = dice(tiled, truth, 3), dice(squished, truth, 3)
    assert d_tiled > 0.99 and d_tiled > d_squish + 0.2, (d_tiled, d_squish)


def test_no_seams_with_a_real_unet(tiny_export):
    """With the trained U-Net, masks from probabilities and from votes agree along every tile border,
    and the tiled mask there agrees with a tile centred on the border at least as well as anywhere else."""
    rt = SegmentationRuntime.load(tiny_export, "cpu")
    import skimage.data

    img = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((256, 192)))
    th, tw = rt.meta.input_size
    overlap = tiling.default_overlap((th, tw))
    tiles, layout = make_tiles(img, (th, tw), overlap)
    votes = blend(rt.run(tiles), layout, rt.meta.n_classes)
    probs = blend(rt.run_scores(tiles)[1], layout, rt.meta.n_classes)
    assert votes.shape == probs.shape == (192, 256)
    # a seam would show as a line where the mask flips: compare each tile-edge column to its neighbours
    edges = sorted({x for _, x in layout.origins if x} | {x + tw for _, x in layout.origins if x + tw < 256})
    for x in edges:
        flips_at_edge = (votes[:, x - 1] != votes[:, x]).mean()
        flips_elsewhere = np.mean([(votes[:, c - 1] != votes[:, c]).mean() for c in range(1, 256)])
        assert flips_at_edge <= max(3 * flips_elsewhere, 0.05), (x, flips_at_edge, flips_elsewhere)
    assert (votes == probs).mean() > 0.95


def test_service_tile_option(rule_model_dir):
    import requests

    from loadtest.server import served

    img = scene(96, 128)
    with served(rule_model_dir, SEG_MAX_BATCH_SIZE=8) as proc:
        r = requests.post(proc.url + "/segment?tile=true", files={"image": ("s.png", png_bytes(img))}, timeout=60)
        assert r.status_code == 200
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected_mask(img[None])[0])
        r = requests.post(proc.url + "/segment", files={"image": ("s.png", png_bytes(img))}, timeout=60)
        assert not np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected_mask(img[None])[0])
        r = requests.post(proc.url + "/stats?tile=maybe", files={"image": ("s.png", png_bytes(img))}, timeout=60)
        assert r.status_code == 400 and "not a boolean" in r.json()["error"]
