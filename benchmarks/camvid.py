"""CamVid-layout street scenes: `fit` against the plain fastai recipe, clean and as a field camera gives them.

    python -m benchmarks.camvid [--rows ROW ...] [--seeds 42 7 3 11 23] [--screen] [--tag NAME]

150 synthetic 360x480 street scenes (training.synth, CamVid layout); each row trained once per seed (its own split,
initialisation and crops, the same for every row), 2 frozen + 6 unfrozen epochs on 192x256 crops, exported with
`--int8`; the held-out scenes scored at 360x480 (Void excluded) through serving.Segmenter, as generated and under each
shift of contract.shifts (labels unchanged). `--screen`: fit's own held-out evaluation (report.json), no export.
Resumable (a run or export that exists is reused). Writes benchmarks/results/camvid[-<tag>].md/.json.

Rows (ROWS): plain is benchmarks.camvid_plain; fit is `fit`'s defaults, the model of the row they resolve to.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.harness import ROOT, run, stamp, write_report

SCALE = ["--no-plan", "--size", "360", "480", "--crop", "192", "256"]  # synthetic rows: their recipes as measured
BEFORE = [*SCALE, "--input-norm", "dataset"]  # `fit` before the field recipe: the encoder's fixed normalisation only
ENCODER = [*SCALE, "--input-norm", "encoder", "--augment", "field", "--field-kinds", "haze,exposure,cast"]
ROWS = {
    "plain": (None, "the plain fastai recipe (RandomCrop + Flip, weighted cross-entropy, last epoch)"),
    "flips": ([*BEFORE, "--augment", "flip"], "`fit` before: flips only"),
    "affine": ([*BEFORE, "--augment", "affine"], "`fit` with fastai's aug_transforms (warps, lighting)"),
    "standardised": ([*SCALE, "--input-norm", "image", "--augment", "flip"], "each image standardised in the model"),
    "encoder": (ENCODER, "the encoder's input standardised; exposure, haze, casts on 30 % of the images"),
    "fit": (SCALE, "`fit`'s defaults"),
}
SEED = 42  # fit's default; other seeds get their own folders (run-flips-s7)


def _resolved(args: list[str]) -> dict:
    """The configuration `python -m training fit` runs with these arguments (its own parser and defaults)."""
    from training.options import add_fit_args, fit_config

    p = argparse.ArgumentParser()
    add_fit_args(p)
    c = fit_config(p.parse_args(args), Path("."), Path("."))
    return {**c.to_json(), "data": None, "out": None, "augment": c.resolved_augment(), "loss": c.resolved_loss()}


def same_as(name: str) -> str | None:
    """The earlier row whose arguments `fit` resolves to the same configuration as row `name`'s, or None."""
    args = ROWS[name][0]
    if args is None:
        return None
    want = _resolved(args)
    return next((r for r in ROWS if r != name and ROWS[r][0] is not None and _resolved(ROWS[r][0]) == want), None)


def _folder(work: Path, kind: str, name: str, seed: int) -> Path:
    return work / (f"{kind}-{name}" if seed == SEED else f"{kind}-{name}-s{seed}")


def train(name: str, data: Path, work: Path, seed: int, export: bool) -> Path:
    """Train (and export) row `name` with `seed` unless done; its run folder."""
    py, args = sys.executable, ROWS[name][0]
    out, exp = _folder(work, "run", name, seed), _folder(work, "export", name, seed)
    if not (out / "report.json").is_file():
        base = ["--data", str(data), "--out", str(out), "--seed", str(seed)]
        if args is None:
            run([py, "-m", "benchmarks.camvid_plain", *base, "--epochs", "2", "6"])
        else:
            run([py, "-m", "training", "fit", *base, "--frozen-epochs", "2", "--unfrozen-epochs", "6", *args])
    if export and not (exp / "model.onnx").is_file():
        run([py, "-m", "training", "export", "--model", str(out), "--out", str(exp), "--int8"])
    return out


def served_scores(export: Path, report: dict, data: Path) -> dict:
    """IoU per class and mean, clean and under each shift, through serving.Segmenter (fp32)."""
    from contract.metrics import confusion, metrics_from_confusion
    from contract.shifts import SHIFTS
    from serving import Segmenter

    seg, codes, void = Segmenter.load(export, "cpu", "fp32"), report["codes"], report["void"]
    pairs = [(Path(p), data / "labels" / f"{Path(p).stem}_P.png") for p in report["valid_images"]]
    out = {}
    for shift, fn in {"clean": None, **SHIFTS}.items():
        cm = np.zeros((len(codes), len(codes)), np.int64)
        for image, mask in pairs:
            img = np.asarray(Image.open(image).convert("RGB"))
            cm += confusion(seg.predict(fn(img) if fn else img), np.asarray(Image.open(mask)), len(codes), void)
        out[shift] = metrics_from_confusion(cm, codes, void)
    return out


def scores(run_dir: Path, export: Path | None, data: Path) -> dict:
    """{shift or "clean": {class: IoU, ..., "mean": mean IoU}} for one run."""
    report = json.loads((run_dir / "report.json").read_text())
    if export is not None:
        by = served_scores(export, report, data)
    else:
        by = {"clean": report["metrics"], **report["shifted"]["shifts"]}
    void = report["codes"][report["void"]]
    return {s: {**{c: v for c, v in m["iou"].items() if c != void}, "mean": m["iou_fg"]} for s, m in by.items()}


def score_row(name: str, data: Path, work: Path, seeds: list[int], screen: bool) -> dict:
    """A row over its seeds: per seed and shift its IoUs, and the means over seeds."""
    per_seed, minutes = [], []
    for seed in seeds:
        out = train(name, data, work, seed, export=not screen)
        report = json.loads((out / "report.json").read_text())
        epochs = report["schedule"]["frozen_epochs"] + report["schedule"]["unfrozen_epochs"]
        minutes.append(report["timings"]["train_s"] / 60 / epochs)
        per_seed.append(scores(out, None if screen else _folder(work, "export", name, seed), data))
        s = per_seed[-1]
        shifted = np.mean([v["mean"] for k, v in s.items() if k != "clean"])
        print(f"{name} seed {seed}: clean {s['clean']['mean']:.3f}, shifted {shifted:.3f}", flush=True)
    mean = {sh: {c: float(np.mean([p[sh][c] for p in per_seed])) for c in per_seed[0][sh]} for sh in per_seed[0]}
    clean = [p["clean"]["mean"] for p in per_seed]
    shifted = [np.mean([v["mean"] for k, v in p.items() if k != "clean"]) for p in per_seed]
    return {"label": ROWS[name][1], "seeds": seeds, "per_seed": per_seed, "mean": mean, "min_per_epoch": minutes,
            "clean": float(np.mean(clean)), "clean_range": [min(clean), max(clean)], "shifted": float(np.mean(shifted)),
            "ratio": float(np.mean(shifted) / np.mean(clean))}  # fmt: skip


def tables(rows: dict) -> list[str]:
    """Per row: clean and shifted mean IoU, the ratio, each shift; then per class, clean and averaged over the
    shifts."""
    first = next(iter(rows.values()))
    shifts = [s for s in first["mean"] if s != "clean"]
    classes = [c for c in first["mean"]["clean"] if c != "mean"]
    L = ["| row | seeds | clean mean IoU (min-max) | shifted mean | shifted / clean | "
         + " | ".join(shifts) + " | min per epoch |", "|---" * (6 + len(shifts)) + "|"]  # fmt: skip
    for name, r in rows.items():
        lo, hi = r["clean_range"]
        L.append(f"| {name}: {r['label']} | {len(r['seeds'])} | **{r['clean']:.3f}** ({lo:.3f}-{hi:.3f}) | "
                 f"**{r['shifted']:.3f}** | {r['ratio']:.3f} | "
                 + " | ".join(f"{r['mean'][s]['mean']:.3f}" for s in shifts)
                 + f" | {np.mean(r['min_per_epoch']):.2f} |")  # fmt: skip
    L += ["", "| row | " + " | ".join(f"{c} clean / shifted" for c in classes) + " |", "|---" * (1 + len(classes))
          + "|"]  # fmt: skip
    for name, r in rows.items():
        cells = [f"{r['mean']['clean'][c]:.3f} / {np.mean([r['mean'][s][c] for s in shifts]):.3f}" for c in classes]
        L.append(f"| {name} | " + " | ".join(cells) + " |")
    return L


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "camvid")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--seeds", type=int, nargs="+", default=[SEED, 7, 3, 11, 23])
    p.add_argument("--screen", action="store_true", help="score by fit's own held-out evaluation, no export")
    p.add_argument("--tag", help="report name: camvid-<tag>")
    a = p.parse_args(argv)
    data = a.work / "scenes-n150"
    if not (data / "codes.txt").is_file():
        run([sys.executable, "-m", "training", "synth", "--layout", "camvid", "--out", str(data), "--n", "150"])
    rows = {}
    for name in a.rows:
        twin = same_as(name)
        if twin in rows:
            rows[name] = {**rows[twin], "label": f"{ROWS[name][1]} (= {twin})"}
        else:
            rows[name] = score_row(name, data, a.work, a.seeds, a.screen)
    how = "fit's own held-out evaluation (PyTorch)" if a.screen else "the served data path (exported ONNX, fp32)"
    L = [f"# CamVid-layout scenes, clean and shifted ({stamp(argv, 'benchmarks.camvid')})", "",
         "150 synthetic 360x480 scenes; 2 frozen + 6 unfrozen epochs on 192x256 crops; the 30 held-out scenes of each "
         f"seed scored at 360x480 by {how}, Void excluded; shifted: contract.shifts (dark, haze, blur, jpeg, noise, "
         "lowres, warm), labels unchanged. Means over the seeds.", "", *tables(rows)]  # fmt: skip
    write_report(f"camvid-{a.tag}" if a.tag else "camvid", "\n".join(L) + "\n", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
