"""Fit a fastai U-Net with transfer learning, as the workshop teaches it.

1. encoder frozen (ImageNet weights), the decoder ("head") trained with `fit_one_cycle`;
2. encoder unfrozen, everything trained with discriminative learning rates `slice(lo, hi)`.

Images are squished to `size` (H, W; the training scale), and trained whole or as random `crop`s at
that scale (validation always sees whole images). The schedule is a budget of optimiser steps, turned
into epochs for the data set's size; the best epoch on the validation Dice is kept. Rare classes get a
median-frequency weighted loss when classes are unbalanced; a Void class is ignored by the loss and the
metrics. The final metrics and results.png are computed at each validation image's own resolution, the
way the service serves it: resized to the training scale keeping the aspect, run, scores upsampled.

The run folder keeps what export needs to rebuild the learner: config.json and model.pth (a state_dict,
no pickle), plus report.json, results.png and curves.png for people to look at.
"""
from __future__ import annotations

import json
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from serving.accuracy import confusion, metrics_from_confusion, scored_classes  # noqa: F401  (training reports the served metrics)

from .data import Dataset, class_frequencies, load_dataset, make_dataloaders, median_frequency_weights, read_mask, split_pairs
from .errors import TrainingError
from .model import DECODER_NORMS, ENCODERS, build_learner

# One colour per class for plots, palette PNGs and the exported metadata (background black).
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
           (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]


def class_colours(n: int) -> list[list[int]]:
    """`n` distinct RGB colours, background first; beyond the palette, deterministic pseudo-random ones."""
    rng = np.random.default_rng(12345)
    return [list(PALETTE[i]) if i < len(PALETTE) else rng.integers(0, 256, 3).tolist() for i in range(n)]


def _hw(value) -> tuple[int, int] | None:
    """An int (square), a (H, W) pair or "HxW" -> (H, W); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace("x", " ").split()
        value = [int(p) for p in parts]
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    return value * 2 if len(value) == 1 else value


AUGMENT = ("flip", "affine", "none", "auto")
LOSSES = ("auto", "ce", "ce+dice", "ce+lovasz")
CLASS_WEIGHTS = ("auto", "on", "sqrt", "off")
# each phase's fastai schedule and its arguments (frozen, unfrozen): one-cycle: fit_one_cycle with fastai's defaults
# (warm-up over 25 %, from lr/25); fine-tune: the shape of fastai's Learner.fine_tune (frozen: warm-up over 99 %;
# unfrozen: over 30 %, from lr/5); flat-cos: fit_flat_cos (the rate flat for 75 %, then cosine down; fastai's partner of ranger)
SCHEDULES = {"one-cycle": ("fit_one_cycle", {}, {}), "fine-tune": ("fit_one_cycle", {"pct_start": 0.99}, {"pct_start": 0.3, "div": 5.0}),
             "flat-cos": ("fit_flat_cos", {}, {})}
OPTIMIZERS = ("adam", "ranger")  # fastai's Adam (its default) or ranger (RAdam + Lookahead)
PRECISIONS = ("auto", "fp32", "bf16")
# the default batch size: 4 on random crops (benchmarks.camvid rows G and Q over 5 seeds: mean IoU and Pole up on
# every seed, the same time), 8 on whole images (the demo's recipe, measured over 5 seeds at 8)
CROP_BS, WHOLE_BS = 4, 8
BUDGET_IMAGES = 3600  # the default budget in images seen, whatever the batch: 450 steps of 8 (the demo), 900 of 4
IMBALANCE_RATIO = 10.0  # class_weights="auto" turns median-frequency weights on above this max/min class frequency


@dataclass
class TrainConfig:
    data: Path
    out: Path
    encoder: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: Path | None = None
    allow_random: bool = False
    size: tuple[int, int] | None = None  # (H, W) training scale; None: 128x128, or the CamVid data's aspect at 128 px high
    crop: tuple[int, int] | None = None  # (H, W) random crops at the training scale (whole images when None)
    class_crops: float = 0.0  # share of random crops centred on a pixel of a class drawn evenly from those present (Void excluded)
    progressive: bool = False  # fastai's progressive resizing: the frozen phase at half size, then full size
    bs: int | None = None  # None: CROP_BS on random crops, WHOLE_BS on whole images
    valid_pct: float = 0.2
    seed: int = 42
    steps: int | None = None  # optimiser steps in all; epochs follow the data set's size (20 % frozen); None: BUDGET_IMAGES / bs
    frozen_epochs: int | None = None  # explicit epochs override the step budget
    unfrozen_epochs: int | None = None
    lr: float = 4e-3  # head learning rate (frozen phase)
    lr_unfrozen: tuple[float, float] = (2e-4, 2e-3)  # slice(lo, hi) for the unfrozen phase
    class_weights: str = "auto"  # median-frequency weighted loss: auto (when unbalanced), on, sqrt (their square roots), off
    loss: str = "auto"  # auto: ce+dice on random crops, ce on whole images; ce: cross-entropy; ce+dice: plus a soft Dice term (Void left out)
    schedule_shape: str = "one-cycle"  # see SCHEDULES
    opt: str = "adam"  # see OPTIMIZERS
    decoder_norm: str = "batch"  # BatchNorm after the U-Net decoder's convolutions ("none": fastai's U-Net without it); see build_learner
    bn_momentum: float | None = None  # every BatchNorm layer's running-statistics momentum; None: each layer's own (EfficientNet-Lite0's encoder 0.01, fastai's decoder 0.1)
    precision: str = "auto"  # auto: bf16 autocast where the training device computes bf16 natively (AMX/AVX-512 BF16 CPUs, bf16 GPUs), else fp32
    channels_last: bool = True  # the model in channels-last memory format while training (oneDNN's fast layout)
    keep_best: bool = True  # keep the epoch with the best validation Dice (fastai SaveModelCallback)
    augment: str = "flip"  # flip | affine (+ rotation, zoom, warp, lighting) | none; "auto" (older commands and run folders) = flip
    lr_find: bool = False
    lr_find_iters: int = 100
    last_cross: bool = True
    n_show: int = 4
    threads: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.data, self.out = Path(self.data), Path(self.out)
        self.weights = Path(self.weights) if self.weights else None
        try:
            self.size, self.crop = _hw(self.size), _hw(self.crop)
        except ValueError:
            raise TrainingError(f"--size/--crop: give H W, HxW or one number (got {self.size!r}, {self.crop!r})") from None
        for name, hw in (("--size", self.size), ("--crop", self.crop)):
            if hw is not None and (len(hw) != 2 or min(hw) < 32):
                raise TrainingError(f"{name} {hw}: give height and width, each at least 32 px")
        if self.crop and self.size and (self.crop[0] > self.size[0] or self.crop[1] > self.size[1]):
            raise TrainingError(f"--crop {self.crop[0]}x{self.crop[1]} is larger than --size {self.size[0]}x{self.size[1]}; crops are taken at the training scale")
        if self.bs is None:
            self.bs = CROP_BS if self.crop else WHOLE_BS
        if self.bs < 1:
            raise TrainingError(f"--bs {self.bs}: must be >= 1")
        if self.steps is None:
            self.steps = max(1, round(BUDGET_IMAGES / self.bs))
        if self.encoder not in ENCODERS:
            raise TrainingError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if isinstance(self.augment, bool):  # run folders written before augment had levels
            self.augment = "affine" if self.augment else "none"
        if self.augment not in AUGMENT:
            raise TrainingError(f"--augment {self.augment!r}: use {', '.join(AUGMENT)}")
        if self.loss not in LOSSES:
            raise TrainingError(f"--loss {self.loss!r}: use {', '.join(LOSSES)}")
        if self.schedule_shape not in SCHEDULES:
            raise TrainingError(f"--schedule {self.schedule_shape!r}: use {', '.join(SCHEDULES)}")
        if self.opt not in OPTIMIZERS:
            raise TrainingError(f"--opt {self.opt!r}: use {', '.join(OPTIMIZERS)}")
        if self.class_weights not in CLASS_WEIGHTS:
            raise TrainingError(f"--class-weights {self.class_weights!r}: use {', '.join(CLASS_WEIGHTS)}")
        if self.steps < 1:
            raise TrainingError(f"--steps {self.steps}: must be >= 1")
        if not 0 <= self.class_crops <= 1:
            raise TrainingError(f"--class-crops {self.class_crops}: use a share in [0, 1], e.g. 0.33")
        if self.class_crops and not self.crop:
            raise TrainingError("--class-crops places random crops: give --crop H W as well")
        if self.decoder_norm not in DECODER_NORMS:
            raise TrainingError(f"--decoder-norm {self.decoder_norm!r}: use {', '.join(DECODER_NORMS)}")
        if self.precision not in PRECISIONS:
            raise TrainingError(f"--precision {self.precision!r}: use {', '.join(PRECISIONS)}")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise TrainingError(f"--bn-momentum {self.bn_momentum}: use a number in (0, 1], e.g. 0.1 (PyTorch's default)")
        self.lr_unfrozen = tuple(self.lr_unfrozen)

    def resolved_size(self, ds: Dataset) -> tuple[int, int]:
        """The training scale: --size, else 128x128 (generic, Leeds) or the CamVid data's aspect at 128 px high."""
        if self.size:
            return self.size
        if ds.layout == "camvid":
            h, w = ds.image_size()
            return 128, max(32, round(128 * w / h))
        return 128, 128

    def resolved_augment(self) -> str:
        """The augmentation used; "auto" (the default of earlier versions: flips on crops, affine on whole images)
        now means flips only, which measured better both ways: on CamVid-layout crops (benchmarks.camvid rows D
        and F: poles +0.08) and on the demo's whole images (benchmarks.demo_seeds, 5 seeds: Dice 0.960 against 0.954)."""
        return "flip" if self.augment == "auto" else self.augment

    def resolved_loss(self) -> str:
        """auto: cross-entropy + soft Dice when training on random crops (thin and rare classes: measured on
        CamVid-layout scenes, benchmarks.camvid rows F and G), cross-entropy on whole images."""
        if self.loss != "auto":
            return self.loss
        return "ce+dice" if self.crop else "ce"

    def schedule(self, n_train: int) -> tuple[int, int]:
        """(frozen, unfrozen) epochs: explicit ones, else the step budget over this many training images
        (at least 2 epochs, a fifth of them frozen)."""
        if self.frozen_epochs is not None or self.unfrozen_epochs is not None:
            return self.frozen_epochs or 0, self.unfrozen_epochs or 0
        per_epoch = max(1, math.ceil(n_train / self.bs))
        total = max(2, round(self.steps / per_epoch))
        frozen = max(1, round(total * 0.2))
        return frozen, total - frozen

    def to_json(self) -> dict:
        d = asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        d["weights"] = str(self.weights) if self.weights else None
        d["size"], d["crop"] = (list(self.size) if self.size else None), (list(self.crop) if self.crop else None)
        return d


def versions() -> dict:
    import fastai
    import torch

    return {"fastai": fastai.__version__, "torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__}


def _fastai_metrics(codes, void: int | None = None):
    """Metrics shown in fastai's progress table: pixel accuracy and Dice over the scored classes (Void left out)."""
    import torch
    from fastai.learner import Metric

    n_classes = len(codes)

    def pairs(learn):
        pred, y = learn.pred.argmax(dim=1).flatten().cpu(), learn.y.flatten().long().cpu()
        if void is not None:
            keep = y != void
            pred, y = pred[keep], y[keep]
        return pred, y

    class PixelAccuracy(Metric):
        name = "pixel_acc"

        def reset(self):
            self.hit, self.total = 0, 0

        def accumulate(self, learn):
            pred, y = pairs(learn)
            self.hit += int((pred == y).sum())
            self.total += y.numel()

        @property
        def value(self):
            return self.hit / max(self.total, 1)

    class ForegroundDice(Metric):
        name = "dice_fg"

        def reset(self):
            self.cm = torch.zeros(n_classes, n_classes, dtype=torch.long)

        def accumulate(self, learn):
            pred, y = pairs(learn)
            self.cm += torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)

        @property
        def value(self):
            return metrics_from_confusion(self.cm.numpy(), list(codes), void)["dice_fg"]

    return [PixelAccuracy(), ForegroundDice()]


def _history(learn, phase: str, start_epoch: int) -> list[dict]:
    names = [n for n in learn.recorder.metric_names[1:-1]]  # drop "epoch" and "time"
    rows = []
    for i, vals in enumerate(learn.recorder.values):
        row = {"epoch": start_epoch + i, "phase": phase}
        row.update({n: (float(v) if v is not None else None) for n, v in zip(names, vals)})
        rows.append(row)
    return rows


def predict_native(model, image: np.ndarray, size: tuple[int, int], mean, std) -> np.ndarray:
    """The served path in PyTorch: (H, W, 3) uint8 at its own resolution -> (H, W) class ids. Resized to
    the training scale keeping the aspect (short side to the training short side, PIL bilinear), padded
    to a multiple of 32 by reflection, run, cropped, probabilities upsampled bilinearly, argmax."""
    import torch
    import torch.nn.functional as F

    from serving.pipeline import ceil32, pad_reflect, scaled_hw

    H, W = image.shape[:2]
    h, w = scaled_hw(size, (W, H))
    x = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    x = pad_reflect(x, ceil32(h), ceil32(w))
    t = torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float() / 255.0
    t = (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        probs = torch.softmax(model(t).float(), dim=1)[:, :, :h, :w]
        return F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False)[0].argmax(0).numpy().astype(np.uint8)


def evaluate(learn, ds: Dataset, valid_idx, size: tuple[int, int], mean, std) -> tuple[dict, list]:
    """Metrics on the held-out images at their own resolution, through `predict_native`; returns the
    metrics and (image, truth, prediction) for the first few."""
    model = learn.model.eval()
    cm = np.zeros((ds.n_classes, ds.n_classes), np.int64)
    shown = []
    for i in valid_idx:
        image_path, mask_path = ds.pairs[i]
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        truth = read_mask(mask_path, ds.binary_255)
        pred = predict_native(model, image, size, mean, std)
        cm += confusion(pred, truth, ds.n_classes, ds.void)
        if len(shown) < 8:
            shown.append((image, truth, pred))
    return metrics_from_confusion(cm, ds.codes, ds.void), shown


def save_results_png(shown: list, path: Path, n: int, colours) -> None:
    """image | truth | prediction for `n` validation images, at their own resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(shown))
    pal = np.array(colours, dtype=np.uint8)
    h, w = shown[0][0].shape[:2]
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n * h / w + 0.3), squeeze=False)
    for i in range(n):
        image, truth, pred = shown[i]
        for ax, arr, title in zip(axes[i], (image, pal[truth], pal[pred]), ("image", "truth", "prediction")):
            ax.imshow(arr)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_curves_png(history: list[dict], path: Path) -> None:
    """Training/validation loss and foreground Dice per epoch, both phases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [h.get("train_loss") for h in history], "o-", label="train loss")
    a.plot(ep, [h.get("valid_loss") for h in history], "o-", label="valid loss")
    a.set_xlabel("epoch"), a.legend(), a.set_title("loss")
    b.plot(ep, [h.get("dice_fg") for h in history], "o-", color="C2")
    b.set_ylim(0, 1), b.set_xlabel("epoch"), b.set_title("foreground Dice (valid)")
    frozen = sum(1 for h in history if h["phase"] == "frozen")
    for ax in (a, b):
        ax.axvline(frozen - 0.5, color="grey", ls="--", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def learner_for(config: TrainConfig, ds: Dataset | None = None, *, augment: str | None = None, weights=None, half: bool = False):
    """Rebuild the learner (DataLoaders + U-Net) that `config` describes; used by fit and by export.
    `weights`: class weights of the loss (None: unweighted); `half`: DataLoaders at half the size and crop."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    ds = ds or load_dataset(config.data)
    loss = config.resolved_loss()
    learn = build_learner(dataloaders_for(config, ds, augment=augment, half=half), n_out=ds.n_classes, encoder=config.encoder,
                          pretrained=config.pretrained, weights=config.weights, allow_random=config.allow_random,
                          metrics=_fastai_metrics(ds.codes, ds.void), last_cross=config.last_cross, opt=config.opt, decoder_norm=config.decoder_norm,
                          loss_func=SegmentationLoss(weights, ds.void, dice=loss == "ce+dice", lovasz=loss == "ce+lovasz"))
    if config.bn_momentum is not None:
        for m in learn.model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.momentum = config.bn_momentum
    return learn, ds


class SegmentationLoss:
    """fastai's CrossEntropyLossFlat (class `weights`, Void ignored), plus with `dice` a soft Dice term:
    1 - the mean over the classes but Void of 2|P.T| / (|P| + |T|) over the batch's non-Void pixels (P the
    softmax, T the one-hot truth), which weighs a thin class by its overlap rather than by its pixel count.
    (fastai's DiceLoss has no ignore index for Void and sums per image and class, an absent class counting
    as much as a present one.) Module-level so that fastai can pickle a Learner that uses it; activation and decodes are the
    cross-entropy's (softmax, argmax), so fastai's get_preds and show_results behave as with the default loss."""

    def __init__(self, weights=None, void: int | None = None, *, dice: bool = False, lovasz: bool = False, smooth: float = 1.0):
        import torch
        from fastai.losses import CrossEntropyLossFlat

        w = None if weights is None else torch.tensor(np.asarray(weights), dtype=torch.float32)
        self.ce = CrossEntropyLossFlat(axis=1, weight=w, ignore_index=-100 if void is None else void)
        self.void, self.dice, self.lovasz, self.smooth = void, dice, lovasz, smooth

    def __call__(self, pred, targ):
        loss = self.ce(pred, targ)
        if self.dice:
            loss = loss + self.dice_loss(pred, targ)
        if self.lovasz:
            loss = loss + self.lovasz_loss(pred, targ)
        return loss

    def lovasz_loss(self, pred, targ):
        """The Lovasz-softmax loss (Berman et al., CVPR 2018: a convex surrogate of 1 - IoU), averaged over the
        classes present in the batch, Void pixels left out; the reference implementation's flat form."""
        import torch

        pred, targ = pred.as_subclass(torch.Tensor).float(), targ.as_subclass(torch.Tensor).long()
        n = pred.shape[1]
        p, t = pred.softmax(1).permute(0, 2, 3, 1).reshape(-1, n), targ.reshape(-1)
        if self.void is not None:
            p, t = p[t != self.void], t[t != self.void]
        losses = []
        for c in range(n):
            fg = (t == c).float()
            if fg.sum() == 0:  # absent from the batch (Void's pixels were dropped above)
                continue
            errors, perm = (fg - p[:, c]).abs().sort(descending=True)
            fg = fg[perm]
            inter, union = fg.sum() - fg.cumsum(0), fg.sum() + (1 - fg).cumsum(0)
            jaccard = 1 - inter / union
            grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
            losses.append(errors @ grad)
        return torch.stack(losses).mean() if losses else pred.sum() * 0

    def dice_loss(self, pred, targ):
        import torch
        import torch.nn.functional as F

        pred, targ = pred.as_subclass(torch.Tensor).float(), targ.as_subclass(torch.Tensor).long()
        n = pred.shape[1]
        p, t = pred.softmax(1), F.one_hot(targ.clamp(0, n - 1), n).permute(0, 3, 1, 2).float()
        keep = list(range(n))
        if self.void is not None:
            valid = (targ != self.void).unsqueeze(1).float()
            p, t, keep = p * valid, t * valid, [c for c in keep if c != self.void]
        inter, total = (p * t).sum((0, 2, 3)), (p + t).sum((0, 2, 3))
        dice = (2 * inter + self.smooth) / (total + self.smooth)
        return 1 - dice[keep].mean()

    def activation(self, x):
        return self.ce.activation(x)

    def decodes(self, x):
        return self.ce.decodes(x)


def dataloaders_for(config: TrainConfig, ds: Dataset, *, augment: str | None = None, half: bool = False):
    spec = ENCODERS[config.encoder]
    size, crop = config.resolved_size(ds), config.crop
    if half:  # progressive resizing: the same scale ratio, half the pixels per side
        size = (max(32, size[0] // 2), max(32, size[1] // 2))
        crop = (max(32, crop[0] // 2), max(32, crop[1] // 2)) if crop else None
    return make_dataloaders(ds, size=size, crop=crop, bs=config.bs, mean=spec.mean, std=spec.std, valid_pct=config.valid_pct,
                            seed=config.seed, augment=config.resolved_augment() if augment is None else augment,
                            class_crops=config.class_crops)


def _balance(config: TrainConfig, ds: Dataset, train_idx) -> tuple[np.ndarray | None, dict]:
    """The loss's class weights (None: plain loss) and what the report says about them."""
    freq = class_frequencies(ds, train_idx)
    present = [f for i, f in enumerate(freq) if i != ds.void and f > 0]
    ratio = float(max(present) / min(present)) if present else 1.0
    on = config.class_weights in ("on", "sqrt") or (config.class_weights == "auto" and ratio > IMBALANCE_RATIO)
    weights = median_frequency_weights(freq, ds.void) if on else None
    if on and config.class_weights == "sqrt":  # softer: rare classes still count more, thin ones come out less fat
        weights = np.sqrt(weights)
    info = {"mode": config.class_weights, "used": bool(on), "imbalance_ratio": ratio, "threshold": IMBALANCE_RATIO,
            "frequencies": dict(zip(ds.codes, map(float, freq))), "weights": dict(zip(ds.codes, map(float, weights))) if on else None,
            "void": ds.codes[ds.void] if ds.void is not None else None}
    return weights, info


def fit(config: TrainConfig) -> dict:
    """Train and write the run folder; returns the report (also written as report.json)."""
    import torch
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)
    from fastai.callback.tracker import SaveModelCallback  # noqa: F401

    from .precision import resolve_precision

    # both imported before the seeding below: importing them draws from the random generators (it changed every
    # fit when they were first imported later, in _train)

    # fastai's augmentations draw from Python's `random` too: seed all three for a repeatable run
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    t0 = time.perf_counter()
    print(f"[1/4] checking data in {config.data}", flush=True)
    ds = load_dataset(config.data)
    out = config.out
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"{out}: run folder exists and is not empty; pass a new --out")
    train_idx, valid_idx = split_pairs(ds, config.valid_pct, config.seed)
    size = config.resolved_size(ds)
    frozen, unfrozen = config.schedule(len(train_idx))
    weights, balance = _balance(config, ds, train_idx)
    print(f"      {ds.layout} layout, {len(ds.pairs)} images ({len(train_idx)} train, {len(valid_idx)} held out), classes: {', '.join(ds.codes)}"
          + (f" ({ds.codes[ds.void]} ignored)" if ds.void is not None else ""), flush=True)
    if balance["used"]:
        print("      class weights (median frequency): " + ", ".join(f"{c} {w:.2f}" for c, w in balance["weights"].items()), flush=True)
    what = (f"{size[0]}x{size[1]}" + (f", random {config.crop[0]}x{config.crop[1]} crops" if config.crop else "")
            + (f" ({config.class_crops:.0%} centred on a class)" if config.class_crops else "")
            + (", progressive (half size first)" if config.progressive else "")
            + f", augmentation {config.resolved_augment()}, loss {config.resolved_loss()}")
    print(f"[2/4] building U-Net on {config.encoder} ({'pretrained' if config.pretrained or config.weights else 'random init'}) at {what}", flush=True)
    learn, ds = learner_for(config, ds, weights=weights, half=config.progressive and frozen > 0)
    out.mkdir(parents=True, exist_ok=True)
    learn.path = out
    learn.model_dir = "."
    if config.lr_find:
        _lr_find(learn, config, out)
    steps = (frozen + unfrozen) * math.ceil(len(train_idx) / config.bs)
    precision = resolve_precision(config.precision, learn.dls.device)
    print(f"[3/4] training: {frozen} epochs encoder frozen (lr {config.lr:g}), then {unfrozen} unfrozen (lr slice{config.lr_unfrozen}): "
          f"{steps} steps of {config.bs}, {precision}{', channels-last' if config.channels_last else ''} on {learn.dls.device.type}", flush=True)
    history, timings, kept = _train(learn, config, ds, frozen, unfrozen, precision)
    schedule = {"steps_budget": config.steps, "steps": steps, "frozen_epochs": frozen, "unfrozen_epochs": unfrozen, "kept_epoch": kept,
                "precision": precision, "channels_last": config.channels_last}
    report = _write_run(learn, config, ds, (train_idx, valid_idx), size, history, schedule, balance, timings)
    report["timings"]["total_s"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2))
    metrics = report["metrics"]
    iou = "" if ds.layout != "camvid" else f", mean IoU {metrics['iou_fg']:.3f}"
    print(f"      Dice {metrics['dice_fg']:.3f} ({', '.join(metrics['scored_classes'])}){iou}, pixel accuracy {metrics['pixel_acc']:.3f}, "
          f"training {timings['train_s'] / 60:.1f} min", flush=True)
    return report


def _lr_find(learn, config: TrainConfig, out: Path) -> None:
    """fastai's lr_find on the frozen model; its plot goes to lr_find.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learn.freeze()
    sug = learn.lr_find(num_it=config.lr_find_iters, show_plot=True)
    plt.gcf().savefig(out / "lr_find.png", dpi=80)
    plt.close("all")
    print(f"      lr_find suggests {sug.valley:.2e} (plot: {out / 'lr_find.png'})", flush=True)


def _train(learn, config: TrainConfig, ds, frozen: int, unfrozen: int, precision: str = "fp32") -> tuple[list, dict, int | None]:
    """The frozen phase, then the unfrozen one at discriminative learning rates, in `precision` (resolved: fp32 or
    bf16); the best validation epoch of the last phase is kept (SaveModelCallback) unless --last-epoch. Returns
    (history, timings, kept epoch)."""
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)
    from fastai.callback.tracker import SaveModelCallback

    from .precision import speed_callbacks

    history, timings = [], {}
    best = [SaveModelCallback(monitor="dice_fg", comp=np.greater, fname="best", with_opt=False)] if config.keep_best else []
    speed = speed_callbacks(precision, config.channels_last)
    learn.add_cbs(speed)
    try:
        _phases(learn, config, ds, frozen, unfrozen, best, history, timings)
    finally:
        learn.remove_cbs(speed)
    last_phase = [h for h in history if h["phase"] == ("unfrozen" if unfrozen else "frozen")]
    kept = max(last_phase, key=lambda h: h.get("dice_fg") or 0)["epoch"] if config.keep_best and last_phase else (history[-1]["epoch"] if history else None)
    (learn.path / "best.pth").unlink(missing_ok=True)
    return history, timings, kept


def _phases(learn, config: TrainConfig, ds, frozen: int, unfrozen: int, best: list, history: list, timings: dict) -> None:
    """Both phases of `_train`, appending to `history` and `timings`."""
    t = time.perf_counter()
    method, shape_frozen, shape_unfrozen = SCHEDULES[config.schedule_shape]
    if frozen:
        learn.freeze()
        getattr(learn, method)(frozen, config.lr, cbs=best if not unfrozen else [], **shape_frozen)
        history += _history(learn, "frozen", 0)
    timings["frozen_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if unfrozen:
        if config.progressive and frozen:
            learn.dls = dataloaders_for(config, ds)
        learn.unfreeze()
        getattr(learn, method)(unfrozen, slice(*config.lr_unfrozen), cbs=best, **shape_unfrozen)
        history += _history(learn, "unfrozen", len(history))
    timings["unfrozen_s"] = time.perf_counter() - t
    timings["train_s"] = timings["frozen_s"] + timings["unfrozen_s"]


def _write_run(learn, config: TrainConfig, ds, split, size, history, schedule: dict, balance: dict, timings: dict) -> dict:
    """Evaluate at native resolution and write the run folder (model.pth, config.json, results.png,
    curves.png); returns the report."""
    import torch

    out, (train_idx, valid_idx) = config.out, split
    spec = ENCODERS[config.encoder]
    print(f"[4/4] evaluating on {len(valid_idx)} held-out images at their own resolution (epoch {schedule['kept_epoch']} kept) "
          f"and writing {out}", flush=True)
    metrics, shown = evaluate(learn, ds, valid_idx, size, spec.mean, spec.std)
    colours = class_colours(ds.n_classes)
    run_meta = {
        "config": config.to_json(), "size": list(size), "codes": list(ds.codes), "colours": colours, "layout": ds.layout,
        "mean": list(spec.mean), "std": list(spec.std), "void": ds.void,
        "train_images": [str(ds.pairs[i][0]) for i in train_idx],
        "valid_images": [str(ds.pairs[i][0]) for i in valid_idx],
    }
    torch.save(learn.model.state_dict(), out / "model.pth")
    (out / "config.json").write_text(json.dumps(run_meta, indent=2))
    save_results_png(shown, out / "results.png", config.n_show, colours)
    save_curves_png(history, out / "curves.png")
    return {"metrics": metrics, "history": history, "schedule": schedule, "class_balance": balance, "timings": timings,
            "loss": config.resolved_loss(), "augment": config.resolved_augment(), "versions": versions(), **run_meta}


def load_run(run_dir: Path):
    """Rebuild the trained learner of a run folder: returns (learn, run_meta, dataset)."""
    import torch

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.pth"
    if not cfg_path.is_file() or not weights.is_file():
        raise TrainingError(f"{run_dir}: not a training run (needs config.json and model.pth); train one with `python -m training fit`")
    meta = json.loads(cfg_path.read_text())
    meta["config"].setdefault("decoder_norm", "none")  # run folders from before the option: fastai's decoder, no norm
    c = dict(meta["config"])
    c.pop("extra", None)
    c["pretrained"] = False  # the trained weights are loaded below; no need for ImageNet ones
    c["weights"] = None
    config = TrainConfig(**{k: v for k, v in c.items() if k in TrainConfig.__dataclass_fields__})
    learn, ds = learner_for(config, augment="none")
    learn.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    learn.model.eval()
    return learn, meta, ds
