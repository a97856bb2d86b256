"""The training defaults on a data set harder than the demo's: the previous defaults against the new ones.

    python -m benchmarks.harder [--work runs/harder] [--n 120]

Writes `--n` hard Leeds-layout scenes (`python -m training synth --layout leeds`: butterflies whose fill is
often a crop of the background's own photo, 0/255 masks), then runs `python -m training fit` twice:
- the defaults of 2026-11-24: 3 frozen + 12 unfrozen epochs whatever the data set's size, the last epoch
  kept, flips + rotation, zoom, warp and lighting;
- the 450-step budget turned into epochs for this data set, the best validation epoch kept, the same augmentation;
- today's defaults: the same with random flips as the only augmentation.
Resumable. Writes benchmarks/results/harder-<date>.md/.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

from benchmarks import write_report

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    "defaults of 2026-11-24 (3 + 12 epochs, last kept, affine)": [
        "--frozen-epochs",
        "3",
        "--unfrozen-epochs",
        "12",
        "--last-epoch",
        "--augment",
        "affine",
    ],
    "450 steps, best epoch kept, affine (the defaults until 2026-12-02)": ["--augment", "affine"],
    "defaults: 450 steps, best epoch kept, flips only": [],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "harder")
    p.add_argument("--n", type=int, default=120)
    a = p.parse_args(argv)
    data = a.work / f"leeds-hard-n{a.n}"
    if not (data / "images").is_dir():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training",
                "synth",
                "--layout",
                "leeds",
                "--out",
                str(data),
                "--n",
                str(a.n),
                "--size",
                "128",
            ],
            cwd=ROOT,
            check=True,
        )
    rows = []
    for i, (label, args) in enumerate(RECIPES.items()):
        run = a.work / f"run-{i}"
        if not (run / "report.json").is_file():
            cmd = [sys.executable, "-m", "training", "fit", "--data", str(data), "--out", str(run), *args]
            print("$ " + " ".join(cmd), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode:
                raise SystemExit(f"error: {label} failed")
        r = json.loads((run / "report.json").read_text())
        dice = [h.get("dice_fg") or 0 for h in r["history"]]
        rows.append(
            {
                "label": label,
                "dice_fg": r["metrics"]["dice_fg"],
                "best_epoch_dice": max(dice),
                "last_epoch_dice": dice[-1],
                "epochs": len(dice),
                "kept_epoch": r["schedule"]["kept_epoch"],
                "train_min": r["timings"]["train_s"] / 60,
            }
        )
    L = [
        f"# Training defaults on a harder set ({dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"{a.n} hard Leeds-layout scenes of 128 px (`python -m training synth --layout leeds`), 80 % train; `python -m benchmarks.harder`.",
        "",
        "| recipe | epochs | epoch kept | held-out foreground Dice (kept model) | best epoch's validation Dice | last epoch's | training min |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {r['label']} | {r['epochs']} | {r['kept_epoch']} | **{r['dice_fg']:.3f}** | {r['best_epoch_dice']:.3f} | {r['last_epoch_dice']:.3f} | {r['train_min']:.1f} |"
        )
    md = "\n".join(L) + "\n"
    write_report("harder", md, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
