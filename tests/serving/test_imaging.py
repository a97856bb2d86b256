"""Decoding, validation, resizing and encoding: pure functions, no server."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from serving import imaging
from serving.imaging import ImageError, class_stats, decode_image, rle_decode, rle_encode

CAPS = dict(max_bytes=5_000_000, max_pixels=5_000_000)
RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (24, 40, 3), dtype=np.uint8)


def _bytes(im: Image.Image, fmt="PNG", **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def test_png_round_trip_is_exact():
    out = decode_image(_bytes(Image.fromarray(RGB)), **CAPS)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), RGB)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16"])
def test_modes_convert_to_rgb_like_pillow(mode):
    base = Image.fromarray(RGB)
    if mode == "I;16":
        grey = RNG.integers(0, 65536, (24, 40), dtype=np.uint16)
        im = Image.fromarray(grey)
        expected = np.repeat(np.rint(grey / 257.0).astype(np.uint8)[..., None], 3, axis=2)
    else:
        im = base.convert(mode)
        expected = np.asarray(im.convert("RGB")) if mode not in ("LA", "RGBA") else np.asarray(im.convert("RGB"))
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    out = decode_image(_bytes(im, fmt), **CAPS)
    assert out.mode == "RGB" and out.size == (40, 24)
    assert np.abs(np.asarray(out).astype(int) - expected.astype(int)).max() <= 1


def test_exif_orientation_is_applied():
    im = Image.fromarray(RGB)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = decode_image(_bytes(im, "JPEG", exif=exif, quality=95), **CAPS)
    assert out.size == (24, 40)  # displayed orientation: width and height swapped


@pytest.mark.parametrize("exif_chunk", [True, False])
def test_png_orientation_read_from_its_exif_chunk(exif_chunk):
    """A PNG's eXIf chunk rotates it; a PNG without one is taken as stored (and decoded by libspng)."""
    im = Image.fromarray(RGB)
    exif = im.getexif()
    exif[0x0112] = 6
    data = _bytes(im, "PNG", exif=exif) if exif_chunk else _bytes(im, "PNG")
    opened = imaging.open_image(data, **CAPS)
    assert imaging.orientation(opened, data) == (6 if exif_chunk else 1)
    assert imaging.displayed_size(opened, data) == ((24, 40) if exif_chunk else (40, 24))
    out = imaging.load_rgb(opened, data)
    expected = np.asarray(Image.fromarray(RGB).transpose(Image.Transpose.ROTATE_270)) if exif_chunk else RGB
    assert np.array_equal(np.asarray(out), expected)


def test_gif_first_frame():
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (10, 200)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:])
    out = decode_image(b.getvalue(), **CAPS)
    assert np.asarray(out).mean() < 50


def _png_header_only(w, h) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "data,status,needle",
    [
        (b"", 400, "empty upload"),
        (b"hello, I am text", 415, "not an image"),
        (_png_header_only(30000, 30000), 413, "pixel limit"),
        (b"x" * 5_000_001, 413, "byte limit"),
    ],
)
def test_bad_uploads_raise_with_status_and_advice(data, status, needle):
    with pytest.raises(ImageError) as e:
        decode_image(data, **CAPS)
    assert e.value.status == status and needle in str(e.value)


def test_truncated_png_is_400():
    data = _bytes(Image.fromarray(RGB))
    with pytest.raises(ImageError) as e:
        decode_image(data[: len(data) // 2], **CAPS)
    assert e.value.status == 400 and "truncated" in str(e.value)


def test_mask_back_by_nearest_neighbour():
    mask = RNG.integers(0, 3, (32, 32), dtype=np.uint8)
    big = imaging.resize_mask(mask, (40, 24))
    assert big.shape == (24, 40) and set(np.unique(big)) <= set(np.unique(mask))


def test_palette_png_values_are_class_ids_and_palette_is_colours():
    mask = RNG.integers(0, 3, (24, 40), dtype=np.uint8)
    colours = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    im = Image.open(io.BytesIO(imaging.palette_png(mask, colours)))
    assert im.mode == "P" and np.array_equal(np.asarray(im), mask)
    assert im.getpalette()[:9] == [0, 0, 0, 255, 0, 0, 0, 255, 0]


def test_overlay_same_size_and_background_untouched():
    img = Image.fromarray(RGB)
    mask = np.zeros((24, 40), np.uint8)
    mask[:, 20:] = 1
    out = np.asarray(Image.open(io.BytesIO(imaging.overlay_png(img, mask, [(0, 0, 0), (255, 0, 0)]))).convert("RGB"))
    assert out.shape == RGB.shape
    assert np.array_equal(out[:, :20], RGB[:, :20])
    assert not np.array_equal(out[:, 20:], RGB[:, 20:])


def test_stats_sum_to_pixel_count_and_rle_round_trips():
    mask = RNG.integers(0, 3, (24, 40), dtype=np.uint8)
    s = class_stats(mask, ["a", "b", "c"], rle=True)
    assert s["width"] == 40 and s["height"] == 24
    assert sum(c["pixels"] for c in s["classes"]) == mask.size
    assert abs(sum(c["fraction"] for c in s["classes"]) - 1) < 1e-9
    for c in s["classes"]:
        assert np.array_equal(rle_decode(c["rle"]), mask == c["id"])
        assert sum(c["rle"]["counts"]) == mask.size
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]


def test_upsampled_scores_equal_torch_bilinear_then_argmax():
    """upsample_scores computes the bilinear sum only near class boundaries, and still equals the full
    computation (torch interpolate, half-pixel, then argmax) pixel for pixel."""
    import torch

    from serving.imaging import upsample_scores

    rng = np.random.default_rng(0)
    for c, (h, w), (H, W) in [
        (3, (16, 16), (50, 37)),
        (7, (45, 60), (360, 480)),
        (2, (10, 13), (10, 13)),
        (4, (20, 30), (7, 9)),
    ]:
        logits = torch.nn.functional.interpolate(
            torch.tensor(rng.normal(size=(1, c, 4, 5)), dtype=torch.float32), size=(h, w), mode="bilinear"
        )
        p = torch.softmax(logits * 3, 1)
        ref = torch.nn.functional.interpolate(p, size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0).numpy()
        got = upsample_scores(p[0].numpy(), (W, H))
        assert got.shape == (H, W) and got.dtype == np.uint8 and np.array_equal(got, ref), (c, h, w, H, W)
