"""Masks from annotation tools: COCO (polygons and RLE, as CVAT, Label Studio and COCO Annotator export)
and LabelMe JSON, written as the generic layout fit reads (images/, masks/ index PNGs, codes.txt).

    python -m training masks --coco annotations.json --images DIR --out DATA
    python -m training masks --labelme DIR --out DATA

Class 0 is background (pixels no shape covers); the other ids follow the COCO categories in order of
their id, or the LabelMe labels in alphabetical order. Where shapes overlap, the later one in the file
wins (COCO: annotation order; LabelMe: shape order), as LabelMe's own export does. Every problem is a
one-line DataError naming the file (a missing image, an unknown category, a polygon outside the image,
a malformed file), and nothing is written unless every image converted: the data set is assembled in a
temporary folder beside `out` and moved into place at the end.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import DataError

_TOLERANCE = 1.0  # px a vertex may lie outside the image (annotation tools round to the border)


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: cannot read it ({exc.__class__.__name__}); pass an annotation file exported as JSON"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}); re-export the annotations") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object at the top level; re-export the annotations")
    return data


def _check_inside(points: np.ndarray, w: int, h: int, where: str) -> None:
    """Vertices (N, 2) as (x, y) must lie inside the image (within _TOLERANCE)."""
    if points.size and (
        points[:, 0].min() < -_TOLERANCE
        or points[:, 1].min() < -_TOLERANCE
        or points[:, 0].max() > w + _TOLERANCE
        or points[:, 1].max() > h + _TOLERANCE
    ):
        x, y = points[np.argmax(np.maximum(np.abs(points[:, 0] - w / 2) - w / 2, np.abs(points[:, 1] - h / 2) - h / 2))]
        raise DataError(
            f"{where}: a polygon vertex ({x:g}, {y:g}) lies outside the {w}x{h} image; fix the annotation or its "
            "image size"
        )


class _Writer:
    """Builds the data set in a temporary folder beside `out`; `commit()` moves it into place."""

    def __init__(self, out: Path):
        self.out = Path(out)
        if self.out.exists() and any(self.out.iterdir()):
            raise DataError(f"{self.out}: exists and is not empty; pass a new --out so nothing is overwritten")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".masks-", dir=self.out.parent))
        (self.tmp / "images").mkdir()
        (self.tmp / "masks").mkdir()

    def add(self, stem: str, image_bytes: bytes, suffix: str, mask: np.ndarray) -> None:
        (self.tmp / "images" / f"{stem}{suffix}").write_bytes(image_bytes)
        Image.fromarray(mask).save(self.tmp / "masks" / f"{stem}.png")

    def commit(self, codes: list[str]) -> Path:
        (self.tmp / "codes.txt").write_text("\n".join(codes) + "\n")
        if self.out.exists():
            self.out.rmdir()
        self.tmp.rename(self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def coco_to_masks(annotations: Path, images: Path, out: Path) -> tuple[int, list[str]]:
    """COCO instances JSON (+ its image folder) -> the generic layout in `out`. Returns (images, codes)."""
    annotations, images = Path(annotations), Path(images)
    ids, codes, files, per_image = _coco_index(annotations)
    writer = _Writer(out)
    try:
        for image_id, (name, w, h) in files.items():
            path = images / name
            if not path.is_file():
                raise DataError(
                    f"{path}: image of {annotations} (image id {image_id}) not found; pass --images the folder "
                    "holding it"
                )
            with Image.open(path) as im:
                if im.size != (w, h):
                    raise DataError(
                        f"{path}: is {im.size[0]}x{im.size[1]} but {annotations} says {w}x{h}; re-export the "
                        "annotations"
                    )
            mask = np.zeros((h, w), np.uint8)
            for ann in per_image[image_id]:
                where = f"{annotations}: annotation {ann.get('id')} of {name}"
                mask[_coco_region(ann.get("segmentation"), w, h, where)] = ids[ann["category_id"]]
            writer.add(Path(name).stem, path.read_bytes(), path.suffix, mask)
        writer.commit(codes)
        return len(files), codes
    except BaseException:
        writer.abort()
        raise


def _coco_index(annotations: Path):
    """The COCO file read and checked: (category id -> class id, codes, image id -> (file name, w, h), image id -> its
    annotations)."""
    data = _load_json(annotations)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(
                f"{annotations}: no `{key}` list; expected a COCO instances file (images, annotations, categories)"
            )
    try:
        cats = sorted(data["categories"], key=lambda c: c["id"])
        ids = {c["id"]: i + 1 for i, c in enumerate(cats)}
        codes = ["background"] + [str(c["name"]) for c in cats]
        files = {im["id"]: (str(im["file_name"]), int(im["width"]), int(im["height"])) for im in data["images"]}
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{annotations}: a category or image entry lacks {exc}; expected id/name and id/file_name/width/height"
        ) from None
    per_image: dict = {k: [] for k in files}
    for n, ann in enumerate(data["annotations"]):
        where = f"{annotations}: annotation {ann.get('id', n)}"
        if ann.get("image_id") not in files:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in `images`")
        if ann.get("category_id") not in ids:
            known = ", ".join(f"{c['id']}={c['name']}" for c in cats)
            raise DataError(f"{where}: unknown category_id {ann.get('category_id')!r} (categories: {known})")
        per_image[ann["image_id"]].append(ann)
    return ids, codes, files, per_image


def _coco_region(segm, w: int, h: int, where: str) -> np.ndarray:
    """One annotation's segmentation (polygons, or RLE compressed or not) -> (h, w) bool, pycocotools decoding it."""
    from pycocotools import mask as cocomask

    if isinstance(segm, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        if not segm or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm):
            raise DataError(f"{where}: a polygon needs at least 3 (x, y) points")
        for p in segm:
            _check_inside(np.asarray(p, float).reshape(-1, 2), w, h, where)
        rle = cocomask.merge(cocomask.frPyObjects(segm, h, w))
    elif isinstance(segm, dict) and "counts" in segm and "size" in segm:  # RLE, compressed or not
        if list(segm["size"]) != [h, w]:
            raise DataError(f"{where}: RLE size {segm['size']} is not the image's {h}x{w}")
        rle = cocomask.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else segm
    else:
        raise DataError(f"{where}: segmentation is neither polygons nor RLE")
    return cocomask.decode(rle).astype(bool)


def _labelme_shape(shape: dict, w: int, h: int, where: str) -> Image.Image:
    """One LabelMe shape as an 'L' mask image (255 inside)."""
    pts = np.asarray(shape.get("points") or [], float).reshape(-1, 2)
    kind = shape.get("shape_type") or "polygon"
    _check_inside(pts, w, h, where)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    flat = [tuple(p) for p in pts]
    if kind == "polygon" and len(flat) >= 3:
        draw.polygon(flat, fill=255)
    elif kind == "rectangle" and len(flat) == 2:
        (x0, y0), (x1, y1) = flat
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
    elif kind == "circle" and len(flat) == 2:
        (cx, cy), (px, py) = flat
        r = float(np.hypot(px - cx, py - cy))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif kind in ("line", "linestrip") and len(flat) >= 2:
        draw.line(flat, fill=255, width=1)
    elif kind == "point" and len(flat) == 1:
        draw.point(flat, fill=255)
    else:
        raise DataError(
            f"{where}: shape {kind!r} with {len(flat)} point(s) cannot be drawn (polygon: >= 3, rectangle/circle: 2)"
        )
    return canvas


def labelme_to_masks(folder: Path, out: Path) -> tuple[int, list[str]]:
    """A folder of LabelMe JSON files (images beside them, or embedded as imageData) -> the generic layout. The
    classes: a codes.txt in the folder or its parent (the service's capture folder has one: the model's classes, in
    its order), else background then the labels in alphabetical order."""
    folder = Path(folder)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no LabelMe .json files")
    docs = [(f, _load_json(f)) for f in files]
    labels = sorted(
        {str(s.get("label", "")) for f, d in docs for s in (d.get("shapes") or [])} - {"_background_", "background", ""}
    )
    codes = ["background"] + labels
    known = next((p for p in (folder / "codes.txt", folder.parent / "codes.txt") if p.is_file()), None)
    if known is not None:  # a model's classes in its order (a capture folder): keep them, so ids stay the model's
        given = [ln.split()[0] for ln in known.read_text().splitlines() if ln.split()]
        unknown = sorted(set(labels) - set(given))
        if unknown:
            raise DataError(f"{folder}: labels {', '.join(unknown)} are not in {known}; add them there or rename them")
        codes = given
    ids = {c: i for i, c in enumerate(codes)} | {"_background_": 0}
    writer = _Writer(out)
    try:
        for f, doc in docs:
            if not isinstance(doc.get("shapes"), list):
                raise DataError(f"{f}: no `shapes` list; expected a LabelMe file")
            image_bytes, suffix = _labelme_image(f, doc)
            with Image.open(io.BytesIO(image_bytes)) as im:
                w, h = im.size
            if (doc.get("imageWidth") or w, doc.get("imageHeight") or h) != (w, h):
                raise DataError(f"{f}: says {doc.get('imageWidth')}x{doc.get('imageHeight')} but its image is {w}x{h}")
            mask = np.zeros((h, w), np.uint8)
            for n, shape in enumerate(doc["shapes"]):
                label = str(shape.get("label", ""))
                if not label:
                    raise DataError(f"{f}: shape {n} has no label")
                mask[np.asarray(_labelme_shape(shape, w, h, f"{f}: shape {n} ({label})")) > 0] = ids.get(label, 0)
            writer.add(f.stem, image_bytes, suffix, mask)
        writer.commit(codes)
        return len(docs), codes
    except BaseException:
        writer.abort()
        raise


def _labelme_image(f: Path, doc: dict) -> tuple[bytes, str]:
    """The image of a LabelMe file: the file at imagePath (relative to the JSON), else imageData."""
    rel = doc.get("imagePath")
    if rel and (f.parent / rel).is_file():
        p = f.parent / rel
        return p.read_bytes(), p.suffix
    if doc.get("imageData"):
        try:
            data = base64.b64decode(doc["imageData"])
            with Image.open(io.BytesIO(data)) as im:
                return data, "." + (im.format or "png").lower().replace("jpeg", "jpg")
        except Exception:
            raise DataError(f"{f}: imageData is not a base64-encoded image") from None
    raise DataError(f"{f}: image {rel!r} not found beside it and no imageData; put the image next to the JSON file")
