"""Fit a fastai U-Net with transfer learning, as the workshop teaches it.

1. encoder frozen (ImageNet weights), the decoder ("head") trained with `fit_one_cycle`;
2. encoder unfrozen, everything trained with discriminative learning rates `slice(lo, hi)`.

Images are squished to `size` (H, W; the training scale), and trained whole or as random `crop`s at
that scale (validation always sees whole images). The schedule is a budget of optimiser steps, turned
into epochs for the data set's size; the best epoch on the validation Dice is kept. Rare classes get a
median-frequency weighted loss when classes are unbalanced; a Void class is ignored by the loss and the
metrics. The run folder is written by `training.run`."""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
from fastai.callback.core import Callback, CancelValidException

from .config import SCHEDULES, TrainConfig
from .data import fit_dataset, split_pairs
from .errors import TrainingError
from .learner import dataloaders_for, learner_for
from .losses import class_balance
from .plan import frozen_last
from .run import write_run


def fit(config: TrainConfig) -> dict:
    """Train and write the run folder; returns the report (also written as report.json). With `config.minutes`
    the recipe is planned first (training.plan) and the fit sized to end within that many minutes."""
    t0 = time.perf_counter()
    _seed(config.seed)
    print(f"[1/4] checking data in {config.data}", flush=True)
    ds = fit_dataset(config.data, config.valid)
    if config.out.exists() and any(config.out.iterdir()):
        raise TrainingError(f"{config.out}: run folder exists and is not empty; pass a new --out")
    train_idx, valid_idx = split_pairs(ds, config.valid_pct, config.seed)
    print(f"      {ds.layout} layout, {len(ds.pairs)} images ({len(train_idx)} train, {len(valid_idx)} "
          + ("held out at random" if ds.valid_from is None else f"validation: {_valid_name(ds, config)}")
          + f"), classes: {', '.join(ds.codes)}" + (f" ({ds.codes[ds.void]} ignored)" if ds.void is not None else ""),
          flush=True)  # fmt: skip
    plan = None
    if config.minutes:
        config, plan = _plan(config, ds, train_idx, valid_idx, t0)
    weights, balance = class_balance(config, ds, train_idx)
    if balance["used"]:
        kind = "square roots of median-frequency weights" if config.class_weights == "sqrt" else "median frequency"
        print(f"      class weights ({kind}): "
              + ", ".join(f"{c} {w:.2f}" for c, w in balance["weights"].items()), flush=True)  # fmt: skip
    frozen, unfrozen = config.schedule(len(train_idx))
    learn, precision = _learner(config, ds, weights, frozen)
    steps = (frozen + unfrozen) * math.ceil(len(train_idx) / config.bs)
    print(f"[3/4] training: {frozen} epochs encoder frozen (lr {config.lr:g}), then {unfrozen} unfrozen (lr "
          f"slice{config.lr_unfrozen}): {steps} steps of {config.bs}, {precision}"
          f"{', channels-last' if config.channels_last else ''} on {learn.dls.device.type}", flush=True)  # fmt: skip
    history, timings, kept, unfrozen = _train(learn, config, ds, frozen, unfrozen, precision, plan, t0)
    schedule = {"steps_budget": config.steps, "steps": (frozen + unfrozen) * math.ceil(len(train_idx) / config.bs),
                "frozen_epochs": frozen, "unfrozen_epochs": unfrozen, "kept_epoch": kept, "precision": precision,
                "channels_last": config.channels_last}  # fmt: skip
    report = write_run(learn, config, ds, (train_idx, valid_idx), config.resolved_size(ds), history, schedule,
                       balance, timings, plan)  # fmt: skip
    report["timings"]["total_s"] = time.perf_counter() - t0
    (config.out / "report.json").write_text(json.dumps(report, indent=2))
    _summary(report, ds, timings, plan)
    return report


def _seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators: fastai's augmentations draw from Python's `random` too."""
    import torch
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)
    from fastai.callback.tracker import SaveModelCallback  # noqa: F401

    # both imported before the seeding: importing them draws from the random generators (it changed every fit when
    # they were first imported later, in _train)
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed)


def _plan(config: TrainConfig, ds, train_idx, valid_idx, t0: float):
    """The planned configuration and its Plan (training.plan), printed with its reasons; options the user gave
    (config.fixed) stay as given."""
    import dataclasses

    from fastai.torch_core import default_device

    from .plan import ENCODER_MIN_STEPS, choose, fingerprint, geometry
    from .precision import resolve_precision
    from .probe import probe

    fixed = {k: getattr(config, k) for k in config.fixed}
    print(f"[2/4] planning {config.minutes:g} min: the data's fingerprint, then a few steps timed here", flush=True)
    fp = fingerprint(ds, train_idx, valid_idx)
    size, crop, bs, _ = geometry(fp, fixed)
    precision = resolve_precision(config.precision, default_device())
    encoders = [config.encoder] if "encoder" in fixed else list(ENCODER_MIN_STEPS)
    times = probe(config, ds, encoders, size, crop, bs, precision)
    plan = choose(fp, config.minutes, times, setup_s=time.perf_counter() - t0, bf16=precision == "bf16", fixed=fixed)
    for line in plan.lines():
        print("      " + line, flush=True)
    return dataclasses.replace(config, **plan.choices), plan


def _learner(config: TrainConfig, ds, weights, frozen: int):
    """[2/4]: the Learner the configuration describes, and the precision it trains in."""
    from .precision import resolve_precision

    what = (
        f"{'x'.join(map(str, config.resolved_size(ds)))}"
        + (f", random {config.crop[0]}x{config.crop[1]} crops" if config.crop else "")
        + (f" zoomed {config.zoom[0]:g}-{config.zoom[1]:g}x" if config.zoom else "")
        + (f" ({config.class_crops:.0%} centred on a class)" if config.class_crops else "")
        + (", progressive (half size first)" if config.progressive else "")
        + f", augmentation {config.resolved_augment()}, loss {config.resolved_loss()}"
    )
    init = "pretrained" if config.pretrained or config.weights else "random init"
    print(f"[2/4] building U-Net on {config.encoder} ({init}) at {what}", flush=True)
    learn, _ = learner_for(config, ds, weights=weights, half=config.progressive and frozen > 0)
    config.out.mkdir(parents=True, exist_ok=True)
    learn.path, learn.model_dir = config.out, "."
    if config.lr_find:
        _lr_find(learn, config, config.out)
    return learn, resolve_precision(config.precision, learn.dls.device)


def _summary(report: dict, ds, timings: dict, plan) -> None:
    """The last lines: the held-out figures, clean and under the camera shifts, and the time against the budget."""
    metrics, shifted = report["metrics"], report["shifted"]
    iou = "" if not ds.street else f", mean IoU {metrics['iou_fg']:.3f}"
    print(f"      Dice {metrics['dice_fg']:.3f} ({', '.join(metrics['scored_classes'])}){iou}, pixel accuracy "
          f"{metrics['pixel_acc']:.3f}, training {timings['train_s'] / 60:.1f} min", flush=True)  # fmt: skip
    print(f"      under camera shifts: {shifted['metric']} {shifted['shifted_mean']:.3f} on average "
          f"({shifted['ratio']:.0%} of clean; "
          + ", ".join(f"{k} {v[shifted['metric']]:.3f}" for k, v in shifted["shifts"].items()) + "; shifts.png)",
          flush=True)  # fmt: skip
    if plan is not None:
        total = report["timings"]["total_s"] / 60
        print(
            f"      the whole fit took {total:.1f} min of its {plan.minutes:g} ({total / plan.minutes:.0%})", flush=True
        )


def _valid_name(ds, config: TrainConfig) -> str:
    """Where the explicit validation set comes from, for the progress line."""
    return str(config.valid) if config.valid else f"{ds.root}/val, test/ never read"


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


def _train(
    learn, config: TrainConfig, ds, frozen: int, unfrozen: int, precision: str = "fp32", plan=None, t0: float = 0.0
) -> tuple[list, dict, int | None, int]:
    """The frozen phase, then the unfrozen one at discriminative learning rates, in `precision` (resolved: fp32 or
    bf16); the best validation epoch of the last phase is kept (SaveModelCallback) unless --last-epoch. With a
    `plan`, the unfrozen epochs are re-sized after the frozen phase to end within its budget (`t0`: the fit's start).
    Returns (history, timings, kept epoch, unfrozen epochs)."""
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)
    from fastai.callback.tracker import SaveModelCallback

    from .precision import speed_callbacks

    history, timings = [], {}
    best = (
        [SaveModelCallback(monitor="dice_fg", comp=np.greater, fname="best", with_opt=False)]
        if config.keep_best
        else []
    )
    speed = speed_callbacks(precision, config.channels_last)
    learn.add_cbs(speed)
    try:
        with epoch_lines(learn):
            unfrozen = _phases(learn, config, ds, (frozen, unfrozen), best, history, timings, plan, t0)
    finally:
        learn.remove_cbs(speed)
    last_phase = [h for h in history if h["phase"] == ("unfrozen" if unfrozen else "frozen")]
    validated = [h for h in last_phase if h.get("dice_fg") is not None] or last_phase  # as SaveModelCallback saw
    kept = (
        max(validated, key=lambda h: h.get("dice_fg") or 0)["epoch"]
        if config.keep_best and validated
        else (history[-1]["epoch"] if history else None)
    )
    (learn.path / "best.pth").unlink(missing_ok=True)
    return history, timings, kept, unfrozen


@contextlib.contextmanager
def epoch_lines(learn, out=None):
    """fastai's progress bars on a terminal; elsewhere (a log file, a pipe) none of their carriage-return frames, only
    fastai's table of epochs, one line each (its header before each phase's first epoch), flushed as it comes."""
    out = out or sys.stdout
    if out.isatty():
        yield
        return

    def line(log):
        if log and log[0] == 0:
            print("  ".join(f"{n:>10}" for n in learn.recorder.metric_names), file=out, flush=True)
        cells = (("-" if v != v else f"{v:.6f}") if isinstance(v, float) else str(v) for v in log)  # NaN: not run
        print("  ".join(f"{c:>10}" for c in cells), file=out, flush=True)

    with learn.no_bar():
        old, learn.logger = learn.logger, line
        try:
            yield
        finally:
            learn.logger = old


def _phases(
    learn, config: TrainConfig, ds, epochs: tuple[int, int], best: list, history: list, timings: dict, plan, t0: float
) -> int:
    """Both phases of `_train` (`epochs`: frozen, unfrozen), appending to `history` and `timings`; returns the
    unfrozen epochs run (a plan re-sizes them after the frozen phase, unless the user gave the schedule)."""
    frozen, unfrozen = epochs
    t = time.perf_counter()
    method, shape_frozen, shape_unfrozen = SCHEDULES[config.schedule_shape]
    check = ValidateLast(frozen_last(config.valid_last, unfrozen))
    if frozen:
        learn.freeze()
        getattr(learn, method)(frozen, config.lr, cbs=[check] + (best if not unfrozen else []), **shape_frozen)
        history += _history(learn, "frozen", 0)
    timings["frozen_s"] = time.perf_counter() - t
    if plan is not None and frozen and "unfrozen_epochs" in plan.choices and "unfrozen_epochs" not in config.fixed:
        train_s = (timings["frozen_s"] - sum(check.seconds)) / frozen
        valid_s = float(np.mean(check.seconds)) if check.seconds else None
        unfrozen = plan.unfrozen_epochs(time.perf_counter() - t0, train_s, valid_s)
        print(
            f"      {unfrozen} unfrozen epochs fit in what is left of {plan.minutes:g} min (planned "
            f"{plan.choices['unfrozen_epochs']}; a frozen epoch trained in {train_s:.0f} s"
            + (f", a validation took {valid_s:.0f} s)" if valid_s is not None else ")"),
            flush=True,
        )
    t = time.perf_counter()
    if unfrozen:
        if config.progressive and frozen:
            learn.dls = dataloaders_for(config, ds)
        learn.unfreeze()
        check = ValidateLast(config.valid_last)
        getattr(learn, method)(unfrozen, slice(*config.lr_unfrozen), cbs=[check] + best, **shape_unfrozen)
        history += _history(learn, "unfrozen", len(history))
    timings["unfrozen_s"] = time.perf_counter() - t
    timings["train_s"] = timings["frozen_s"] + timings["unfrozen_s"]
    return unfrozen


class ValidateLast(Callback):
    """Validate only in the last `last` epochs of a fit (0: every epoch); an epoch not validated gets NaN for the
    validation loss and metrics (SaveModelCallback never takes it for the best; the history holds None). `seconds`:
    the time of each validation run, for the plan's re-sizing. Ordered after fastai's Recorder, before its trackers."""

    order = 55

    def __init__(self, last: int):
        self.last, self.seconds, self._t = last, [], None

    def before_validate(self):
        if self.last and self.epoch < self.n_epoch - self.last:
            raise CancelValidException()
        self._t = time.perf_counter()

    def after_cancel_validate(self):
        self.recorder.log += [float("nan")] * (1 + len(self.learn.metrics))
        self._t = None

    def after_validate(self):
        if self._t is not None:
            self.seconds.append(time.perf_counter() - self._t)


def _history(learn, phase: str, start_epoch: int) -> list[dict]:
    names = [n for n in learn.recorder.metric_names[1:-1]]  # drop "epoch" and "time"
    rows = []
    for i, vals in enumerate(learn.recorder.values):
        row = {"epoch": start_epoch + i, "phase": phase}
        row.update({n: (float(v) if v is not None and v == v else None) for n, v in zip(names, vals)})  # NaN: None
        rows.append(row)
    return rows
