"""Data set layouts, their validation, and the fastai DataLoaders built from them.

Three layouts are detected from the folder's contents:
1. generic:         images/<stem>.<ext> + masks/<stem>.png (index PNGs 0..C-1), optional codes.txt
2. Leeds Butterfly: images/<id>.png + segmentations/<id>_seg0.png (binary 0/255)
3. CamVid:          images/<stem>.png + labels/<stem>_P.png + codes.txt
Everything is validated before training starts, so a bad file fails in one line that names it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from contract.metadata import IMAGE_EXTENSIONS

from .errors import DataError


@dataclass(frozen=True)
class Dataset:
    """A validated data set: pairs of (image, mask) paths and the class names (index = class id)."""

    root: Path
    layout: str  # "generic" | "leeds" | "camvid"
    pairs: tuple[tuple[Path, Path], ...]
    codes: tuple[str, ...]
    binary_255: bool = False  # Leeds masks hold 0/255 and are read as 0/1

    @property
    def n_classes(self) -> int:
        return len(self.codes)

    @property
    def void(self) -> int | None:
        """Index of the class named "Void" (any case): unlabelled pixels, ignored by the loss and the metrics."""
        return next((i for i, c in enumerate(self.codes) if c.lower() == "void"), None)

    def image_size(self) -> tuple[int, int]:
        """(H, W) of the first image (CamVid-style data sets have one size)."""
        with Image.open(self.pairs[0][0]) as im:
            return im.size[1], im.size[0]


def list_images(folder: Path) -> list[Path]:
    """The image files of `folder` (by extension, hidden files left out), sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _read_codes(path: Path) -> tuple[str, ...]:
    codes = tuple(line.split()[0] if line.split() else "" for line in path.read_text().splitlines())
    codes = tuple(c for c in codes if c)
    if not codes:
        raise DataError(f"{path}: codes.txt is empty; write one class name per line, background first")
    return codes


def detect_layout(root: Path) -> str:
    """Name the layout of `root` ("generic", "leeds" or "camvid") or raise DataError saying what is expected."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder; pass --data a folder holding images/ and masks/ (or segmentations/, labels/)"
        )
    if not (root / "images").is_dir():
        raise DataError(
            f"{root}: no images/ folder; expected images/ with masks/ (generic), segmentations/ (Leeds Butterfly) or "
            "labels/ (CamVid)"
        )
    if (root / "masks").is_dir():
        return "generic"
    if (root / "segmentations").is_dir():
        return "leeds"
    if (root / "labels").is_dir():
        return "camvid"
    raise DataError(
        f"{root}: images/ has no partner folder; add masks/ (generic), segmentations/ (Leeds Butterfly) or labels/ "
        "(CamVid)"
    )


def _mask_for(layout: str, root: Path, image: Path) -> Path:
    if layout == "generic":
        return root / "masks" / f"{image.stem}.png"
    if layout == "leeds":
        return root / "segmentations" / f"{image.stem}_seg0.png"
    return root / "labels" / f"{image.stem}_P.png"


def read_mask(path: Path, binary_255: bool = False) -> np.ndarray:
    """Read a mask PNG as (H, W) uint8 class ids; 0/255 binary masks become 0/1 when `binary_255`."""
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "1", "I", "I;16"):
            raise DataError(
                f"{path}: mask has mode {im.mode}; masks must be single-channel index PNGs (convert colour masks with "
                "`python -m training masks`)"
            )
        arr = np.asarray(im)
    if binary_255:
        arr = (arr > 127).astype(np.uint8)
    return arr.astype(np.uint8) if arr.max(initial=0) < 256 else arr


def load_dataset(root: Path, codes: tuple[str, ...] | None = None, check: bool = True) -> Dataset:
    """Detect the layout of `root`, pair every image with its mask and validate them all.

    Raises DataError (one line naming the file) for: an empty images/ folder, an image without its mask,
    an image and mask of different sizes, a mask value >= the number of classes.
    """
    root = Path(root)
    layout = detect_layout(root)
    images = list_images(root / "images")
    if not images:
        raise DataError(
            f"{root / 'images'}: folder is empty; add images ({', '.join(IMAGE_EXTENSIONS)}) with a mask each"
        )
    binary = layout == "leeds"
    if codes is None:
        if (root / "codes.txt").is_file():
            codes = _read_codes(root / "codes.txt")
        elif layout == "camvid":
            raise DataError(f"{root}: CamVid layout needs codes.txt (one class name per line)")
        elif binary:
            codes = ("background", "butterfly")
        else:
            codes = None  # inferred from the largest mask value below
    pairs = []
    max_id = 0
    for image in images:
        mask = _mask_for(layout, root, image)
        if not mask.is_file():
            raise DataError(f"{image}: no mask for this image; expected {mask}")
        pairs.append((image, mask))
        if not check:
            continue
        with Image.open(image) as im:
            isize = im.size
        m = read_mask(mask, binary)
        if (m.shape[1], m.shape[0]) != isize:
            raise DataError(
                f"{mask}: mask is {m.shape[1]}x{m.shape[0]} but its image {image.name} is {isize[0]}x{isize[1]}; "
                "masks must match their image's size"
            )
        top = int(m.max(initial=0))
        if codes is not None and top >= len(codes):
            raise DataError(
                f"{mask}: mask value {top} but only {len(codes)} classes ({', '.join(codes)}); fix the mask or add "
                "classes to codes.txt"
            )
        max_id = max(max_id, top)
    if codes is None:
        codes = ("background",) + tuple(f"class_{i}" for i in range(1, max(max_id, 1) + 1))
    return Dataset(root=root, layout=layout, pairs=tuple(pairs), codes=tuple(codes), binary_255=binary)


def split_pairs(ds: Dataset, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/valid index split (the validation images are held out from training)."""
    n = len(ds.pairs)
    idx = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(n * valid_pct))) if n > 1 else 0
    return sorted(idx[n_valid:].tolist()), sorted(idx[:n_valid].tolist())


def class_frequencies(ds: Dataset, indices) -> np.ndarray:
    """SegNet's class frequency over the images `indices`: pixels of class c / pixels of the images where c
    appears (0 for a class that never appears). (C,) float64."""
    pixels, present = np.zeros(ds.n_classes), np.zeros(ds.n_classes)
    for i in indices:
        m = read_mask(ds.pairs[i][1], ds.binary_255)
        counts = np.bincount(m.ravel(), minlength=ds.n_classes)[: ds.n_classes]
        pixels += counts
        present += (counts > 0) * m.size
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present > 0, pixels / present, 0.0)


def median_frequency_weights(freq: np.ndarray, void: int | None = None) -> np.ndarray:
    """Median-frequency balancing (SegNet, for CamVid): weight = median class frequency / class frequency,
    over the classes that appear, Void excluded (weight 0: the loss ignores it anyway); absent classes 1."""
    scored = [c for c in range(len(freq)) if c != void and freq[c] > 0]
    med = float(np.median(freq[scored])) if scored else 1.0
    w = np.ones(len(freq))
    for c in scored:
        w[c] = med / freq[c]
    if void is not None:
        w[void] = 0.0
    return w


def class_centred_corner(mask: np.ndarray, crop_hw: tuple[int, int], void: int | None = None, rng=random):
    """(left, top) of a `crop_hw` window inside `mask` centred, as far as the borders allow, on a random pixel
    of a class drawn evenly from the classes present (Void excluded), in fastai's crop corner convention;
    None when only Void is present (the crop stays where fastai's RandomCrop put it)."""
    from fastcore.basics import fastuple

    present = [int(c) for c in np.unique(mask) if c != void]
    if not present:
        return None
    H, W = mask.shape
    ch, cw = crop_hw
    ys, xs = np.nonzero(mask == rng.choice(present))
    i = rng.randrange(len(ys))
    left = min(max(0, int(xs[i]) - cw // 2), max(0, W - cw))
    top = min(max(0, int(ys[i]) - ch // 2), max(0, H - ch))
    return fastuple(left, top)


def make_dataloaders(
    ds: Dataset,
    *,
    size: tuple[int, int],
    crop: tuple[int, int] | None = None,
    bs: int,
    mean,
    std,
    valid_pct: float,
    seed: int,
    augment: str = "affine",
    num_workers: int = 0,
    class_crops: float = 0.0,
    field=None,
):
    """fastai DataLoaders: squish-resize to `size` (H, W; PIL bilinear, as serving resizes to the training
    scale), then for training a random `crop` (H, W) at that scale if given (validation sees whole images),
    `augment` ("affine": flips, rotation, zoom, warp and lighting; "flip": flips only; "field": flips and
    `field`, a batch transform (training.augment.FieldShifts: camera shifts on a share of the images); "none"),
    explicit Normalize.
    `class_crops`: the share of training crops centred on a pixel of a class drawn evenly from those in the
    image, Void excluded (nnU-Net's foreground oversampling, which centres a third of its patches so); the
    rest fall anywhere, as fastai's RandomCrop.

    Normalisation is set here from the encoder's own stats, never as a side effect of `pretrained=`.
    """
    from fastai.data.block import DataBlock
    from fastai.data.transforms import IndexSplitter, Normalize
    from fastai.vision.augment import Flip, RandomCrop, Resize, ResizeMethod, aug_transforms
    from fastai.vision.core import PILMask
    from fastai.vision.data import ImageBlock, MaskBlock

    if augment == "field" and field is None:
        raise ValueError("augment='field' needs `field`, a batch transform (training.augment.FieldShifts)")
    _, valid_idx = split_pairs(ds, valid_pct, seed)
    mask_of = dict(ds.pairs)
    binary = ds.binary_255

    def get_y(image_path):
        return PILMask.create(read_mask(mask_of[Path(image_path)], binary))

    class TrainCrop(RandomCrop):
        split_idx = 0  # training set only: validation keeps the whole image at the training scale

        def before_call(self, b, split_idx):
            super().before_call(b, split_idx)
            # fastai calls before_call on every split (and on test_dl's image-only items): place training crops only
            if class_crops and split_idx == 0 and len(b) > 1 and random.random() < class_crops:
                self.tl = class_centred_corner(np.asarray(b[1]), (self.size[1], self.size[0]), ds.void) or self.tl

    batch_tfms = {
        "affine": lambda: [*aug_transforms(max_rotate=15.0, max_zoom=1.1, max_warp=0.1, max_lighting=0.2)],
        "flip": lambda: [Flip()],
        "field": lambda: [Flip(), field],
        "none": list,
    }[augment]()
    batch_tfms.append(Normalize.from_stats(list(mean), list(std)))
    item_tfms = [Resize(tuple(size), method=ResizeMethod.Squish)] + ([TrainCrop(tuple(crop))] if crop else [])
    block = DataBlock(
        blocks=(ImageBlock, MaskBlock(list(ds.codes))),
        get_items=lambda _: [p for p, _ in ds.pairs],
        get_y=get_y,
        splitter=IndexSplitter(valid_idx),
        item_tfms=item_tfms,
        batch_tfms=batch_tfms,
    )
    return block.dataloaders(ds.root, bs=bs, num_workers=num_workers)
