"""CamVid-layout street scenes: today's path against training at the data's own scale, at one budget.

    python -m benchmarks.camvid [--work runs/camvid] [--n 150] [--epochs 2 6] [--only A E]

Writes `--n` synthetic 360x480 street scenes (training.synth, CamVid layout: Sky, Building, Road, Tree,
Car, thin Poles, Void), then for each recipe runs `python -m training fit` and `python -m training
export` in a subprocess (the commands people run), and scores the held-out scenes at 360x480 (Void
excluded) the way each model is served:

- "squish, nearest back": the image squished to the square training size, the class ids resized back
  with nearest neighbour (what the service did before any-size graphs);
- "served": the service's data path through the Python API (serving.Segmenter): resized to the training
  scale keeping the aspect, padded to 32, scores upsampled bilinearly; fp32 and, where the export kept
  it, int8.

Then the last recipe's export is served by a real `bentoml serve` (default settings) and loaded with
480x360 PNG uploads of the held-out scenes at concurrency 16 (throughput, p50/p99, masks equal to the
Python API's). Resumable: a recipe whose run or export exists is not trained again. Prints a table,
writes benchmarks/results/camvid-<date>.md/.json and a PNG of example masks.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

# name -> (fit arguments, how it is served in the table); all at --epochs, except E: the default step budget
RECIPES = {
    "A": (["--size", "224", "--class-weights", "off"], "squish"),
    "B": (["--size", "224", "--class-weights", "on"], "squish"),
    "C": (["--size", "360", "480", "--crop", "192", "256", "--class-weights", "off"], "served"),
    "D": (["--size", "360", "480", "--crop", "192", "256"], "served"),
    "E": (["--size", "360", "480", "--crop", "192", "256"], "served"),
}
LABELS = {
    "A": "224x224 squish, plain loss (the previous `fit`)",
    "B": "224x224 squish, median-frequency weights",
    "C": "192x256 random crops at 360x480, plain loss",
    "D": "192x256 random crops at 360x480, weights (class_weights=auto turns them on)",
    "E": "as D, with fit's default budget of 450 steps (30 epochs here) and the best epoch kept",
}
BUDGET = {"E"}  # recipes trained with fit's default step budget instead of --epochs


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed with exit code {r.returncode}")


def confusion(pred, truth, n, void):
    keep = truth != void
    return np.bincount(truth[keep].astype(np.int64) * n + pred[keep], minlength=n * n).reshape(n, n)


def iou_table(cm: np.ndarray, codes, void: int) -> dict:
    tp = np.diag(cm).astype(float)
    iou = tp / np.maximum(cm.sum(0) + cm.sum(1) - tp, 1)
    scored = [i for i in range(len(codes)) if i != void]
    return {**{codes[i]: float(iou[i]) for i in scored}, "mean": float(iou[scored].mean())}


def score(export: Path, valid: list[tuple[Path, Path]], codes, void: int, how: str, variant: str = "fp32") -> tuple[dict, list]:
    """IoU per class on the held-out scenes, served `how` ("squish" or "served")."""
    from serving import Segmenter
    from serving.imaging import resize_mask

    seg = Segmenter.load(export, "cpu", variant)
    size = seg.meta.input_size
    n = len(codes)
    cm = np.zeros((n, n), np.int64)
    shown = []
    for image_path, mask_path in valid:
        with Image.open(image_path) as im:
            img = im.convert("RGB")
        truth = np.asarray(Image.open(mask_path))
        if how == "squish":
            small = np.asarray(img.resize((size[1], size[0]), Image.BILINEAR))
            pred = resize_mask(seg.runtime.run(small[None])[0], img.size)
        else:
            pred = seg.predict(img)
        cm += confusion(pred, truth, n, void)
        if len(shown) < 3:
            shown.append((np.asarray(img), truth, pred))
    return iou_table(cm, codes, void), shown


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "camvid")
    p.add_argument("--n", type=int, default=150)
    p.add_argument("--epochs", type=int, nargs=2, default=[2, 6], metavar=("FROZEN", "UNFROZEN"))
    p.add_argument("--only", nargs="+", choices=sorted(RECIPES), help="recipes to run (default: A-D; E takes ~4x as long)")
    a = p.parse_args(argv)
    py = sys.executable
    data = a.work / f"scenes-n{a.n}"
    if not (data / "codes.txt").is_file():
        _run([py, "-m", "training", "synth", "--layout", "camvid", "--out", str(data), "--n", str(a.n), "--size", "360", "480", "--seed", "0"])
    rows = {}
    for name in a.only or sorted(set(RECIPES) - BUDGET):
        args, how = RECIPES[name]
        run, export = a.work / f"run-{name}", a.work / f"export-{name}"
        if not (run / "report.json").is_file():
            epochs = [] if name in BUDGET else ["--frozen-epochs", str(a.epochs[0]), "--unfrozen-epochs", str(a.epochs[1])]
            _run([py, "-m", "training", "fit", "--data", str(data), "--out", str(run), *epochs, *args])
        if not (export / "model.onnx").is_file():
            _run([py, "-m", "training", "export", "--model", str(run), "--out", str(export), "--int8"])
        report = json.loads((run / "report.json").read_text())
        codes, void = report["codes"], report["void"]
        valid = [(Path(pth), data / "labels" / f"{Path(pth).stem}_P.png") for pth in report["valid_images"]]
        row = {"label": LABELS[name], "served_as": how, "train_min": report["timings"]["train_s"] / 60,
               "epochs": report["schedule"]["frozen_epochs"] + report["schedule"]["unfrozen_epochs"]}
        row["fp32"], shown = score(export, valid, codes, void, how)
        if (export / "model.int8.onnx").is_file() and how == "served":
            row["int8"], _ = score(export, valid, codes, void, how, "int8")
        row["fit_report_iou"] = report["metrics"]["iou"]
        rows[name] = (row, shown)
        print(f"{name}: {row['label']}: mean IoU {row['fp32']['mean']:.3f}, Pole {row['fp32']['Pole']:.3f}", flush=True)
    last = sorted(rows)[-1]
    report = json.loads((a.work / f"run-{last}" / "report.json").read_text())
    served_load = serve_load(a.work / f"export-{last}", [Path(p) for p in report["valid_images"]])
    out = ROOT / "benchmarks" / "results" / f"camvid-{dt.date.today().isoformat()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    classes = [c for c in next(iter(rows.values()))[0]["fp32"] if c != "mean"]
    L = [f"# CamVid-layout scenes ({dt.datetime.now():%Y-%m-%d %H:%M})", "",
         f"{a.n} synthetic 360x480 street scenes (`python -m training synth --layout camvid`), 80 % train, held-out scenes scored "
         f"at 360x480, Void excluded; {a.epochs[0]} frozen + {a.epochs[1]} unfrozen epochs each (E: fit's default step budget); "
         "`python -m benchmarks.camvid [--only A B C D E]`.", "",
         "| training | served as | " + " | ".join(classes) + " | mean IoU | train min |", "|---|---|" + "---|" * (len(classes) + 2)]
    for name, (row, _) in rows.items():
        served = "squish, nearest back" if row["served_as"] == "squish" else "whole image at training scale, scores upsampled"
        for variant in ("fp32", "int8"):
            if variant in row:
                L.append(f"| {row['label']}{' (int8)' if variant == 'int8' else ''} | {served} | "
                         + " | ".join(f"{row[variant][c]:.3f}" for c in classes) + f" | **{row[variant]['mean']:.3f}** | {row['train_min']:.1f} |")
    sl = served_load
    L += ["", f"Served ({last}, `bentoml serve` defaults: {sl['workers']} workers, {sl['variant']}), 480x360 PNG uploads at concurrency 16: "
          f"{sl['rps']:.1f} req/s, p50 {sl['p50']:.0f} ms, p99 {sl['p99']:.0f} ms, {sl['errors']} errors, "
          f"{sl['same']} of {sl['requests']} masks equal to the Python API's."]
    md = "\n".join(L) + f"\n\n![examples]({out.name}.png)\n"
    _figure(rows, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({**{k: v[0] for k, v in rows.items()}, "served_load": served_load}, indent=2))
    print(md)
    return 0


def serve_load(export: Path, images: list[Path], concurrency: int = 16, n: int = 400) -> dict:
    """A real `bentoml serve` of `export` loaded with the held-out scenes as 480x360 PNGs."""
    import io

    import requests

    from loadtest import client
    from loadtest.server import served
    from serving import Segmenter

    payloads = []
    for p in images[:8]:
        b = io.BytesIO()
        Image.open(p).convert("RGB").resize((480, 360)).save(b, "PNG", compress_level=1)
        payloads.append(b.getvalue())
    seg = Segmenter.load(export, "cpu")
    expected = [seg.predict(data) for data in payloads]

    def same(i, r):
        return np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[i % len(payloads)])

    with served(export) as proc:
        info = requests.get(proc.url + "/model", timeout=10).json()
        results, wall = client.run(proc.url, payloads, concurrency=concurrency, n=n, check=same, warmup=concurrency)
    s = client.summary(results, wall)
    return {**s, "same": sum(r.ok for r in results), "workers": info["workers"], "variant": info["variant"], "concurrency": concurrency}


def _figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from training.train import class_colours

    pal = np.array(class_colours(8), np.uint8)
    names = list(rows)
    image, truth, _ = rows[names[0]][1][0]
    fig, axes = plt.subplots(1, 2 + len(names), figsize=(3.2 * (2 + len(names)), 2.8))
    axes[0].imshow(image), axes[0].set_title("image")
    axes[1].imshow(pal[truth]), axes[1].set_title("truth")
    for ax, name in zip(axes[2:], names):
        ax.imshow(pal[rows[name][1][0][2]]), ax.set_title(name)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
