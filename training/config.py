"""The configuration of a fit: one typed dataclass (`TrainConfig`), its choices and its defaults.

`python -m training fit` only overrides these defaults (its help text is built from them); `load_run` rebuilds
a run's configuration from its config.json."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import Dataset
from .errors import TrainingError
from .model import DECODER_NORMS, ENCODERS, INPUT_NORMS


def parse_hw(value) -> tuple[int, int] | None:
    """An int (square), a (H, W) pair, "HxW", "H W" or the command line's ["360", "480"] / ["360x480"] / ["128"]
    -> (H, W); None stays None. ValueError when it is none of those."""
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
        parts = " ".join([value] if isinstance(value, str) else value).lower().replace("x", " ").split()
        if not all(p.isdigit() for p in parts):
            raise ValueError(value)
        value = [int(p) for p in parts]
    value = tuple(int(v) for v in value)
    if len(value) not in (1, 2):
        raise ValueError(value)
    return value * 2 if len(value) == 1 else value


FIELD_KINDS = ("haze", "blur", "lowres", "exposure", "cast", "noise", "jpeg")  # the camera shifts of training.augment
AUGMENT = ("flip", "affine", "field", "none", "auto")

LOSSES = ("auto", "ce", "ce+dice", "ce+lovasz")

CLASS_WEIGHTS = ("auto", "on", "sqrt", "off")

# each phase's fastai schedule and its arguments (frozen, unfrozen): one-cycle: fit_one_cycle with fastai's defaults
# (warm-up over 25 %, from lr/25); fine-tune: the shape of fastai's Learner.fine_tune (frozen: warm-up over 99 %;
# unfrozen: over 30 %, from lr/5); flat-cos: fit_flat_cos (the rate flat for 75 %, then cosine down; fastai's partner
# of ranger)
SCHEDULES = {
    "one-cycle": ("fit_one_cycle", {}, {}),
    "fine-tune": ("fit_one_cycle", {"pct_start": 0.99}, {"pct_start": 0.3, "div": 5.0}),
    "flat-cos": ("fit_flat_cos", {}, {}),
}

OPTIMIZERS = ("adam", "ranger")  # fastai's Adam (its default) or ranger (RAdam + Lookahead)

PRECISIONS = ("auto", "fp32", "bf16")
# the default batch size: 4 on random crops (batch 4 against 8 over 5 seeds: mean IoU and Pole up on every seed, the
# same time; docs/research.md), 8 on whole images (the demo's recipe, measured over 5 seeds at 8)
CROP_BS, WHOLE_BS = 4, 8

BUDGET_IMAGES = 3600  # the default budget in images seen, whatever the batch: 450 steps of 8 (the demo), 900 of 4


@dataclass
class TrainConfig:
    data: Path
    out: Path
    encoder: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: Path | None = None
    allow_random: bool = False
    size: tuple[int, int] | None = (
        None  # (H, W) training scale; None: 128x128, or the CamVid data's aspect at 128 px high
    )
    crop: tuple[int, int] | None = None  # (H, W) random crops at the training scale (whole images when None)
    class_crops: float = (
        0.0  # share of random crops centred on a pixel of a class drawn evenly from those present (Void excluded)
    )
    zoom: tuple[float, float] | None = None  # with crop: each crop from a region zoomed by a factor in [lo, hi]
    progressive: bool = False  # fastai's progressive resizing: the frozen phase at half size, then full size
    bs: int | None = None  # None: CROP_BS on random crops, WHOLE_BS on whole images
    valid_pct: float = 0.2  # the random share held out for validation when the data has no validation set of its own
    valid: Path | None = None  # a validation folder (any layout) instead of a random share (SegNet folders: val/)
    seed: int = 42
    steps: int | None = (
        None  # optimiser steps in all; epochs follow the data set's size (20 % frozen); None: BUDGET_IMAGES / bs
    )
    frozen_epochs: int | None = None  # explicit epochs override the step budget
    unfrozen_epochs: int | None = None
    lr: float = 4e-3  # head learning rate (frozen phase)
    lr_unfrozen: tuple[float, float] = (2e-4, 2e-3)  # slice(lo, hi) for the unfrozen phase
    class_weights: str = (
        "auto"  # median-frequency weighted loss: auto (when unbalanced), on, sqrt (their square roots), off
    )
    # auto: ce+dice on random crops, ce on whole images; ce: cross-entropy; ce+dice: plus a soft Dice term (Void left
    # out)
    loss: str = "auto"
    schedule_shape: str = "one-cycle"  # see SCHEDULES
    opt: str = "adam"  # see OPTIMIZERS
    # BatchNorm after the U-Net decoder's convolutions ("none": fastai's U-Net without it); see build_learner
    decoder_norm: str = "batch"
    bn_momentum: float | None = (
        # every BatchNorm layer's running-statistics momentum; None: each layer's own (EfficientNet-Lite0's encoder
        # 0.01, fastai's decoder 0.1)
        None
    )
    # auto: bf16 autocast where the training device computes bf16 natively (AMX/AVX-512 BF16 CPUs, bf16 GPUs), else fp32
    precision: str = "auto"
    channels_last: bool = True  # the model in channels-last memory format while training (oneDNN's fast layout)
    keep_best: bool = True  # keep the epoch with the best validation Dice (fastai SaveModelCallback)
    # validate only in the last N epochs of the fit (a frozen phase before an unfrozen one: its last epoch); 0: every
    # epoch. A plan chooses a fifth of the unfrozen epochs (training.plan.VALID_SHARE)
    valid_last: int = 0
    # flip | affine (+ rotation, zoom, warp, lighting) | field (+ camera shifts: training.augment) | none; auto = flip
    augment: str = "field"
    field_p: float = 0.3  # with augment "field": the share of training images shifted as a camera would
    field_kinds: tuple[str, ...] = ("haze", "exposure", "cast")  # with augment "field": the shifts drawn (FIELD_KINDS)
    # encoder: the encoder's input standardised per image (model.py), the head sees it as is; image: both; dataset: none
    input_norm: str = "encoder"
    # a time budget: the recipe planned from the data and the step time measured here (training.plan), None: as set
    minutes: float | None = None
    fixed: tuple[str, ...] = ()  # the fields given explicitly (the command line's options): a plan keeps them
    lr_find: bool = False
    lr_find_iters: int = 100
    last_cross: bool = True
    n_show: int = 4
    threads: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.data, self.out = Path(self.data), Path(self.out)
        self.weights = Path(self.weights) if self.weights else None
        self.valid = Path(self.valid) if self.valid else None
        if isinstance(self.augment, bool):  # run folders written before augment had levels
            self.augment = "affine" if self.augment else "none"
        self.field_kinds, self.lr_unfrozen, self.fixed = (
            tuple(self.field_kinds),
            tuple(self.lr_unfrozen),
            tuple(self.fixed),
        )
        self._check_sizes()
        if self.bs is None:
            self.bs = CROP_BS if self.crop else WHOLE_BS
        if self.bs < 1:
            raise TrainingError(f"--bs {self.bs}: must be >= 1")
        if self.steps is None:
            self.steps = max(1, round(BUDGET_IMAGES / self.bs))
        if self.encoder not in ENCODERS:
            raise TrainingError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        for flag, value, options in (
            ("--augment", self.augment, AUGMENT), ("--input-norm", self.input_norm, INPUT_NORMS),
            ("--loss", self.loss, LOSSES), ("--schedule", self.schedule_shape, SCHEDULES),
            ("--opt", self.opt, OPTIMIZERS), ("--class-weights", self.class_weights, CLASS_WEIGHTS),
            ("--decoder-norm", self.decoder_norm, DECODER_NORMS), ("--precision", self.precision, PRECISIONS),
        ):  # fmt: skip
            if value not in options:
                raise TrainingError(f"{flag} {value!r}: use {', '.join(options)}")
        self._check_ranges()

    def _check_sizes(self) -> None:
        """--size, --crop (parsed to (H, W)) and --zoom, or a one-line TrainingError."""
        try:
            self.size, self.crop = parse_hw(self.size), parse_hw(self.crop)
        except ValueError:
            raise TrainingError(
                f"--size/--crop: give H W, HxW or one number (got {self.size!r}, {self.crop!r})"
            ) from None
        for name, hw in (("--size", self.size), ("--crop", self.crop)):
            if hw is not None and (len(hw) != 2 or min(hw) < 32):
                raise TrainingError(f"{name} {hw}: give height and width, each at least 32 px")
        if self.crop and self.size and (self.crop[0] > self.size[0] or self.crop[1] > self.size[1]):
            raise TrainingError(
                f"--crop {self.crop[0]}x{self.crop[1]} is larger than --size {self.size[0]}x{self.size[1]}; crops are "
                "taken at the training scale"
            )
        if self.zoom is not None:
            self.zoom = tuple(float(z) for z in self.zoom)
            if len(self.zoom) != 2 or not 0.25 <= self.zoom[0] <= self.zoom[1] <= 4 or not self.crop:
                raise TrainingError(f"--zoom {self.zoom}: give LO HI in [0.25, 4] with LO <= HI, and --crop H W")
        if self.class_crops and not self.crop:
            raise TrainingError("--class-crops places random crops: give --crop H W as well")

    def _check_ranges(self) -> None:
        """The numbers that must lie in a range, or a one-line TrainingError."""
        if self.steps < 1:
            raise TrainingError(f"--steps {self.steps}: must be >= 1")
        if not self.field_kinds or set(self.field_kinds) - set(FIELD_KINDS):
            raise TrainingError(f"--field-kinds {','.join(self.field_kinds)}: use some of {', '.join(FIELD_KINDS)}")
        if not 0 < self.field_p <= 1:
            raise TrainingError(f"--field-p {self.field_p}: use a share in (0, 1], e.g. 0.5")
        if not 0 <= self.class_crops <= 1:
            raise TrainingError(f"--class-crops {self.class_crops}: use a share in [0, 1], e.g. 0.33")
        if self.bn_momentum is not None and not 0 < self.bn_momentum <= 1:
            raise TrainingError(
                f"--bn-momentum {self.bn_momentum}: use a number in (0, 1], e.g. 0.1 (PyTorch's default)"
            )
        if self.valid_last < 0:
            raise TrainingError(f"--valid-last {self.valid_last}: give a number of epochs >= 0 (0: every epoch)")
        if self.minutes is not None and not 0 < self.minutes <= 24 * 60:
            raise TrainingError(f"--minutes {self.minutes:g}: give a budget in minutes, e.g. --minutes 20")

    def resolved_size(self, ds: Dataset) -> tuple[int, int]:
        """The training scale: --size, else 128x128 (generic, Leeds) or the CamVid data's aspect at 128 px high."""
        if self.size:
            return self.size
        if ds.street:
            h, w = ds.image_size()
            return 128, max(32, round(128 * w / h))
        return 128, 128

    def resolved_augment(self) -> str:
        """The augmentation used; "auto" (the default of earlier versions: flips on crops, affine on whole images)
        means flips only, which measured better than fastai's aug_transforms both ways (docs/research.md: poles
        +0.08 on CamVid-layout crops, Dice 0.960 against 0.954 on the demo over 5 seeds)."""
        return "flip" if self.augment == "auto" else self.augment

    def resolved_loss(self) -> str:
        """auto: cross-entropy + soft Dice when training on random crops (thin and rare classes: Pole 0.39 -> 0.56 on
        CamVid-layout scenes, docs/research.md), cross-entropy on whole images."""
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
        d["valid"] = str(self.valid) if self.valid else None
        d["size"], d["crop"] = (list(self.size) if self.size else None), (list(self.crop) if self.crop else None)
        d["zoom"] = list(self.zoom) if self.zoom else None
        return d
