"""`fit --minutes N`: the recipe planned from the data and a time budget on this machine.

nnU-Net plans patch size, resolution, batch and network from a fingerprint of the data and the GPU's memory; here
the budget is minutes on the CPU at hand, so the plan also measures what a training step costs here:

1. `fingerprint`: image sizes and aspect, channels, class frequencies, the width of each class's structures
   (pixels / skeleton length on a sample of masks: the thinnest says how far the images may be scaled down),
   the data set's size;
2. `probe`: seconds per training step (encoder frozen and unfrozen) of each candidate encoder at the planned
   crop and batch, and of one full-size prediction, measured with real steps on this machine;
3. `choose` (pure: fingerprint + step times + minutes -> `Plan`): training scale, crops, scale jitter, batch,
   encoder, frozen and unfrozen epochs, loss and class weights, augmentation, precision, each with its reason;
4. during the fit, after the frozen phase, `Plan.unfrozen_epochs` sizes the unfrozen phase from the epoch and
   validation times measured so far, so that the whole fit, final evaluation included, ends within the budget.

Validation runs only where it decides something: the best epoch of a one-cycle schedule comes at its end, when the
learning rate has come down, so a plan validates the last fifth of the unfrozen epochs (`valid_last`) and the frozen
phase's last epoch; every other epoch's validation (a prediction per held-out image at its own size) is time given to
training instead.

Every option given on the command line overrides its part of the plan (`TrainConfig.fixed`).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import TrainingError
from .losses import IMBALANCE_RATIO  # the threshold of class_weights="auto": one for both

DEFAULT_MINUTES = 20.0  # `fit`'s budget when none is given (README: why)
MAX_SIDE = 1024  # the training scale's long side at most, unless the thinnest structures need more
THIN_PX = 3.0  # the thinnest class stays at least this wide (px) at the training scale
WHOLE_PIXELS = 256 * 256  # images up to this size train whole; larger ones on random crops
CROP_PIXELS = 192 * 256  # the crops' area (CamVid: 192x256, measured best of the sizes tried: docs/training.md)
FROZEN_SHARE = 0.15  # of the epochs, with the encoder frozen (at least one)
VALID_SHARE = 0.2  # a plan validates the last fifth of the unfrozen epochs (at least 2) and the frozen phase's last
MARGIN = 0.04  # the plan aims at (1 - MARGIN) of the budget: epoch times vary by a few per cent
SHIFT_IMAGES = 24  # held-out images scored under each camera shift at the end of a planned fit
WRITE_S = 10.0  # writing the run folder: the model, its pictures (results, curves, shifts), the report
FIELD_P = 0.15  # with every kind: CamVid val mean IoU 0.595 (0.578 at 0.3), shifted 0.95 of clean
ALL_KINDS = ("haze", "blur", "lowres", "exposure", "cast", "noise", "jpeg")
# The larger encoders when the budget buys at least this many of their optimiser steps (below it, the smaller
# encoder's extra steps are worth more). Real CamVid val at 60 min, validating every epoch (~3300 lite2 steps):
# lite2 0.678 mean IoU against lite0's 0.670 (test 0.595 against 0.602; one seed each); at 20 min (~1000 steps) lite2
# 0.598, lite0 0.617.
ENCODER_MIN_STEPS = {"efficientnet_lite2": 3000, "efficientnet_lite0": 0}
SAMPLE_MASKS = 24  # masks read for the structure widths


@dataclass
class Fingerprint:
    """What the plan reads of a data set (JSON-ready)."""

    n_train: int
    n_valid: int
    size: tuple[int, int]  # median (H, W) of the training images
    size_range: tuple[tuple[int, int], tuple[int, int]]  # smallest and largest (H, W)
    grey: bool  # every sampled image has one channel (or three equal ones)
    classes: tuple[str, ...]
    void: int | None
    share: dict  # class -> share of the labelled training pixels
    width: dict  # class -> typical width of its structures in px at the images' own size (None: absent)

    @property
    def thinnest(self) -> tuple[str, float]:
        """(class, width) of the class whose structures are thinnest."""
        known = {c: w for c, w in self.width.items() if w is not None}
        return min(known.items(), key=lambda kv: kv[1]) if known else ("", math.inf)

    @property
    def imbalance(self) -> float:
        shares = [s for s in self.share.values() if s > 0]
        return max(shares) / min(shares) if shares else 1.0


def structure_width(mask: np.ndarray, c: int) -> tuple[int, int]:
    """(pixels, skeleton pixels) of class `c` in `mask`: their ratio is the class's mean width in px."""
    from skimage.morphology import skeletonize

    region = mask == c
    n = int(region.sum())
    return n, int(skeletonize(region).sum()) if n else 0


def fingerprint(ds, train_idx, valid_idx) -> Fingerprint:
    """The data set's fingerprint from its training images (headers only) and a sample of its masks."""
    from PIL import Image

    from .data import read_mask

    sizes = []
    for i in train_idx:
        with Image.open(ds.pairs[i][0]) as im:
            sizes.append((im.size[1], im.size[0]))
    step = max(1, len(train_idx) // SAMPLE_MASKS)
    sample = list(train_idx)[::step][:SAMPLE_MASKS]
    grey = all(_is_grey(ds.pairs[i][0]) for i in sample[:8])
    pixels, skeleton = np.zeros(ds.n_classes), np.zeros(ds.n_classes)
    for i in sample:
        m = read_mask(ds.pairs[i][1], ds.binary_255)
        for c in np.unique(m):
            if c != ds.void and c < ds.n_classes:
                n, k = structure_width(m, int(c))
                pixels[c], skeleton[c] = pixels[c] + n, skeleton[c] + k
    scored = [c for c in range(ds.n_classes) if c != ds.void]
    total = pixels[scored].sum() or 1
    h = sorted(s[0] for s in sizes)[len(sizes) // 2]
    w = sorted(s[1] for s in sizes)[len(sizes) // 2]
    return Fingerprint(
        n_train=len(train_idx), n_valid=len(valid_idx), size=(h, w),
        size_range=(min(sizes), max(sizes)), grey=grey, classes=tuple(ds.codes), void=ds.void,
        share={ds.codes[c]: float(pixels[c] / total) for c in scored},
        width={ds.codes[c]: (float(pixels[c] / max(skeleton[c], 1)) if pixels[c] else None) for c in scored},
    )  # fmt: skip


def _is_grey(path) -> bool:
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("L", "LA", "I", "I;16", "1"):
            return True
        a = np.asarray(im.convert("RGB"))[::4, ::4].astype(np.int16)
    return bool(np.abs(a[..., 0] - a[..., 1]).max() <= 2 and np.abs(a[..., 1] - a[..., 2]).max() <= 2)


@dataclass
class StepTimes:
    """Seconds measured on this machine, per encoder: a training step frozen and unfrozen (`bs` crops or images),
    one prediction at the images' own size; and drawing one batch of data."""

    frozen: dict
    unfrozen: dict
    predict: dict
    batch_data: float = 0.0


@dataclass
class Plan:
    minutes: float
    choices: dict  # TrainConfig field -> value
    reasons: dict  # TrainConfig field -> why
    estimate: dict  # seconds: setup, per epoch, final evaluation; epochs; steps
    fingerprint: dict = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The plan as fit prints it: one line per choice with its reason, then the time it expects."""
        e = self.estimate
        out = [f"plan for {self.minutes:g} min on this machine (every option given overrides its part):"]
        out += [f"  {k:<15} {_show(self.choices[k]):<24} {self.reasons[k]}" for k in self.choices]
        out.append(f"  expected: {e['epochs']} epochs of {e['epoch_s']:.0f} s, {e['validations']} validations of "
                   f"{e['valid_s']:.0f} s, final evaluation {e['final_s']:.0f} s, set-up {e['setup_s']:.0f} s: "
                   f"{e['total_s'] / 60:.1f} of {self.minutes:g} min")  # fmt: skip
        return out

    def unfrozen_epochs(self, elapsed: float, frozen_epoch_s: float, valid_s: float | None = None) -> int:
        """The unfrozen epochs that still fit in the budget after the frozen phase, from the frozen epochs' measured
        training time (scaled by the probe's unfrozen / frozen step time), a validation's measured time (`valid_s`;
        None: the estimate's), the validations `valid_last` asks for and the final evaluation's estimate."""
        e = self.estimate
        epoch = max(frozen_epoch_s + e["steps_per_epoch"] * (e["unfrozen_step_s"] - e["frozen_step_s"]), 1e-6)
        val = e["valid_s"] if valid_s is None else valid_s
        left = self.minutes * 60 * (1 - MARGIN) - elapsed - e["final_s"]
        last = self.choices.get("valid_last", 0)
        n = 1
        while (n + 1) * epoch + validations(n + 1, last) * val <= left:
            n += 1
        return n

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def _show(v) -> str:
    if isinstance(v, (tuple, list)):
        return "x".join(map(str, v)) if all(isinstance(x, int) for x in v) else ",".join(map(str, v))
    return str(v)


def round32(n: float) -> int:
    return max(32, int(round(n / 32)) * 32)


def training_scale(fp: Fingerprint) -> tuple[tuple[int, int], str]:
    """The images' own size, unless larger than MAX_SIDE (then scaled down, but never so far that the thinnest
    class falls under THIN_PX)."""
    h, w = fp.size
    thin, width = fp.thinnest
    s = min(1.0, MAX_SIDE / max(h, w))
    why = f"the images' own size ({thin}, the thinnest class, ~{width:.1f} px wide)"
    if s < 1 and width * s < THIN_PX:
        s = min(1.0, THIN_PX / width)
        why = f"scaled to keep {thin} (~{width:.1f} px wide) at {THIN_PX:g} px or more"
    elif s < 1:
        why = f"long side {MAX_SIDE} px ({thin}, the thinnest class, ~{width * s:.1f} px wide there)"
    return (max(32, round(h * s)), max(32, round(w * s))), why


def crop_for(size: tuple[int, int]) -> tuple[int, int] | None:
    """Random crops of about CROP_PIXELS with the images' aspect (multiples of 32), or None: whole images."""
    h, w = size
    if h * w <= WHOLE_PIXELS:
        return None
    ch = min(round32(math.sqrt(CROP_PIXELS * h / w)), h // 32 * 32 or 32)
    cw = min(round32(CROP_PIXELS / ch), w // 32 * 32 or 32)
    return ch, cw


def geometry(fp: Fingerprint, fixed: dict) -> tuple[tuple[int, int], tuple[int, int] | None, int, str]:
    """(training scale, crop or None, batch size, why the scale) from the fingerprint, where not `fixed`."""
    size, why = (tuple(fixed["size"]), "given") if fixed.get("size") else training_scale(fp)
    crop = fixed["crop"] if "crop" in fixed else crop_for(size)
    return size, crop, fixed.get("bs") or (4 if crop else 8), why


def choose(fp: Fingerprint, minutes: float, times: StepTimes, *, setup_s: float, bf16: bool, fixed: dict) -> Plan:
    """The plan for `fp` in `minutes`, with the step times measured here and `setup_s` already spent; `fixed`: the
    TrainConfig fields the user gave (kept as given, and planned around)."""
    size, crop, bs, size_why = geometry(fp, fixed)
    c, r = {"size": size, "crop": crop}, {"size": size_why}
    r["crop"] = (f"random crops of ~{CROP_PIXELS // 1000}k px: more steps than whole images" if crop
                 else f"whole images (up to {WHOLE_PIXELS // 1000}k px)")  # fmt: skip
    c["bs"], r["bs"] = bs, "4 on crops (beat 8 on 5 of 5 seeds), 8 on whole images"
    n_val, per_epoch = fp.n_valid, math.ceil(fp.n_train / bs)
    k = min(n_val, SHIFT_IMAGES)  # the shifts' sample (scored clean again when it is not the whole set)
    final = {e: WRITE_S + (n_val + k * 7 + (k if k < n_val else 0)) * t for e, t in times.predict.items()}
    train = {e: minutes * 60 * (1 - MARGIN) - setup_s - final[e] for e in times.unfrozen}
    steps = {e: max(0, int(train[e] / (times.unfrozen[e] + times.batch_data))) for e in times.unfrozen}
    schedule_given = bool({"steps", "frozen_epochs", "unfrozen_epochs"} & fixed.keys())
    enc = fixed.get("encoder") or next(e for e in ENCODER_MIN_STEPS if e in steps and steps[e] >= ENCODER_MIN_STEPS[e]
                                       and (not schedule_given or ENCODER_MIN_STEPS[e] == 0))  # fmt: skip
    c["encoder"] = enc
    r["encoder"] = (f"the budget buys ~{steps[enc]} steps of it (lite2 from {ENCODER_MIN_STEPS['efficientnet_lite2']})"
                    if not schedule_given else "the schedule was given: the smallest encoder")  # fmt: skip
    fe, ue = (per_epoch * (t[enc] + times.batch_data) for t in (times.frozen, times.unfrozen))  # training alone
    val = n_val * times.predict[enc]  # one validation: each held-out image at its own size
    cost = _Cost(fe, ue, val, fixed.get("valid_last"))
    epochs = 2 if schedule_given else _most_epochs(cost, train[enc], minutes)
    frozen = _frozen(epochs)
    if schedule_given:  # estimated, not planned
        frozen = fixed.get("frozen_epochs") or 0
        epochs = frozen + (fixed.get("unfrozen_epochs") or 0) or max(2, round(fixed.get("steps", 0) / per_epoch))
    else:
        c["frozen_epochs"], r["frozen_epochs"] = frozen, f"{FROZEN_SHARE:.0%} of the epochs: the head first"
        c["unfrozen_epochs"], r["unfrozen_epochs"] = epochs - frozen, "the rest (re-sized after the frozen ones)"
    c["valid_last"] = cost.last(epochs - frozen)
    r["valid_last"] = (f"validate the last {VALID_SHARE:.0%} of the unfrozen epochs (at least 2), where the best "
                       f"one comes; each other validation ({val:.0f} s) trains instead")  # fmt: skip
    c["loss"], r["loss"] = ("ce+dice", "cross-entropy + soft Dice: thin classes count by overlap") if crop else (
        "ce", "cross-entropy on whole images")  # fmt: skip
    c["class_weights"] = "sqrt" if fp.imbalance > IMBALANCE_RATIO else "off"
    r["class_weights"] = (f"square roots of median-frequency weights: class shares differ {fp.imbalance:.0f}x (on "
                          f"above {IMBALANCE_RATIO:g}x; real CamVid val 0.617 mean IoU against 0.560 with the full "
                          "weights)")  # fmt: skip
    c["augment"], r["augment"] = "field", "flips and camera shifts on a share of the images"
    c["field_kinds"], r["field_kinds"] = ALL_KINDS, "optics (blur, low resolution, noise, JPEG) and light"
    c["field_p"], r["field_p"] = FIELD_P, "the share of images shifted (real CamVid val: 0.15 kept clean accuracy)"
    c["precision"], r["precision"] = ("bf16", "native on this CPU") if bf16 else ("fp32", "no native bf16 here")
    for k in fixed:  # what the user gave stays as given
        if k in c:
            c[k], r[k] = fixed[k], "given"
    n_valid = fit_validations(frozen, epochs - frozen, c["valid_last"])
    total = setup_s + frozen * fe + (epochs - frozen) * ue + n_valid * val + final[enc]
    estimate = {"epochs": epochs, "steps_per_epoch": per_epoch, "epoch_s": ue, "final_s": final[enc],
                "valid_s": val, "validations": n_valid,
                "setup_s": setup_s, "total_s": total, "frozen_step_s": times.frozen[enc],
                "unfrozen_step_s": times.unfrozen[enc], "batch_data_s": times.batch_data}  # fmt: skip
    return Plan(minutes, c, r, estimate, _fp_json(fp))


def validations(epochs: int, last: int) -> int:
    """How many of a phase's `epochs` are validated with `valid_last` = `last` (0: every one)."""
    return epochs if last == 0 else min(last, epochs)


def frozen_last(last: int, unfrozen: int) -> int:
    """The frozen phase's `valid_last`: the fit's `last` when it ends the fit, else its last epoch alone (0: every)."""
    return last if not unfrozen else min(last, 1)


def fit_validations(frozen: int, unfrozen: int, last: int) -> int:
    """Validations in a fit of `frozen` then `unfrozen` epochs with `valid_last` = `last` (0: every epoch)."""
    return validations(frozen, frozen_last(last, unfrozen)) + validations(unfrozen, last)


def _most_epochs(cost: _Cost, train_s: float, minutes: float) -> int:
    """The most epochs whose training and validations take at most `train_s`; fewer than 2 is a one-line error."""
    epochs = 2
    if cost(epochs) > train_s:
        need = (minutes * 60 * (1 - MARGIN) - train_s + cost(epochs)) / 60 / (1 - MARGIN)
        raise TrainingError(f"--minutes {minutes:g}: too short for this data here: set-up, 2 epochs and the final "
                            f"evaluation take ~{need:.1f} min; give --minutes {math.ceil(need)} or more")  # fmt: skip
    while cost(epochs + 1) <= train_s:
        epochs += 1
    return epochs


def _frozen(epochs: int) -> int:
    return max(1, round(FROZEN_SHARE * epochs))


@dataclass
class _Cost:
    """Seconds of training `epochs` (a share frozen), their validations included: `fe`/`ue` a frozen/unfrozen
    epoch's training, `val` one validation, `given`: the valid_last the user gave (None: planned)."""

    fe: float
    ue: float
    val: float
    given: int | None

    def last(self, unfrozen: int) -> int:
        if self.given is not None:
            return self.given
        return min(unfrozen, max(2, math.ceil(VALID_SHARE * unfrozen)))

    def __call__(self, epochs: int) -> float:
        frozen = _frozen(epochs)
        n = fit_validations(frozen, epochs - frozen, self.last(epochs - frozen))
        return frozen * self.fe + (epochs - frozen) * self.ue + n * self.val


def _fp_json(fp: Fingerprint) -> dict:
    d = asdict(fp)
    d["thinnest"] = list(fp.thinnest)
    d["imbalance"] = fp.imbalance
    return d


def timed(fn, n: int = 3, warm: int = 1) -> float:
    """Median seconds of `fn()` over `n` calls after `warm` calls."""
    for _ in range(warm):
        fn()
    runs = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return float(np.median(runs))
