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

from .config import SCHEDULES, TrainConfig
from .data import fit_dataset, split_pairs
from .errors import TrainingError
from .learner import dataloaders_for, learner_for
from .losses import class_balance
from .run import write_run


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
    ds = fit_dataset(config.data, config.valid)
    out = config.out
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"{out}: run folder exists and is not empty; pass a new --out")
    train_idx, valid_idx = split_pairs(ds, config.valid_pct, config.seed)
    size = config.resolved_size(ds)
    frozen, unfrozen = config.schedule(len(train_idx))
    weights, balance = class_balance(config, ds, train_idx)
    print(
        f"      {ds.layout} layout, {len(ds.pairs)} images ({len(train_idx)} train, {len(valid_idx)} "
        + ("held out at random" if ds.valid_from is None else f"validation: {_valid_name(ds, config)}")
        + "), "
        f"classes: {', '.join(ds.codes)}" + (f" ({ds.codes[ds.void]} ignored)" if ds.void is not None else ""),
        flush=True,
    )
    if balance["used"]:
        print(
            "      class weights (median frequency): "
            + ", ".join(f"{c} {w:.2f}" for c, w in balance["weights"].items()),
            flush=True,
        )
    what = (
        f"{size[0]}x{size[1]}"
        + (f", random {config.crop[0]}x{config.crop[1]} crops" if config.crop else "")
        + (f" ({config.class_crops:.0%} centred on a class)" if config.class_crops else "")
        + (", progressive (half size first)" if config.progressive else "")
        + f", augmentation {config.resolved_augment()}, loss {config.resolved_loss()}"
    )
    print(
        f"[2/4] building U-Net on {config.encoder} "
        f"({'pretrained' if config.pretrained or config.weights else 'random init'}) at {what}",
        flush=True,
    )
    learn, ds = learner_for(config, ds, weights=weights, half=config.progressive and frozen > 0)
    out.mkdir(parents=True, exist_ok=True)
    learn.path = out
    learn.model_dir = "."
    if config.lr_find:
        _lr_find(learn, config, out)
    steps = (frozen + unfrozen) * math.ceil(len(train_idx) / config.bs)
    precision = resolve_precision(config.precision, learn.dls.device)
    print(
        f"[3/4] training: {frozen} epochs encoder frozen (lr {config.lr:g}), then {unfrozen} unfrozen (lr "
        f"slice{config.lr_unfrozen}): "
        f"{steps} steps of {config.bs}, {precision}{', channels-last' if config.channels_last else ''} on "
        f"{learn.dls.device.type}",
        flush=True,
    )
    history, timings, kept = _train(learn, config, ds, frozen, unfrozen, precision)
    schedule = {
        "steps_budget": config.steps,
        "steps": steps,
        "frozen_epochs": frozen,
        "unfrozen_epochs": unfrozen,
        "kept_epoch": kept,
        "precision": precision,
        "channels_last": config.channels_last,
    }
    report = write_run(learn, config, ds, (train_idx, valid_idx), size, history, schedule, balance, timings)
    report["timings"]["total_s"] = time.perf_counter() - t0
    (out / "report.json").write_text(json.dumps(report, indent=2))
    metrics = report["metrics"]
    iou = "" if not ds.street else f", mean IoU {metrics['iou_fg']:.3f}"
    shifted = report["shifted"]
    print(
        f"      Dice {metrics['dice_fg']:.3f} ({', '.join(metrics['scored_classes'])}){iou}, "
        f"pixel accuracy {metrics['pixel_acc']:.3f}, training {timings['train_s'] / 60:.1f} min",
        flush=True,
    )
    print(
        f"      under camera shifts: {shifted['metric']} {shifted['shifted_mean']:.3f} on average "
        f"({shifted['ratio']:.0%} of clean; "
        + ", ".join(f"{k} {v[shifted['metric']]:.3f}" for k, v in shifted["shifts"].items())
        + "; shifts.png)",
        flush=True,
    )
    return report


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
    learn, config: TrainConfig, ds, frozen: int, unfrozen: int, precision: str = "fp32"
) -> tuple[list, dict, int | None]:
    """The frozen phase, then the unfrozen one at discriminative learning rates, in `precision` (resolved: fp32 or
    bf16); the best validation epoch of the last phase is kept (SaveModelCallback) unless --last-epoch. Returns
    (history, timings, kept epoch)."""
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
            _phases(learn, config, ds, frozen, unfrozen, best, history, timings)
    finally:
        learn.remove_cbs(speed)
    last_phase = [h for h in history if h["phase"] == ("unfrozen" if unfrozen else "frozen")]
    kept = (
        max(last_phase, key=lambda h: h.get("dice_fg") or 0)["epoch"]
        if config.keep_best and last_phase
        else (history[-1]["epoch"] if history else None)
    )
    (learn.path / "best.pth").unlink(missing_ok=True)
    return history, timings, kept


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
        print("  ".join(f"{v:>10.6f}" if isinstance(v, float) else f"{v!s:>10}" for v in log), file=out, flush=True)

    with learn.no_bar():
        old, learn.logger = learn.logger, line
        try:
            yield
        finally:
            learn.logger = old


def _phases(
    learn, config: TrainConfig, ds, frozen: int, unfrozen: int, best: list, history: list, timings: dict
) -> None:
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


def _history(learn, phase: str, start_epoch: int) -> list[dict]:
    names = [n for n in learn.recorder.metric_names[1:-1]]  # drop "epoch" and "time"
    rows = []
    for i, vals in enumerate(learn.recorder.values):
        row = {"epoch": start_epoch + i, "phase": phase}
        row.update({n: (float(v) if v is not None else None) for n, v in zip(names, vals)})
        rows.append(row)
    return rows
