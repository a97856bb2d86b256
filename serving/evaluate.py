"""Score an exported model on a labelled data set the field's way, through the served data path.

    python -m training evaluate --model MODEL_DIR --data DIR [--shifts all | dark,blur,...] [--out DIR]
    (also `python -m serving evaluate`: the same command, in the serving-only environment)

The protocol of the CamVid literature (SegNet, ENet, FC-DenseNet): every image at its own resolution through
`Segmenter` (the ONNX file and variant the service would pick on this machine: int8 where its accuracy rule keeps it
here), one confusion matrix summed over the whole set, pixels whose truth is Void left out; per class IoU and
accuracy (recall), mean IoU over the classes but Void, pixel accuracy. `--shifts` scores the same images as another
camera gives them (contract.shifts), labels unchanged. A SegNet folder is scored on its test/ split.

Writes report.json, confusion.png (rows: truth, columns: prediction, each row normalised) and overlays.png (image,
truth, prediction for the first images), and prints one table. Bad input is a one-line error, exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from contract.datasets import DataError, Dataset, load_dataset, read_mask
from contract.metadata import DEFAULT_MODEL_DIR, ContractError
from contract.metrics import confusion, metrics_from_confusion
from contract.shifts import SHIFTS

from .runtime import DEVICES, VARIANTS
from .segmenter import Segmenter

CHUNK = 8  # images decoded and run at a time
SHOWN = 4  # images drawn in overlays.png


class EvaluateError(Exception):
    """Bad arguments or data: printed as one line, exit code 2."""


def check_classes(model_classes, ds: Dataset) -> None:
    """The model must predict the data's classes, in the same order."""
    if tuple(model_classes) != tuple(ds.codes):
        raise EvaluateError(
            f"{ds.root}: its classes ({', '.join(ds.codes)}) differ from the model's ({', '.join(model_classes)}); "
            "evaluate a model trained on these classes, or give the data the model's codes.txt"
        )


def score_set(seg: Segmenter, ds: Dataset, shift=None, keep: int = 0) -> tuple[np.ndarray, list]:
    """The confusion matrix of the whole data set (rows truth, columns prediction, Void rows left out), and
    (image, truth, prediction) for the first `keep` images. `shift`: applied to each image first."""
    n = ds.n_classes
    cm, shown = np.zeros((n, n), np.int64), []
    for i in range(0, len(ds.pairs), CHUNK):
        part = ds.pairs[i : i + CHUNK]
        images = []
        for image_path, _ in part:
            with Image.open(image_path) as im:
                rgb = np.asarray(im.convert("RGB"))
            images.append(Image.fromarray(shift(rgb) if shift else rgb))
        for (_, mask_path), image, pred in zip(part, images, seg.predict_many(images)):
            truth = read_mask(mask_path, ds.binary_255)
            cm += confusion(pred, truth, n, ds.void)
            if len(shown) < keep:
                shown.append((np.asarray(image), truth, pred))
    return cm, shown


def summary(cm: np.ndarray, ds: Dataset) -> dict:
    """contract.metrics' figures of a confusion matrix, with per-class accuracy, its mean and the matrix."""
    m = metrics_from_confusion(cm, list(ds.codes), ds.void)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(cm) / cm.sum(1)
    m["accuracy"] = {c: (None if i == ds.void or not np.isfinite(recall[i]) else float(recall[i]))
                     for i, c in enumerate(ds.codes)}  # fmt: skip
    scored = [v for c, v in m["accuracy"].items() if c in m["scored_classes"] and v is not None]
    m["mean_class_accuracy"] = float(np.mean(scored)) if scored else 0.0
    m["confusion"] = cm.tolist()
    return m


def evaluate(model: Path, data: Path, out: Path, shifts=(), device: str = "auto", variant: str = "auto") -> dict:
    """Score `model` on `data` (clean, then under each of `shifts`), write `out` and return the report."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise EvaluateError(f"{out}: exists and is not empty; pass a new --out so no report is overwritten")
    unknown = [s for s in shifts if s not in SHIFTS]
    if unknown:
        raise EvaluateError(f"--shifts {','.join(unknown)}: unknown; use all or some of {', '.join(SHIFTS)}")
    ds = load_dataset(data, split="test")
    seg = Segmenter.load(model, device, variant)
    check_classes(seg.classes, ds)
    rt = seg.runtime
    print(f"scoring {model} ({rt.variant} on {rt.provider}: {rt.variant_reason}) on {len(ds.pairs)} images of {data}"
          + (f" ({ds.split})" if ds.split else "") + (f", clean and under {', '.join(shifts)}" if shifts else ""),
          file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.perf_counter()
    cm, shown = score_set(seg, ds, keep=SHOWN)
    report = {"model": str(model), "variant": rt.variant, "variant_reason": rt.variant_reason, "provider": rt.provider,
              "data": str(data), "layout": ds.layout, "split": ds.split, "images": len(ds.pairs),
              "protocol": "confusion matrix summed over the set at each image's own resolution, Void ignored",
              "clean": summary(cm, ds), "shifts": {}}  # fmt: skip
    for name in shifts:
        report["shifts"][name] = summary(score_set(seg, ds, SHIFTS[name])[0], ds)
        print(f"  {name}: mean IoU {report['shifts'][name]['iou_fg']:.3f}", file=sys.stderr, flush=True)
    if shifts:
        ious, clean = [r["iou_fg"] for r in report["shifts"].values()], report["clean"]["iou_fg"] or float("nan")
        report["shifted"] = {"mean_iou": float(np.mean(ious)), "ratio": float(np.mean(ious)) / clean,
                             "min_ratio": min(ious) / clean}  # fmt: skip
    report["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    confusion_png(cm, ds, out / "confusion.png")
    overlays_png(shown, seg.meta.colours, out / "overlays.png")
    return report


def table(report: dict) -> str:
    """Per class IoU and accuracy (and IoU under each shift), then the means."""
    clean, shifts = report["clean"], report["shifts"]
    head = f"{'class':<12} {'IoU':>6} {'acc':>6}" + "".join(f" {s:>7}" for s in shifts)
    lines = [head, "-" * len(head)]
    for c in clean["scored_classes"]:
        iou, acc = clean["iou"][c], clean["accuracy"][c]
        lines.append(f"{c:<12} {_f(iou)} {_f(acc)}" + "".join(f" {_f(s['iou'][c]):>7}" for s in shifts.values()))
    lines.append(f"{'mean':<12} {_f(clean['iou_fg'])} {_f(clean['mean_class_accuracy'])}"
                 + "".join(f" {_f(s['iou_fg']):>7}" for s in shifts.values()))  # fmt: skip
    lines.append(f"mean IoU {clean['iou_fg']:.3f}, pixel accuracy {clean['pixel_acc']:.3f}, mean class accuracy "
                 f"{clean['mean_class_accuracy']:.3f} on {report['images']} images ({report['variant']})")  # fmt: skip
    if shifts:
        s = report["shifted"]
        lines.append(f"under the shifts: mean IoU {s['mean_iou']:.3f} on average, {s['ratio']:.0%} of clean (lowest "
                     f"{s['min_ratio']:.0%})")  # fmt: skip
    return "\n".join(lines)


def _f(v) -> str:
    return f"{v:6.3f}" if v is not None else "     -"


def confusion_png(cm: np.ndarray, ds: Dataset, path: Path, cell: int = 34) -> None:
    """Rows truth, columns prediction, each row normalised to its share (white 0, dark blue 1), the share printed;
    Void left out."""
    keep = [i for i in range(ds.n_classes) if i != ds.void]
    sub = cm[np.ix_(keep, keep + ([ds.void] if ds.void is not None else []))].astype(np.float64)
    share = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    names = [ds.codes[i] for i in keep]
    left, top = 8 + 7 * max(map(len, names)), 8 + 7 * max(map(len, names)) // 2
    img = Image.new("RGB", (left + cell * sub.shape[1] + 8, top + cell * len(keep) + 24), "white")
    d = ImageDraw.Draw(img)
    for j, name in enumerate(names + (["Void"] if ds.void is not None else [])):
        d.text((left + j * cell + 2, top - 12 - 10 * (j % 2)), name[:6], fill="black")
    for i, name in enumerate(names):
        d.text((4, top + i * cell + cell // 2 - 5), name, fill="black")
        for j in range(sub.shape[1]):
            v = share[i, j]
            colour = tuple(int(255 - v * (255 - c)) for c in (20, 60, 150))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            d.rectangle(box, fill=colour)
            d.text((box[0] + 3, box[1] + cell // 2 - 5), f"{v:.2f}"[1:] if v < 1 else "1.0",
                   fill="white" if v > 0.5 else "black")  # fmt: skip
    d.text((left, top + cell * len(keep) + 6), "rows: truth, columns: prediction (share of the row)", fill="black")
    img.save(path)


def overlays_png(shown: list, colours, path: Path) -> None:
    """One row per image: the image, the truth and the prediction in the class colours (Void black)."""
    if not shown:
        return
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colours)] = np.asarray(colours, np.uint8)
    h, w = shown[0][0].shape[:2]
    rows = []
    for image, truth, pred in shown:
        cells = [image, palette[np.where(truth < len(colours), truth, 255)], palette[pred]]
        rows.append(np.concatenate([np.asarray(Image.fromarray(c).resize((w, h), Image.NEAREST)) for c in cells], 1))
    Image.fromarray(np.concatenate(rows, 0)).save(path)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="exported model folder (or BentoML tag)")
    p.add_argument("--data", type=Path, required=True, help="labelled folder (any layout fit reads; SegNet: test/)")
    p.add_argument("--shifts", default="", help="also score under camera shifts: all, or some of " + ",".join(SHIFTS))
    p.add_argument("--out", type=Path, help="report folder (default runs/evaluate/<model>-<data>)")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--variant", choices=VARIANTS, default="auto", help="auto: the one the service would pick")


def run(a: argparse.Namespace) -> int:
    """The command: one table on stdout, or a one-line error and exit code 2."""
    import logging

    logging.getLogger("serving").setLevel(logging.ERROR)  # the runtime's start-up line: said in our own below
    shifts = tuple(SHIFTS) if a.shifts == "all" else tuple(s for s in a.shifts.split(",") if s)
    out = a.out or Path("runs") / "evaluate" / f"{Path(a.model).name}-{Path(a.data).resolve().name}"
    try:
        report = evaluate(a.model, a.data, out, shifts, a.device, a.variant)
    except (EvaluateError, DataError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    print(f"wrote {out}/report.json, confusion.png, overlays.png", file=sys.stderr)
    return 0
