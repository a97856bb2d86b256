"""Every endpoint over in-process HTTP (BentoML's ASGI app with its lifespan), against the rule model."""

from __future__ import annotations

import io

import numpy as np
import pytest
from contract_model import png_bytes, served_mask
from PIL import Image

RNG = np.random.default_rng(3)
PHOTO = RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)


def truth(im: Image.Image) -> np.ndarray:
    """What the service must answer: squish to 32 px (bilinear), the rule's scores upsampled bilinearly, argmax."""
    return served_mask(im)


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


@pytest.mark.parametrize(
    "mode,fmt",
    [
        ("L", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("CMYK", "TIFF"),
        ("1", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
        ("RGB", "GIF"),
    ],
)
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
    assert info["variant_reason"] == "auto: CPU, and the export kept no model.int8.onnx"
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
    (
        "extra field",
        dict(files={"image": ("x.png", png_bytes(PHOTO), "image/png"), "other": ("y.png", b"\x89PNG", "image/png")}),
        400,
        "unknown form field",
    ),
    ("empty file", dict(files={"image": ("x.png", b"", "image/png")}), 400, "empty upload"),
    ("truncated png", dict(files={"image": ("x.png", png_bytes(PHOTO)[:300], "image/png")}), 400, "truncated"),
    ("json body", dict(json={"image": "abc"}), 415, "multipart/form-data"),
    ("no body", dict(), 415, "multipart/form-data"),
    (
        "rle not bool",
        dict(files={"image": ("x.png", png_bytes(PHOTO), "image/png")}, params={"rle": "maybe"}),
        400,
        "not a boolean",
    ),
]


@pytest.mark.parametrize("name,kw,status,needle", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_4xx_with_advice_and_service_stays_ready(client, name, kw, status, needle):
    route = "/stats" if name == "rle not bool" else "/segment"
    r = client.post(route, **kw)
    assert r.status_code == status, r.text
    assert needle in r.text
    assert client.get("/readyz").status_code == 200
    ok = post(client, "/segment", png_bytes(PHOTO))
    assert ok.status_code == 200 and np.array_equal(
        np.asarray(Image.open(io.BytesIO(ok.content))), truth(Image.fromarray(PHOTO))
    )


def raw_post(client, route, body: bytes, ctype: str, **kw):
    return client.post(route, content=body, headers={"Content-Type": ctype}, **kw)


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> bytes:
    """A multipart/form-data body by hand: (name, filename or None, content) per part."""
    out = b""
    for name, filename, content in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        out += (b"Content-Type: image/png\r\n" if filename else b"") + b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def test_rfc_valid_bodies_are_accepted(client):
    """A preamble and an epilogue (RFC 2046 5.1.1), `Boundary=` in any case, a quoted boundary, options as
    form fields the way bentoml's client sends them (JSON `true`)."""
    png = png_bytes(PHOTO)
    body = multipart([("image", "x.png", png)])
    want = truth(Image.fromarray(PHOTO))
    for label, data, ctype in [
        (
            "preamble+epilogue",
            b"This is the preamble.\r\nIt is to be ignored.\r\n" + body + b"This is the epilogue.\r\n",
            "multipart/form-data; boundary=b0undary",
        ),
        ("capital Boundary", body, "multipart/form-data; Boundary=b0undary"),
        ("quoted", body, 'multipart/form-data; boundary="b0undary"; charset=utf-8'),
    ]:
        r = raw_post(client, "/segment", data, ctype)
        assert r.status_code == 200, (label, r.text)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), want), label
    r = raw_post(
        client,
        "/stats",
        multipart([("rle", None, b"true"), ("image", "x.png", png), ("tile", None, b"false")]),
        "multipart/form-data; boundary=b0undary",
    )
    assert r.status_code == 200 and all("rle" in c for c in r.json()["classes"])


@pytest.mark.parametrize(
    "label,body,status,needle",
    [
        (
            "cut off",
            multipart([("image", "x.png", png_bytes(PHOTO))])[:-40],
            400,
            "cut off before its closing boundary",
        ),
        ("garbage", b"hello, this is not multipart", 400, "malformed multipart"),
        ("no image field", multipart([("tile", None, b"true")]), 400, "no form field `image`"),
        ("image as text", multipart([("image", None, b"http://example.com/cat.png")]), 400, "holds text, not a file"),
        (
            "part without a name",
            b'--b0undary\r\nContent-Disposition: form-data; filename="x.png"\r\n\r\nabc\r\n--b0undary--\r\n',
            400,
            "malformed multipart",
        ),
        (
            "unknown option",
            multipart([("image", "x.png", png_bytes(PHOTO)), ("colour", None, b"red")]),
            400,
            "unknown form field(s) 'colour'",
        ),
        (
            "oversize option",
            multipart([("image", "x.png", png_bytes(PHOTO)), ("tile", None, b"t" * 5000)]),
            400,
            "malformed multipart",
        ),
    ],
)
def test_malformed_bodies_get_a_4xx_that_says_what_to_fix(client, label, body, status, needle):
    r = raw_post(client, "/segment", body, "multipart/form-data; boundary=b0undary")
    assert r.status_code == status and needle in r.json()["error"], (label, r.text)


def test_no_boundary_parameter_is_415(client):
    r = raw_post(client, "/segment", b"--x\r\n", "multipart/form-data")
    assert r.status_code == 415 and "boundary" in r.json()["error"]


def test_openapi_documents_the_real_request_and_response_types(client):
    docs = client.get("/docs.json").json()
    for route in ("/segment", "/overlay", "/stats"):
        post = docs["paths"][route]["post"]
        body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["properties"]["image"]["format"] == "binary" and "image" in body["required"]
        assert body["properties"]["tile"]["type"] == "boolean"
    assert "image/png" in docs["paths"]["/segment"]["post"]["responses"]["200"]["content"]
    assert "image/png" in docs["paths"]["/overlay"]["post"]["responses"]["200"]["content"]
    stats = docs["paths"]["/stats"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    props = stats.get("properties") or docs["components"]["schemas"][stats["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert {"width", "height", "classes"} <= set(props)
    assert "get" in docs["paths"]["/model"] and "get" in docs["paths"]["/ui"]
    assert docs["info"]["description"].startswith(
        "Semantic segmentation with a fastai U-Net"
    )  # Swagger UI at / says what this is
    assert "This is a Machine Learning Service created with BentoML" not in docs["info"]["description"]


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/no-such-route", 404),
        ("GET", "/v2/models/a%0Ab/versions/1", 404),  # a name holding a newline: no route matches it
        ("DELETE", "/segment", 405),
        ("GET", "/stats", 405),
        ("PUT", "/model", 405),
        ("POST", "/v2/health/live", 405),
        ("GET", "/v2/models/a%0A", 422),  # outside the name's declared pattern
    ],
)
def test_the_frameworks_own_errors_are_the_documented_json(client, method, path, status):
    r = client.request(method, path)
    assert r.status_code == status and r.headers["content-type"].startswith("application/json")
    assert set(r.json()) == {"error"} and r.json()["error"]
    if status == 405:
        assert r.headers.get("allow"), r.headers
    if status == 422:
        doc = client.get("/docs.json").json()["paths"]["/v2/models/{name}"]["get"]["responses"]["422"]
        assert doc["content"]["application/json"]["schema"]["required"] == ["error"]
