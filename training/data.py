"""The data a fit reads: the data set (contract.datasets: layouts, pairs, validation), its train/validation split,
class frequencies, and the fastai DataLoaders built from it."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from contract.datasets import Dataset, list_images, load_dataset, read_mask, with_validation

__all__ = [
    "Dataset",
    "class_frequencies",
    "fit_dataset",
    "list_images",
    "load_dataset",
    "make_dataloaders",
    "median_frequency_weights",
    "read_mask",
    "split_pairs",
]


def fit_dataset(data: Path, valid: Path | None = None) -> Dataset:
    """The data set `fit` trains on: `data` (a SegNet folder: train/, with val/ as the validation set; test/ is
    never read), with `valid`'s images as the validation set instead when given (any layout; a SegNet folder: its
    val/)."""
    ds = load_dataset(data)
    return ds if valid is None else with_validation(ds, load_dataset(valid, split="val"))


def split_pairs(ds: Dataset, valid_pct: float, seed: int) -> tuple[list[int], list[int]]:
    """Train/valid indices: the data set's own validation set where it has one (SegNet's val/, `fit --valid`),
    else a deterministic random share `valid_pct` held out from training."""
    n = len(ds.pairs)
    if ds.valid_from is not None:
        return list(range(ds.valid_from)), list(range(ds.valid_from, n))
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
    zoom: tuple[float, float] | None = None,
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
    `zoom` (LO, HI): each training crop taken from a region of the image zoomed by a factor drawn in [LO, HI] (1:
    the training scale; fastai's RandomResizedCrop, the crop's aspect kept): the scale jitter of segmentation recipes.

    Normalisation is set here from the encoder's own stats, never as a side effect of `pretrained=`.
    """
    from fastai.data.block import DataBlock
    from fastai.data.transforms import IndexSplitter
    from fastai.vision.core import PILMask
    from fastai.vision.data import ImageBlock, MaskBlock

    if augment == "field" and field is None:
        raise ValueError("augment='field' needs `field`, a batch transform (training.augment.FieldShifts)")
    _, valid_idx = split_pairs(ds, valid_pct, seed)
    mask_of = dict(ds.pairs)
    binary = ds.binary_255

    def get_y(image_path):
        return PILMask.create(read_mask(mask_of[Path(image_path)], binary))

    block = DataBlock(
        blocks=(ImageBlock, MaskBlock(list(ds.codes))),
        get_items=lambda _: [p for p, _ in ds.pairs],
        get_y=get_y,
        splitter=IndexSplitter(valid_idx),
        item_tfms=_item_tfms(ds, size, crop, class_crops, zoom),
        batch_tfms=_batch_tfms(augment, field, mean, std),
    )
    return block.dataloaders(ds.root, bs=bs, num_workers=num_workers)


def _item_tfms(ds: Dataset, size, crop, class_crops: float, zoom) -> list:
    """Squish to the training scale; then for training only, a random crop (placed on a class for a share
    `class_crops`), or one from a region zoomed in [LO, HI] with `zoom`."""
    from fastai.vision.augment import RandomCrop, RandomResizedCrop, Resize, ResizeMethod

    class TrainCrop(RandomCrop):
        split_idx = 0  # training set only: validation keeps the whole image at the training scale

        def before_call(self, b, split_idx):
            super().before_call(b, split_idx)
            # fastai calls before_call on every split (and on test_dl's image-only items): place training crops only
            if class_crops and split_idx == 0 and len(b) > 1 and random.random() < class_crops:
                self.tl = class_centred_corner(np.asarray(b[1]), (self.size[1], self.size[0]), ds.void) or self.tl

    class TrainZoomCrop(RandomResizedCrop):
        split_idx = 0  # training only, as TrainCrop

    resize = [Resize(tuple(size), method=ResizeMethod.Squish)]
    if not crop:
        return resize
    if not zoom:
        return resize + [TrainCrop(tuple(crop))]
    share = crop[0] * crop[1] / (size[0] * size[1])  # the crop's share of the image at the training scale
    aspect = crop[1] / crop[0]
    lo, hi = share / zoom[1] ** 2, min(1.0, share / zoom[0] ** 2)
    return resize + [TrainZoomCrop(tuple(crop), min_scale=lo, max_scale=hi, ratio=(aspect, aspect))]


def _batch_tfms(augment: str, field, mean, std) -> list:
    """The augmentation of the training batches, then Normalize with the encoder's statistics."""
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import Flip, aug_transforms

    tfms = {
        "affine": lambda: [*aug_transforms(max_rotate=15.0, max_zoom=1.1, max_warp=0.1, max_lighting=0.2)],
        "flip": lambda: [Flip()],
        "field": lambda: [Flip(), field],
        "none": list,
    }[augment]()
    return tfms + [Normalize.from_stats(list(mean), list(std))]
