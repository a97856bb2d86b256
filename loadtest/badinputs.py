"""The bad-input corpus: each entry is a request a careless or hostile client may send, and what the
service must answer (a 4xx with advice, or 200 for odd-but-valid images). Used by
tests/hardening/test_corpus.py against a real `bentoml serve`; importable for manual runs too."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

RNG = np.random.default_rng(11)
PHOTO = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def _enc(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    c = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", c)


def png_bomb(w: int = 30000, h: int = 30000) -> bytes:
    """A valid PNG header claiming w x h pixels, with a tiny compressed body (never decoded by us)."""
    raw = zlib.compress(b"\x00" * (1 + w * 3) * 4, 9)  # a few rows; the rest would be missing
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
        + _chunk(b"IDAT", raw)
        + _chunk(b"IEND", b"")
    )


def jpeg_bomb(w: int = 65500, h: int = 65500) -> bytes:
    """A small JPEG whose SOF0 header is patched to claim w x h."""
    data = bytearray(_enc(Image.fromarray(PHOTO), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def bad_crc_png() -> bytes:
    good = _enc(Image.fromarray(PHOTO))
    i = good.index(b"IDAT") - 4
    n = struct.unpack(">I", good[i : i + 4])[0]
    end = i + 8 + n
    return good[:end] + b"\x00\x00\x00\x00" + good[end + 4 :]


def exif_rotated_jpeg() -> bytes:
    im = Image.fromarray(PHOTO)
    exif = im.getexif()
    exif[0x0112] = 6
    return _enc(im, "JPEG", exif=exif, quality=95)


def animated_gif() -> bytes:
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (200, 10, 90)]
    b = io.BytesIO()
    frames[0].save(b, "GIF", save_all=True, append_images=frames[1:], duration=50)
    return b.getvalue()


def zip_bytes() -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as z:
        z.writestr("a.txt", "hello")
    return b.getvalue()


@dataclass
class Case:
    name: str
    files: dict | None = None
    data: bytes | dict | None = None
    headers: dict = field(default_factory=dict)
    json: object = None
    params: dict = field(default_factory=dict)
    route: str = "/segment"
    status: int = 400  # expected status; 200 means "odd but valid: must succeed"
    needle: str = ""  # must appear in the error message
    same_as: bytes | None = None  # for 200 cases: the mask must equal the mask of this RGB image


def _file(data: bytes, name="upload.png", ctype="image/png"):
    return {"image": (name, data, ctype)}


def corpus(max_bytes: int) -> list[Case]:
    """At least 25 kinds of bad or odd input."""
    rgb = Image.fromarray(PHOTO)
    png = _enc(rgb)
    jpg = _enc(rgb, "JPEG", quality=95)
    grey16 = RNG.integers(0, 65536, (30, 40), dtype=np.uint16)
    cases = [
        Case(
            "empty body",
            data=b"",
            headers={"Content-Type": "multipart/form-data; boundary=xyz"},
            needle="malformed multipart",
        ),
        Case(
            "no multipart (raw png)",
            data=png,
            headers={"Content-Type": "image/png"},
            status=415,
            needle="multipart/form-data",
        ),
        Case("no content type", data=png, status=415, needle="multipart/form-data"),
        Case("wrong field name", files={"file": ("x.png", png, "image/png")}, needle="unknown form field"),
        Case("text named .png", files=_file(b"hello world, not a picture\n" * 5), status=415, needle="not an image"),
        Case(
            "pdf named .png",
            files=_file(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
            status=415,
            needle="not an image",
        ),
        Case("zip named .png", files=_file(zip_bytes()), status=415, needle="not an image"),
        Case(
            "random bytes named .png",
            files=_file(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()),
            status=415,
            needle="not an image",
        ),
        Case("truncated png", files=_file(png[: len(png) // 2]), needle="truncated"),
        Case("truncated jpeg", files=_file(jpg[: len(jpg) // 2], "x.jpg", "image/jpeg"), needle="truncated"),
        Case("png with bad crc", files=_file(bad_crc_png()), needle="corrupt"),
        Case("empty file in field", files=_file(b""), needle="empty upload"),
        Case(
            "0x0 png header",
            files=_file(
                b"\x89PNG\r\n\x1a\n"
                + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
                + _chunk(b"IEND", b"")
            ),
            status=415,
            needle="not an image",
        ),
        Case(
            "1x1 image",
            files=_file(_enc(Image.new("RGB", (1, 1), (200, 10, 10)))),
            status=200,
            same_as=_enc(Image.new("RGB", (1, 1), (200, 10, 10))),
        ),
        Case("png bomb 30000x30000", files=_file(png_bomb()), status=413, needle="pixel limit"),
        Case(
            "jpeg header 65500x65500", files=_file(jpeg_bomb(), "x.jpg", "image/jpeg"), status=413, needle="pixel limit"
        ),
        Case(
            "body over the byte cap",
            files=_file(b"\x89PNG" + b"\x00" * (max_bytes + 70000)),
            status=413,
            needle="limit",
        ),
        Case(
            "file over the byte cap", files=_file(b"\x89PNG" + b"\x00" * (max_bytes + 1000)), status=413, needle="limit"
        ),
        Case(
            "animated gif (first frame)",
            files=_file(animated_gif(), "a.gif", "image/gif"),
            status=200,
            same_as=_enc(Image.open(io.BytesIO(animated_gif())).convert("RGB")),
        ),
        Case(
            "16-bit grey png",
            files=_file(_enc(Image.fromarray(grey16))),
            status=200,
            same_as=_enc(Image.fromarray(np.rint(grey16 / 257.0).astype(np.uint8)).convert("RGB")),
        ),
        Case(
            "cmyk tiff",
            files=_file(_enc(rgb.convert("CMYK"), "TIFF"), "x.tif", "image/tiff"),
            status=200,
            same_as=_enc(rgb.convert("CMYK").convert("RGB")),
        ),
        Case(
            "cmyk jpeg",
            files=_file(_enc(rgb.convert("CMYK"), "JPEG", quality=95), "x.jpg", "image/jpeg"),
            status=200,
            same_as=_enc(Image.open(io.BytesIO(_enc(rgb.convert("CMYK"), "JPEG", quality=95))).convert("RGB")),
        ),
        Case(
            "palette png",
            files=_file(_enc(rgb.convert("P"))),
            status=200,
            same_as=_enc(rgb.convert("P").convert("RGB")),
        ),
        Case("LA png", files=_file(_enc(rgb.convert("LA"))), status=200, same_as=_enc(rgb.convert("L").convert("RGB"))),
        Case("RGBA png", files=_file(_enc(rgb.convert("RGBA"))), status=200, same_as=png),
        Case(
            "1-bit png", files=_file(_enc(rgb.convert("1"))), status=200, same_as=_enc(rgb.convert("1").convert("RGB"))
        ),
        Case(
            "exif-rotated jpeg",
            files=_file(exif_rotated_jpeg(), "r.jpg", "image/jpeg"),
            status=200,
            same_as=_enc(Image.open(io.BytesIO(exif_rotated_jpeg())).transpose(Image.ROTATE_270)),
        ),
        Case("json body", json={"image": "aGVsbG8="}, status=415, needle="multipart/form-data"),
        Case(
            "rle of the wrong type", files=_file(png), params={"rle": "maybe"}, route="/stats", needle="not a boolean"
        ),
        Case("tile of the wrong type", files=_file(png), params={"tile": "sometimes"}, needle="not a boolean"),
        Case(
            "two images",
            files=[("image", ("a.png", png, "image/png")), ("image", ("b.png", png, "image/png"))],
            needle="one image per request",
        ),
        Case(
            "svg named .png",
            files=_file(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'),
            status=415,
            needle="not an image",
        ),
        *protocol_cases(png, max_bytes),
    ]
    return cases


INFER = "/v2/models/segmentation/infer"


def _tensor(datatype: str, shape: list, **kw) -> dict:
    return {"inputs": [{"name": "image", "datatype": datatype, "shape": shape, **kw}]}


def _binary(request: dict, blob: bytes, announce: int | None = None) -> tuple[bytes, dict]:
    """The binary tensor data extension: the JSON header, then the tensor bytes; its length in a header."""
    head = json.dumps(request).encode()
    return head + blob, {"Inference-Header-Content-Length": str(len(head) if announce is None else announce)}


def protocol_cases(png: bytes, max_bytes: int) -> list[Case]:
    """The Open Inference Protocol's infer route (serving.oip): bad tensors get the protocol's {"error"} with the
    multipart routes' statuses."""
    b64 = base64.b64encode(png).decode()
    elem = struct.pack("<I", len(png)) + png
    cut_body, cut_headers = _binary(_tensor("BYTES", [1], parameters={"binary_data_size": len(elem)}), elem[:-100])
    past_body, past_headers = _binary(_tensor("BYTES", [1], parameters={"binary_data_size": len(elem)}), elem, 10**6)
    short, short_headers = _binary(_tensor("BYTES", [1], parameters={"binary_data_size": 20}), elem[:20])
    raw_short, raw_headers = _binary(_tensor("UINT8", [1, 4, 4, 3], parameters={"binary_data_size": 40}), bytes(40))
    return [
        Case("oip: not json", data=b"{nope", route=INFER, needle="not JSON"),
        Case("oip: no inputs", json={"inputs": []}, route=INFER, needle="inputs"),
        Case(
            "oip: wrong input name",
            json={"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [b64]}]},
            route=INFER,
            needle="one input named `image`",
        ),  # fmt: skip
        Case(
            "oip: wrong datatype",
            json=_tensor("FP32", [1, 2, 2, 3], data=[0.5] * 12),
            route=INFER,
            needle="datatype 'FP32'",
        ),  # fmt: skip
        Case(
            "oip: BYTES not base64",
            json=_tensor("BYTES", [1], data=["not base64 at all!"]),
            route=INFER,
            needle="base64",
        ),  # fmt: skip
        Case(
            "oip: BYTES not an image",
            json=_tensor("BYTES", [1], data=[base64.b64encode(b"hello").decode()]),
            route=INFER,
            status=415,
            needle="not an image",
        ),  # fmt: skip
        Case(
            "oip: BYTES shape and data disagree",
            json=_tensor("BYTES", [2], data=[b64]),
            route=INFER,
            needle="shape [2] but 1 elements",
        ),  # fmt: skip
        Case("oip: truncated binary body", data=cut_body, headers=cut_headers, route=INFER, needle="binary_data_size"),
        Case(
            "oip: header length past the body",
            data=past_body,
            headers=past_headers,
            route=INFER,
            needle="Inference-Header-Content-Length is 1000000",
        ),  # fmt: skip
        Case("oip: element longer than its tensor", data=short, headers=short_headers, route=INFER, needle="truncated"),
        Case(
            "oip: UINT8 bytes short of its shape",
            data=raw_short,
            headers=raw_headers,
            route=INFER,
            needle="needs 48 bytes",
        ),  # fmt: skip
        Case(
            "oip: huge UINT8 shape",
            json=_tensor("UINT8", [1, 100000, 100000, 3], data=[0]),
            route=INFER,
            status=413,
            needle="pixel limit",
        ),  # fmt: skip
        Case(
            "oip: UINT8 values out of range",
            json=_tensor("UINT8", [1, 1, 1, 3], data=[0, 300, 2]),
            route=INFER,
            needle="0 to 255",
        ),  # fmt: skip
        Case(
            "oip: body over the byte cap",
            data=b"{" + b" " * (max_bytes + 10) + b"}",
            route=INFER,
            status=413,
            needle="limit",
        ),  # fmt: skip
        Case(
            "oip: unknown model",
            json=_tensor("BYTES", [1], data=[b64]),
            route="/v2/models/other/infer",
            status=404,
            needle="not served here",
        ),  # fmt: skip
        Case(
            "oip: unknown output",
            json={**_tensor("BYTES", [1], data=[b64]), "outputs": [{"name": "depth"}]},
            route=INFER,
            needle="output 'depth'",
        ),  # fmt: skip
    ]
