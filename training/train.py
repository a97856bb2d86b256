"""Fit a fastai U-Net with transfer learning, as the workshop teaches it.

1. encoder frozen (ImageNet weights), the decoder ("head") trained with `fit_one_cycle`;
2. encoder unfrozen, everything trained with discriminative learning rates `slice(lo, hi)`.
The run folder keeps what export needs to rebuild the learner: config.json and model.pth (a state_dict,
no pickle), plus report.json, results.png and curves.png for people to look at.
"""
from __future__ import annotations

import json
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .data import Dataset, load_dataset, make_dataloaders, split_pairs
from .errors import TrainingError
from .model import ENCODERS, build_learner

# One colour per class for plots, palette PNGs and the exported metadata (background black).
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
           (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)]


def class_colours(n: int) -> list[list[int]]:
    """`n` distinct RGB colours, background first; beyond the palette, deterministic pseudo-random ones."""
    rng = np.random.default_rng(12345)
    return [list(PALETTE[i]) if i < len(PALETTE) else rng.integers(0, 256, 3).tolist() for i in range(n)]


@dataclass
class TrainConfig:
    data: Path
    out: Path
    encoder: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: Path | None = None
    allow_random: bool = False
    size: int = 128
    bs: int = 8
    valid_pct: float = 0.2
    seed: int = 42
    frozen_epochs: int = 3
    unfrozen_epochs: int = 12
    lr: float = 4e-3  # head learning rate (frozen phase)
    lr_unfrozen: tuple[float, float] = (2e-4, 2e-3)  # slice(lo, hi) for the unfrozen phase
    augment: bool = True
    lr_find: bool = False
    lr_find_iters: int = 100
    last_cross: bool = True
    n_show: int = 4
    threads: int | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.data, self.out = Path(self.data), Path(self.out)
        self.weights = Path(self.weights) if self.weights else None
        if self.size % 32:
            raise TrainingError(f"--size {self.size} is not a multiple of 32; use {max(32, round(self.size / 32) * 32)}")
        if self.encoder not in ENCODERS:
            raise TrainingError(f"unknown encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        self.lr_unfrozen = tuple(self.lr_unfrozen)

    def to_json(self) -> dict:
        d = asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
        d["weights"] = str(self.weights) if self.weights else None
        return d


def versions() -> dict:
    import fastai
    import torch

    return {"fastai": fastai.__version__, "torch": torch.__version__, "python": platform.python_version(), "numpy": np.__version__}


def confusion(pred: np.ndarray, truth: np.ndarray, n: int) -> np.ndarray:
    """(n, n) pixel counts, rows = truth, columns = prediction."""
    return np.bincount(truth.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel(), minlength=n * n).reshape(n, n)


def metrics_from_confusion(cm: np.ndarray, codes) -> dict:
    """Pixel accuracy, per-class Dice and IoU, and their foreground means (classes 1..C-1)."""
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    fg = slice(1, None) if len(codes) > 1 else slice(0, None)
    return {
        "pixel_acc": float(tp.sum() / max(cm.sum(), 1)),
        "dice": {c: (None if np.isnan(v) else float(v)) for c, v in zip(codes, dice)},
        "iou": {c: (None if np.isnan(v) else float(v)) for c, v in zip(codes, iou)},
        "dice_fg": float(np.nanmean(dice[fg])) if np.isfinite(dice[fg]).any() else 0.0,
        "iou_fg": float(np.nanmean(iou[fg])) if np.isfinite(iou[fg]).any() else 0.0,
    }


def _fastai_metrics(n_classes: int):
    """Metrics shown in fastai's progress table: pixel accuracy and foreground Dice."""
    import torch
    from fastai.learner import Metric

    class PixelAccuracy(Metric):
        name = "pixel_acc"

        def reset(self):
            self.hit, self.total = 0, 0

        def accumulate(self, learn):
            pred, y = learn.pred.argmax(dim=1), learn.y
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
            pred, y = learn.pred.argmax(dim=1).flatten().cpu(), learn.y.flatten().long().cpu()
            self.cm += torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)

        @property
        def value(self):
            return metrics_from_confusion(self.cm.numpy(), [str(i) for i in range(n_classes)])["dice_fg"]

    return [PixelAccuracy(), ForegroundDice()]


def _history(learn, phase: str, start_epoch: int) -> list[dict]:
    names = [n for n in learn.recorder.metric_names[1:-1]]  # drop "epoch" and "time"
    rows = []
    for i, vals in enumerate(learn.recorder.values):
        row = {"epoch": start_epoch + i, "phase": phase}
        row.update({n: (float(v) if v is not None else None) for n, v in zip(names, vals)})
        rows.append(row)
    return rows


def evaluate(learn, ds: Dataset, valid_idx) -> tuple[dict, np.ndarray, np.ndarray]:
    """Metrics on the held-out images (fastai get_preds on the validation DataLoader)."""
    preds, targs = learn.get_preds(dl=learn.dls.valid)
    pred = preds.argmax(dim=1).numpy().astype(np.uint8)
    truth = targs.numpy().astype(np.uint8)
    cm = confusion(pred, truth, ds.n_classes)
    return metrics_from_confusion(cm, ds.codes), pred, truth


def save_results_png(learn, pred: np.ndarray, truth: np.ndarray, path: Path, n: int, colours) -> None:
    """image | truth | prediction for `n` validation images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(pred))
    items = learn.dls.valid_ds
    pal = np.array(colours, dtype=np.uint8)
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        img = np.asarray(items[i][0].resize((pred.shape[2], pred.shape[1])))
        for ax, arr, title in zip(axes[i], (img, pal[truth[i]], pal[pred[i]]), ("image", "truth", "prediction")):
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


def learner_for(config: TrainConfig, ds: Dataset | None = None, *, augment: bool | None = None):
    """Rebuild the learner (DataLoaders + U-Net) that `config` describes; used by fit and by export."""
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)
    ds = ds or load_dataset(config.data)
    spec = ENCODERS[config.encoder]
    dls = make_dataloaders(ds, size=config.size, bs=config.bs, mean=spec.mean, std=spec.std, valid_pct=config.valid_pct,
                           seed=config.seed, augment=config.augment if augment is None else augment)
    learn = build_learner(dls, n_out=ds.n_classes, encoder=config.encoder, pretrained=config.pretrained, weights=config.weights,
                          allow_random=config.allow_random, size=config.size, metrics=_fastai_metrics(ds.n_classes),
                          last_cross=config.last_cross)
    return learn, ds


def fit(config: TrainConfig) -> dict:
    """Train and write the run folder; returns the report (also written as report.json)."""
    import torch
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner.fit_one_cycle)

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
    print(f"      {ds.layout} layout, {len(ds.pairs)} images ({len(train_idx)} train, {len(valid_idx)} held out), classes: {', '.join(ds.codes)}", flush=True)
    print(f"[2/4] building U-Net on {config.encoder} ({'pretrained' if config.pretrained or config.weights else 'random init'}) at {config.size} px", flush=True)
    learn, ds = learner_for(config, ds)
    out.mkdir(parents=True, exist_ok=True)
    learn.path = out
    learn.model_dir = "."
    timings = {}
    if config.lr_find:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        learn.freeze()
        sug = learn.lr_find(num_it=config.lr_find_iters, show_plot=True)
        plt.gcf().savefig(out / "lr_find.png", dpi=80)
        plt.close("all")
        print(f"      lr_find suggests {sug.valley:.2e} (plot: {out / 'lr_find.png'})", flush=True)
    print(f"[3/4] training: {config.frozen_epochs} epochs encoder frozen (lr {config.lr:g}), then {config.unfrozen_epochs} unfrozen (lr slice{config.lr_unfrozen})", flush=True)
    history = []
    t = time.perf_counter()
    if config.frozen_epochs:
        learn.freeze()
        learn.fit_one_cycle(config.frozen_epochs, config.lr)
        history += _history(learn, "frozen", 0)
    timings["frozen_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if config.unfrozen_epochs:
        learn.unfreeze()
        learn.fit_one_cycle(config.unfrozen_epochs, slice(*config.lr_unfrozen))
        history += _history(learn, "unfrozen", len(history))
    timings["unfrozen_s"] = time.perf_counter() - t
    timings["train_s"] = timings["frozen_s"] + timings["unfrozen_s"]
    print(f"[4/4] evaluating on {len(valid_idx)} held-out images and writing {out}", flush=True)
    metrics, pred, truth = evaluate(learn, ds, valid_idx)
    colours = class_colours(ds.n_classes)
    spec = ENCODERS[config.encoder]
    run_meta = {
        "config": config.to_json(),
        "codes": list(ds.codes),
        "colours": colours,
        "layout": ds.layout,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "train_images": [str(ds.pairs[i][0]) for i in train_idx],
        "valid_images": [str(ds.pairs[i][0]) for i in valid_idx],
    }
    torch.save(learn.model.state_dict(), out / "model.pth")
    (out / "config.json").write_text(json.dumps(run_meta, indent=2))
    save_results_png(learn, pred, truth, out / "results.png", config.n_show, colours)
    save_curves_png(history, out / "curves.png")
    timings["total_s"] = time.perf_counter() - t0
    report = {"metrics": metrics, "history": history, "timings": timings, "versions": versions(), **run_meta}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"      foreground Dice {metrics['dice_fg']:.3f}, pixel accuracy {metrics['pixel_acc']:.3f}, training {timings['train_s'] / 60:.1f} min", flush=True)
    return report


def load_run(run_dir: Path):
    """Rebuild the trained learner of a run folder: returns (learn, run_meta, dataset)."""
    import torch

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.pth"
    if not cfg_path.is_file() or not weights.is_file():
        raise TrainingError(f"{run_dir}: not a training run (needs config.json and model.pth); train one with `python -m training fit`")
    meta = json.loads(cfg_path.read_text())
    c = dict(meta["config"])
    c.pop("extra", None)
    c["pretrained"] = False  # the trained weights are loaded below; no need for ImageNet ones
    c["weights"] = None
    config = TrainConfig(**c)
    learn, ds = learner_for(config, augment=False)
    learn.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    learn.model.eval()
    return learn, meta, ds
