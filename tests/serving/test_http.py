"""Every endpoint over in-process HTTP (BentoML's ASGI app with its lifespan), against the rule model."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from contract_model import expected_mask, png_bytes

RNG = np.random.default_rng(3)
PHOTO = RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)


def truth(im: Image.Image) -> np.ndarray:
    """What the service must answer: squish to 32 px (bilinear), the rule, back to full size (nearest)."""
    small = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR))[None]
    m = expected_mask(small)[0]
    return np.asarray(Image.fromarray(m).resize(im.size, Image.NEAREST))


def post(client, route, data: bytes, name="image", filename="x.png", **kw):
    return client.post(route, files={name: (filename, data, "application/octet-stream")}, **kw)


def test_segment_returns_palette_png_of_upload_size(client):
    r = post(client, "/segment", png_bytes(PHOTO))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content))
    assert im.mode == "P" and im.size == (70, 50)
    mask = np.asarray(im)
    assert mask.max() < 3
    assert np.array_equal(mask, truth(Image.fromarray(PHOTO)))
    assert im.getpalette()[:9] == [0, 0, 0, 255, 0, 0, 0, 255, 0]


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("CMYK", "TIFF"), ("1", "PNG"), ("RGB", "WEBP"), ("RGB", "BMP"), ("RGB", "GIF")])
def test_modes_and_formats(client, mode, fmt):
    im = Image.fromarray(PHOTO).convert(mode)
    r = post(client, "/segment", png_bytes(im, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert r.status_code == 200, r.text
    got = np.asarray(Image.open(io.BytesIO(r.content)))
    ref = Image.open(io.BytesIO(png_bytes(im, fmt, **({"lossless": True} if fmt == "WEBP" else {})))).convert("RGB")
    assert got.shape == (50, 70) and np.array_equal(got, truth(ref))


def test_sixteen_bit_grey(client):
    grey = RNG.integers(0, 65536, (40, 30), dtype=np.uint16)
    r = post(client, "/segment", png_bytes(Image.fromarray(grey)))
    assert r.status_code == 200
    eight = Image.fromarray(np.rint(grey / 257.0).astype(np.uint8)).convert("RGB")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), truth(eight))


def test_exif_rotated_jpeg_mask_follows_display(client):
    im = Image.fromarray(PHOTO)
    exif = im.getexif()
    exif[0x0112] = 8  # displayed rotated 90 degrees
    data = png_bytes(im, "JPEG", exif=exif, quality=95)
    r = post(client, "/segment", data, filename="x.jpg")
    assert r.status_code == 200
    got = Image.open(io.BytesIO(r.content))
    assert got.size == (50, 70)  # height and width swapped, as displayed
    from PIL import ImageOps

    assert np.array_equal(np.asarray(got), truth(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))))


def test_overlay_same_size_png(client):
    r = post(client, "/overlay", png_bytes(PHOTO))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    im = Image.open(io.BytesIO(r.content)).convert("RGB")
    assert im.size == (70, 50)
    bg = truth(Image.fromarray(PHOTO)) == 0
    assert np.array_equal(np.asarray(im)[bg], PHOTO[bg])


def test_stats_sum_to_pixels_and_rle(client):
    r = post(client, "/stats", png_bytes(PHOTO))
    s = r.json()
    assert r.status_code == 200 and s["width"] == 70 and s["height"] == 50
    assert sum(c["pixels"] for c in s["classes"]) == 70 * 50
    t = truth(Image.fromarray(PHOTO))
    assert [c["pixels"] for c in s["classes"]] == np.bincount(t.ravel(), minlength=3).tolist()
    r = post(client, "/stats?rle=true", png_bytes(PHOTO))
    from serving.imaging import rle_decode

    for c in r.json()["classes"]:
        assert np.array_equal(rle_decode(c["rle"]), t == c["id"])


def test_model_info_and_bentoml_endpoints(client):
    r = client.get("/model")
    info = r.json()
    assert r.status_code == 200 and info["provider"] == "CPUExecutionProvider" and info["variant"] == "fp32"
    assert info["metadata"]["classes"] == ["background", "red", "green"]
    assert info["batching"]["max_batch_size"] == 4
    for path in ("/readyz", "/livez", "/healthz"):
        assert client.get(path).status_code == 200, path
    docs = client.get("/docs.json").json()
    assert {"/segment", "/overlay", "/stats"} <= set(docs["paths"])
    assert client.get("/").status_code == 200  # Swagger UI
    # /metrics needs the prometheus set-up of `bentoml serve`: checked in test_serve_process.py


BAD = [
    ("text named .png", dict(files={"image": ("x.png", b"just some text", "image/png")}), 415, "not an image"),
    ("wrong field", dict(files={"photo": ("x.png", png_bytes(PHOTO), "image/png")}), 400, "unknown form field"),
    ("extra field", dict(files={"image": ("x.png", png_bytes(PHOTO), "image/png"), "other": ("y.png", b"\x89PNG", "image/png")}), 400, "unknown form field"),
    ("empty file", dict(files={"image": ("x.png", b"", "image/png")}), 400, "empty upload"),
    ("truncated png", dict(files={"image": ("x.png", png_bytes(PHOTO)[:300], "image/png")}), 400, "truncated"),
    ("json body", dict(json={"image": "abc"}), 415, "multipart/form-data"),
    ("no body", dict(), 415, "multipart/form-data"),
    ("rle not bool", dict(files={"image": ("x.png", png_bytes(PHOTO), "image/png")}, params={"rle": "maybe"}), 400, "not a boolean"),
]


@pytest.mark.parametrize("name,kw,status,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_4xx_with_advice_and_service_stays_ready(client, name, kw, status, needle):
    route = "/stats" if name == "rle not bool" else "/segment"
    r = client.post(route, **kw)
    assert r.status_code == status, r.text
    assert needle in r.text
    assert client.get("/readyz").status_code == 200
    ok = post(client, "/segment", png_bytes(PHOTO))
    assert ok.status_code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(ok.content))), truth(Image.fromarray(PHOTO)))
