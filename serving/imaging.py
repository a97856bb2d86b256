"""Pure image functions for the data path: decode and validate uploads, resize, encode masks.

Upload bytes -> validated RGB image (limits, EXIF orientation, modes) ... model scores -> mask at the
original size (scores upsampled bilinearly along class boundaries, or class ids by nearest neighbour) ->
PNG / overlay / JSON / RLE. The geometry between the two (training scale, padding, tiles) is
serving/pipeline.py's. Each error is an ImageError whose message says what to fix and whose `status` is the HTTP code.
"""

from __future__ import annotations

import functools
import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

try:  # libspng: a faster decoder for the common 8-bit RGB(A) PNG (optional; Pillow otherwise)
    import pyspng as _spng
except ImportError:  # pragma: no cover - platforms without a wheel
    _spng = None

# Our own pixel cap (checked from the header, before any pixel is decoded) replaces Pillow's.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "BMP", "TIFF", "GIF")
NO_LIMIT = {
    "max_bytes": 10**12,
    "max_pixels": 10**10,
}  # offline use (predict, the Python API): files are trusted, not uploads
_DIRECT_MODES = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV", "La"}
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class ImageError(ValueError):
    """An upload that cannot be used; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def open_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Upload bytes -> a PIL image whose header has been checked, not yet decoded (cheap: no pixel is read).

    Raises ImageError: empty (400), over `max_bytes` (413), not an image or unsupported format (415),
    over `max_pixels` (413), 0 pixels (400), PNG chunks truncated or corrupt (400)."""
    if not data:
        raise ImageError("empty upload: send the image file in the multipart field `image`")
    if len(data) > max_bytes:
        raise ImageError(
            f"upload is {len(data)} bytes, over the {max_bytes}-byte limit: send a smaller or more compressed image",
            413,
        )
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(
            f"not an image Pillow can read: send PNG, JPEG, WebP, BMP, TIFF or GIF (got {len(data)} bytes starting "
            f"{data[:8]!r})",
            415,
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image header is corrupt ({exc}): re-save the image and upload it again") from None
    if im.format not in FORMATS:
        raise ImageError(f"{im.format} images are not accepted: send PNG, JPEG, WebP, BMP, TIFF or GIF", 415)
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"image is {w}x{h} pixels: it must be at least 1x1")
    if w * h > max_pixels:
        raise ImageError(
            f"image is {w}x{h} = {w * h} pixels, over the {max_pixels}-pixel limit: downscale it first", 413
        )
    if im.format == "PNG":  # Pillow skips chunk CRCs when decoding; verify() checks them without decoding
        try:
            Image.open(io.BytesIO(data)).verify()
        except Exception as exc:
            raise ImageError(
                f"PNG data is truncated or corrupt ({str(exc)[:80]}): upload the complete, intact file"
            ) from None
    return im


def load_rgb(im: Image.Image, data: bytes, at_least: tuple[int, int] | None = None) -> Image.Image:
    """An image from `open_image` (and its bytes) -> decoded RGB with EXIF orientation applied (GIF and
    animations: first frame). 8-bit RGB/RGBA PNGs are decoded by libspng (pyspng) where installed:
    the same pixels in ~60 % of Pillow's time. `at_least` (W, H as displayed): a JPEG may be decoded
    reduced by a power of two (libjpeg's DCT scaling, Pillow's `draft`, as `Image.thumbnail` does) as
    long as it stays at least that size; the result is then smaller than the upload."""
    if at_least is not None and im.format in ("JPEG", "MPO"):
        w, h = at_least
        im.draft("RGB", (h, w) if _turned(im, data) else (w, h))
    if _spng is not None and im.format == "PNG" and im.mode in ("RGB", "RGBA") and orientation(im, data) == 1:
        try:
            arr = _spng.load(data)
        except RuntimeError as exc:
            raise ImageError(
                f"image data is truncated or corrupt ({str(exc)[:80]}): upload the complete file"
            ) from None
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]) if arr.shape[-1] == 4 else arr, "RGB")
    try:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, Warning) as exc:
        raise ImageError(f"image data is truncated or corrupt ({str(exc)[:80]}): upload the complete file") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # a broken EXIF block must not lose the image: keep the stored orientation
        pass
    return to_rgb(im)


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Upload bytes -> RGB PIL image with EXIF orientation applied: `open_image` then `load_rgb`."""
    return load_rgb(open_image(data, max_bytes=max_bytes, max_pixels=max_pixels), data)


def orientation(im: Image.Image, data: bytes) -> int:
    """The EXIF orientation of an image from `open_image` (1: as stored). A PNG may carry its EXIF in an
    eXIf chunk after the pixel data, so Pillow decodes the whole image to look for one; a PNG whose chunk
    list has no eXIf has none, and is not decoded here."""
    if im.format == "PNG" and not _png_has_exif(data):
        return 1
    return im.getexif().get(0x0112, 1)


def _png_has_exif(data: bytes) -> bool:
    """Whether the PNG's chunk list (length and type of each, from the signature to IEND) has an eXIf chunk:
    a few header reads instead of a search through the compressed pixels."""
    pos, end = 8, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"eXIf":
            return True
        if kind == b"IEND":
            return False
        pos += 12 + length
    return False


def displayed_size(im: Image.Image, data: bytes) -> tuple[int, int]:
    """(W, H) as displayed: width and height swap when the EXIF orientation rotates by 90 degrees."""
    w, h = im.size
    return (h, w) if _turned(im, data) else (w, h)


def _turned(im: Image.Image, data: bytes) -> bool:
    """The EXIF orientation turns the image by 90 degrees (width and height swap when displayed)."""
    return orientation(im, data) in (5, 6, 7, 8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any supported mode -> RGB. Alpha is dropped (the colour channels are kept as stored); 16-bit and
    32-bit grey are scaled to 8 bits by their range (0..65535 -> 0..255)."""
    if im.mode == "RGB":
        return im
    if im.mode in _WIDE_MODES:
        arr = np.asarray(im)
        if arr.dtype.kind == "f":
            arr = np.clip(arr, 0, 255) if arr.max(initial=0) > 1.0 else arr * 255.0
        elif arr.max(initial=0) > 255:
            arr = arr.astype(np.float32) / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in _DIRECT_MODES:
        if im.mode in ("P", "PA") and "transparency" in im.info:
            im = im.convert("RGBA")
        return im.convert("RGB")
    raise ImageError(f"image mode {im.mode} is not supported: save it as 8-bit RGB, grey or palette", 415)


def _bilinear_axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of half-pixel bilinear resampling along one axis (edges clamped), as
    torch's interpolate(mode="bilinear", align_corners=False) and ONNX Resize (linear, half_pixel) do."""
    src = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(src).astype(np.intp)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _grid(h: int, w: int, H: int, W: int) -> tuple[np.ndarray, ...]:
    """The resampling tables of an (h, w) -> (H, W) upsampling, once per pair of sizes (uploads repeat them)."""
    y0, _, fy = _bilinear_axis(H, h)
    x0, _, fx = _bilinear_axis(W, w)
    down, right = np.minimum(np.arange(h) + 1, h - 1), np.minimum(np.arange(w) + 1, w - 1)
    # The output pixels of source cell (r, q) are a block: rows ry[r]..ry[r+1], columns rx[q]..rx[q+1] (y0 and x0
    # never decrease)
    ry, rx = np.searchsorted(y0, np.arange(h + 1)), np.searchsorted(x0, np.arange(w + 1))
    tables = (y0, fy, x0, fx, down, right, ry, rx)
    for t in tables:
        t.setflags(write=False)  # shared by every request of these sizes
    return tables


PER_PIXEL_BELOW = 9  # output pixels per source cell under which mixed cells are done a pixel at a time (measured)


def _bilinear_argmax(a, b, c, d, wy, wx) -> np.ndarray:
    """The argmax over classes (axis 0) of the scores at corners a (top left), b (top right), c, d (bottom) blended
    with weights wy, wx, in torch's order of operations (upsample_bilinear2d): the two columns of each row, then the
    two rows."""
    top = (1 - wx) * a + wx * b
    bottom = (1 - wx) * c + wx * d
    return ((1 - wy) * top + wy * bottom).argmax(axis=0)


def upsample_scores(probs: np.ndarray, size_wh: tuple[int, int], ids: np.ndarray | None = None) -> np.ndarray:
    """(C, h, w) class scores -> (H, W) uint8: the argmax of the scores upsampled bilinearly to `size_wh`.

    Exact, but computed only where it can differ from the low-resolution argmax: a bilinear value is a
    convex combination of its 4 source pixels, so where those 4 agree on the argmax (`ids`, the model's
    own mask) the upsampled argmax is that class too. The scores are interpolated only in cells where
    they disagree: along class boundaries, a small fraction of the pixels. At the scores' own size the answer is
    `ids` itself (returned, not copied)."""
    c, h, w = probs.shape
    W, H = size_wh
    ids = probs.argmax(axis=0).astype(np.uint8) if ids is None else ids
    if (W, H) == (w, h):
        return ids
    y0, fy, x0, fx, down, right, ry, rx = _grid(h, w, H, W)
    out = ids.take(x0, axis=1).take(y0, axis=0)  # columns first: 6x faster than ids[y0][:, x0] at 1.2 Mpx
    below = ids[down]
    mixed = (ids != below) | (ids != ids[:, right]) | (ids != below[:, right])
    cr, cq = np.nonzero(mixed)
    by, bx = ry[cr + 1] - ry[cr], rx[cq + 1] - rx[cq]
    if H * W < PER_PIXEL_BELOW * h * w:  # small blocks: every pixel of the mixed cells in one go
        n = by * bx
        cell = np.repeat(np.arange(len(n)), n)
        k = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # each pixel's place in its block
        r, q, bxc = cr[cell], cq[cell], bx[cell]
        yy, xx = ry[r] + k // bxc, rx[q] + k % bxc
        rd, qr = down[r], right[q]
        corners = probs[:, r, q], probs[:, r, qr], probs[:, rd, q], probs[:, rd, qr]
        out[yy, xx] = _bilinear_argmax(*corners, fy[yy], fx[xx])
        return out
    # large blocks: a block shape at a time, the 4 corners gathered once per cell, not once per pixel
    for sy, sx in set(zip(by.tolist(), bx.tolist())):
        if not sy or not sx:
            continue
        sel = (by == sy) & (bx == sx)
        r, q = cr[sel], cq[sel]
        rd, qr = down[r], right[q]
        yy, xx = ry[r][:, None] + np.arange(sy), rx[q][:, None] + np.arange(sx)  # (n, sy), (n, sx)
        wy, wx = fy[yy][None, :, :, None], fx[xx][None, :, None, :]
        corners = (probs[:, i, j][:, :, None, None] for i, j in ((r, q), (r, qr), (rd, q), (rd, qr)))  # (C, n, 1, 1)
        out[yy[:, :, None], xx[:, None, :]] = _bilinear_argmax(*corners, wy, wx)
    return out


def resize_mask(mask: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """(h, w) uint8 class ids -> (H, W) uint8 at `size_wh` = (W, H), nearest neighbour (ids never blend)."""
    if (mask.shape[1], mask.shape[0]) == tuple(size_wh):
        return mask
    return np.asarray(Image.fromarray(mask).resize(tuple(size_wh), Image.NEAREST))


def _palette(colours) -> list[int]:
    flat = [int(v) for c in colours for v in c]
    return flat + [0] * (768 - len(flat))


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB or (H, W) uint8 grey -> PNG bytes (zlib level 1)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def palette_png(mask: np.ndarray, colours) -> bytes:
    """(H, W) uint8 class ids -> PNG bytes, mode P: pixel values are class ids, the palette is the class colours."""
    im = Image.frombuffer("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask), "raw", "P", 0, 1)
    im.putpalette(_palette(colours))
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def overlay_png(img: Image.Image, mask: np.ndarray, colours, alpha: float = 0.5) -> bytes:
    """RGB image + (H, W) mask of the same size -> PNG bytes: class colours blended over the photo
    (background, class 0, left as it is)."""
    colour = Image.frombuffer("P", img.size, np.ascontiguousarray(mask), "raw", "P", 0, 1)
    colour.putpalette(_palette(colours))
    blended = Image.blend(img, colour.convert("RGB"), alpha)
    fg = Image.frombuffer("L", img.size, np.ascontiguousarray((mask > 0).astype(np.uint8) * 255), "raw", "L", 0, 1)
    out = Image.composite(blended, img, fg)
    buf = io.BytesIO()
    out.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def rle_encode(binary: np.ndarray) -> dict:
    """COCO-style uncompressed RLE of a (H, W) bool mask: column-major run lengths, starting with a 0-run."""
    flat = np.asarray(binary, dtype=np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(binary.shape[0]), int(binary.shape[1])], "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of rle_encode: (H, W) bool."""
    h, w = rle["size"]
    values = np.zeros(sum(rle["counts"]), dtype=bool)
    pos, val = 0, False
    for c in rle["counts"]:
        values[pos : pos + c] = val
        pos, val = pos + c, not val
    return values.reshape((h, w), order="F")


def class_stats(mask: np.ndarray, classes, rle: bool = False) -> dict:
    """(H, W) class ids -> {"width", "height", "classes": [{"id", "name", "pixels", "fraction"[, "rle"]}]}."""
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    total = int(mask.size)
    out = []
    for i, name in enumerate(classes):
        row = {"id": i, "name": name, "pixels": int(counts[i]), "fraction": float(counts[i] / total) if total else 0.0}
        if rle:
            row["rle"] = rle_encode(mask == i)
        out.append(row)
    return {"width": int(mask.shape[1]), "height": int(mask.shape[0]), "classes": out}
