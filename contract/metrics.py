"""Accuracy against ground truth, the int8 rule, and the held-out check bundled with an exported model.

- Metrics: a confusion matrix over the pixels whose truth is not Void; per-class Dice and IoU; their
  means over the scored classes (all but Void and a class named "background"). Training reports them,
  the export and the service use them to judge the int8 variant.
- The rule (MLPerf's for quantized models): int8 is kept when its task metric on held-out images with
  ground truth is at least MIN_RATIO of fp32's on the same images. The task metric is mean IoU for
  CamVid-layout (street scene) data and foreground Dice otherwise (the figure `fit` reports); pixel
  agreement with fp32 is reported as information only.
- The check: the export writes a few held-out images (at the model's training size) and their masks to
  `check/` in the model folder; at start-up the service scores int8 and fp32 on them with the CPU it runs
  on (int8 kernels differ between CPUs: VNNI or not) and serves fp32 if int8 fails the rule there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

MIN_RATIO = 0.99  # int8 keeps >= 99 % of fp32's task metric
CHECK_DIR = "check"
CHECK_MAX_IMAGES = 16
CHECK_MAX_PIXELS = 1_000_000  # in all: bounds the start-up check (CamVid 360x480: 5 images)
SAME_KERNELS = 0.995  # start-up: int8 here keeps >= this share of what int8 scored on the same images where exported


def confusion(pred: np.ndarray, truth: np.ndarray, n: int, void: int | None = None) -> np.ndarray:
    """(n, n) pixel counts, rows = truth, columns = prediction; pixels whose truth is `void` are left out."""
    truth, pred = truth.astype(np.int64).ravel(), pred.astype(np.int64).ravel()
    if void is not None:
        keep = truth != void
        truth, pred = truth[keep], pred[keep]
    return np.bincount(truth * n + pred, minlength=n * n).reshape(n, n)


def scored_classes(codes, void: int | None = None) -> list[int]:
    """The classes the summary metrics average: all but Void and a class literally named "background"."""
    scored = [i for i, c in enumerate(codes) if i != void and c.lower() != "background"]
    return scored or [i for i in range(len(codes)) if i != void]


def metrics_from_confusion(cm: np.ndarray, codes, void: int | None = None) -> dict:
    """Pixel accuracy, per-class Dice and IoU, and their means over the scored classes (`dice_fg`,
    `iou_fg` = mean IoU): background and Void are not averaged in; Void pixels are not counted at all."""
    cm = cm.copy()
    if void is not None:
        cm[void, :] = 0
    tp = np.diag(cm).astype(np.float64)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), np.nan)
    fg = scored_classes(codes, void)
    return {
        "pixel_acc": float(tp.sum() / max(cm.sum(), 1)),
        "dice": {c: (None if np.isnan(v) or i == void else float(v)) for i, (c, v) in enumerate(zip(codes, dice))},
        "iou": {c: (None if np.isnan(v) or i == void else float(v)) for i, (c, v) in enumerate(zip(codes, iou))},
        "dice_fg": float(np.nanmean(dice[fg])) if np.isfinite(dice[fg]).any() else 0.0,
        "iou_fg": float(np.nanmean(iou[fg])) if np.isfinite(iou[fg]).any() else 0.0,
        "scored_classes": [codes[i] for i in fg],
    }


def score(preds, truths, codes, void: int | None = None) -> dict:
    """Metrics of predicted masks against their truths (pairs of equal-shape (H, W) class-id arrays)."""
    n = len(codes)
    cm = np.zeros((n, n), np.int64)
    for pred, truth in zip(preds, truths):
        cm += confusion(pred, truth, n, void)
    return metrics_from_confusion(cm, list(codes), void)


def task_metric(layout: str | None) -> str:
    """The metric the rule compares: mean IoU for street scenes (CamVid layout), foreground Dice otherwise."""
    from .datasets import STREET_LAYOUTS

    return "iou_fg" if layout in STREET_LAYOUTS else "dice_fg"


def rule(fp32: dict, int8: dict, metric: str, min_ratio: float | None = None) -> dict:
    """MLPerf's rule on two metric dicts (from `score`): int8 kept when int8[metric] >= min_ratio * fp32[metric]
    (default MIN_RATIO)."""
    min_ratio = MIN_RATIO if min_ratio is None else min_ratio
    a, b = float(fp32[metric]), float(int8[metric])
    ratio = b / a if a > 0 else (1.0 if b >= a else 0.0)
    return {
        "metric": metric,
        "fp32": a,
        "int8": b,
        "ratio": ratio,
        "min_ratio": min_ratio,
        "kept": bool(ratio >= min_ratio),
    }


def recheck(result: dict, info: dict) -> dict:
    """The start-up verdict on the bundled images (`result` from `judge`, `info` their check.json). The export judged
    int8 on all its held-out images; the few bundled ones are there to catch this CPU's int8 kernels differing from
    the export's (16-bit saturation without VNNI, say), not to judge it again on a small sample: int8 is kept when it
    keeps the rule here, or when it scores here at least SAME_KERNELS of what it scored on the same images where it
    was exported."""
    exported = info.get("exported") or {}
    there = exported.get("int8")
    if result["kept"] or there is None:
        return result
    same = result["int8"] >= SAME_KERNELS * there
    why = f"int8 {result['int8']:.4f} here vs {there:.4f} where exported on the same images"
    return {**result, "kept": same, "kernels": why + (" (same kernels: kept)" if same else f" (< {SAME_KERNELS:.1%})")}


def explain(result: dict) -> str:
    """One line for logs and /model: what the rule compared and how it came out."""
    names = {"iou_fg": "mean IoU", "dice_fg": "foreground Dice"}
    verdict = ">=" if result["ratio"] >= result["min_ratio"] else "<"  # kept may also be recheck's
    return (
        f"{names.get(result['metric'], result['metric'])} int8 {result['int8']:.4f} vs fp32 {result['fp32']:.4f} = "
        f"{result['ratio']:.2%} of fp32 {verdict} {result['min_ratio']:.0%}"
    )


def check_subset(n: int, size: tuple[int, int]) -> int:
    """How many held-out images of `size` the model folder keeps for the start-up check."""
    return max(1, min(n, CHECK_MAX_IMAGES, CHECK_MAX_PIXELS // max(1, size[0] * size[1])))


def write_check(
    folder: Path, images: np.ndarray, truths: np.ndarray, codes, void: int | None, metric: str, exported=None
) -> None:
    """`folder`/check/: image_<i>.png (RGB at the training size), mask_<i>.png (class ids), check.json (with
    `exported`: fp32's and int8's metric on these images where the export ran, when it kept int8)."""
    d = Path(folder) / CHECK_DIR
    d.mkdir()
    for i, (image, truth) in enumerate(zip(images, truths)):
        Image.fromarray(image).save(d / f"image_{i}.png")
        Image.fromarray(truth.astype(np.uint8)).save(d / f"mask_{i}.png")
    (d / "check.json").write_text(
        json.dumps(
            {
                "images": len(images),
                "codes": list(codes),
                "void": void,
                "metric": metric,
                "min_ratio": MIN_RATIO,
                "exported": exported,
            },
            indent=2,
        )
    )


def read_check(folder: Path) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """(images (N, H, W, 3) uint8, truths (N, H, W) uint8, check.json) from a model folder, or None when it has no
    check."""
    d = Path(folder) / CHECK_DIR
    if not (d / "check.json").is_file():
        return None
    info = json.loads((d / "check.json").read_text())
    images = np.stack([np.asarray(Image.open(d / f"image_{i}.png").convert("RGB")) for i in range(info["images"])])
    truths = np.stack([np.asarray(Image.open(d / f"mask_{i}.png")) for i in range(info["images"])])
    return images, truths, info


def run_masks(run, images: np.ndarray, batch: int = 8) -> np.ndarray:
    """`run` ((N, H, W, 3) uint8 -> (N, H, W) uint8) over `images` in batches."""
    return np.concatenate([run(images[i : i + batch]) for i in range(0, len(images), batch)])


def judge(run_fp32, run_int8, images: np.ndarray, truths: np.ndarray, codes, void: int | None, metric: str) -> dict:
    """Both variants on the same images against the truths: the rule's result, both metrics and their agreement."""
    a, b = run_masks(run_fp32, images), run_masks(run_int8, images)
    m32, m8 = score(a, truths, codes, void), score(b, truths, codes, void)
    return {
        **rule(m32, m8, metric),
        "agreement": float((a == b).mean()),
        "images": len(images),
        "fp32_metrics": {k: m32[k] for k in ("dice_fg", "iou_fg", "pixel_acc")},
        "int8_metrics": {k: m8[k] for k in ("dice_fg", "iou_fg", "pixel_acc")},
    }


# Confidence: how sure the model was of an answer, from the class probabilities it outputs (the graph's `probs`).
UNCERTAIN_BELOW = 0.6  # default SEG_UNCERTAIN_BELOW: a pixel whose top-1 probability is below it counts as uncertain
DRIFT_BINS = 5  # equal-frequency bins of the reference's per-answer mean confidence, for the drift statistic (PSI)
DRIFT_ALERT = 0.25  # PSI above which the confidence distribution has shifted (the usual "significant shift" level)


def confidence(top1: np.ndarray, below: float = UNCERTAIN_BELOW) -> dict:
    """Figures of an answer from its per-pixel top-1 probabilities (any shape, float): {"mean": mean top-1
    probability, "uncertain_fraction": share of pixels whose top-1 probability is below `below`}."""
    top1 = np.asarray(top1, np.float32)
    n = max(top1.size, 1)  # sum / n and count_nonzero: a third of mean()'s time on a served answer's 128x128
    return {"mean": float(np.add.reduce(top1, axis=None)) / n, "uncertain_fraction": np.count_nonzero(top1 < below) / n}


def reference(means: list[float], below: float = UNCERTAIN_BELOW, bins: int = DRIFT_BINS) -> dict:
    """The distribution of per-answer mean confidence on held-out images, as stored with the model: the inner edges
    of `bins` equal-frequency bins (for the drift statistic), and its summary."""
    m = np.sort(np.asarray(means, np.float64))
    edges = [float(np.quantile(m, q)) for q in np.linspace(0, 1, bins + 1)[1:-1]]
    return {"statistic": "psi", "bins": bins, "edges": edges, "images": int(len(m)), "uncertain_below": below,
            "mean": float(m.mean()), "p5": float(np.quantile(m, 0.05)), "p50": float(np.quantile(m, 0.5)),
            "alert": DRIFT_ALERT}  # fmt: skip


def psi(means: list[float], ref: dict) -> float:
    """Population stability index of per-answer mean confidences `means` against the reference's equal-frequency
    bins: sum over bins of (a - e) ln(a / e), e = 1 / bins, a = the answers' share in the bin (floored at 1e-4)."""
    if not len(means):
        return 0.0
    counts = np.bincount(np.searchsorted(ref["edges"], means, side="right"), minlength=ref["bins"])
    a = np.maximum(counts / counts.sum(), 1e-4)
    e = 1.0 / ref["bins"]
    return float(np.sum((a - e) * np.log(a / e)))
