"""The demo (`make serve`'s default model) over seeds: its Dice clean and under camera shifts, training time, int8.

    python -m benchmarks.demo_seeds [--seeds 1 2 3 4 5] [--args "--augment flip"] [--tag NAME]

Runs `python -m training demo --seed S` for each seed (the same 300 synthetic scenes, another split and training
order; `--args`: more `fit` options, to compare a recipe with the defaults). Each exports fp32, int8 (kept only
when it keeps >= 99 % of fp32's foreground Dice on the held-out images: contract.metrics) and fp16; the table is
what each report.json (held-out Dice, clean and under contract.shifts) and export.json say. Resumable.
Writes benchmarks/results/demo-seeds[-<tag>].md/.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT, run, stamp, write_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "seeds")
    p.add_argument("--args", default="", help='more options for `python -m training demo` (fit\'s), e.g. "--loss ce"')
    p.add_argument("--tag", help="report name: demo-seeds-<tag>")
    a = p.parse_args(argv)
    rows, tag = [], f"-{a.tag}" if a.tag else ""
    for seed in a.seeds:
        out, work = a.work / f"export{tag}-{seed}", a.work / f"work{tag}-{seed}"
        if not (out / "export.json").is_file():
            cmd = ["-m", "training", "demo", "--seed", str(seed), "--out", str(out), "--work", str(work)]
            run([sys.executable, *cmd, *shlex.split(a.args)])
        export = json.loads((out / "export.json").read_text())
        report = json.loads((Path(export["run"]) / "report.json").read_text())
        q, sh = export["int8"], report["shifted"]
        shifts = {k: v["dice_fg"] for k, v in sh["shifts"].items()}
        minutes = report["timings"]["train_s"] / 60
        rows.append({"seed": seed, "dice_fg": report["metrics"]["dice_fg"], "train_min": minutes,
                     "shifted": sh["shifted_mean"], "ratio": sh["ratio"], "shifts": shifts,
                     "int8_kept": q["kept"], "int8_ratio": q.get("ratio"), "int8_speedup": q["speedup"],
                     "augment": report["augment"], "precision": report["schedule"]["precision"]})  # fmt: skip
    shifts = list(rows[0]["shifts"])
    L = [f"# The demo over {len(rows)} seeds ({stamp(argv, 'benchmarks.demo_seeds')})", "",
         f"`python -m training demo --seed S {a.args}`: 300 synthetic 128 px scenes, augmentation "
         f"{rows[0]['augment']}, "
         f"trained in {rows[0]['precision']}; held-out foreground Dice clean and under contract.shifts.", "",
         "| seed | Dice clean | shifted mean | shifted / clean | " + " | ".join(shifts)
         + " | training min | int8 kept (ratio, speed-up) |", "|---" * (6 + len(shifts)) + "|"]  # fmt: skip
    for r in rows:
        int8 = f"{'yes' if r['int8_kept'] else 'no'} ({r['int8_ratio']:.2%}, {r['int8_speedup']:.2f}x)"
        cells = " | ".join(f"{r['shifts'][s]:.3f}" for s in shifts)
        L.append(f"| {r['seed']} | {r['dice_fg']:.3f} | {r['shifted']:.3f} | {r['ratio']:.3f} | {cells} | "
                 f"{r['train_min']:.1f} | {int8} |")  # fmt: skip
    dice = [r["dice_fg"] for r in rows]
    L += ["", f"Dice >= 0.95 on {sum(d >= 0.95 for d in dice)} of {len(rows)} seeds (mean {np.mean(dice):.3f}); "
          f"shifted / clean {np.mean([r['ratio'] for r in rows]):.3f} on average; int8 kept on "
          f"{sum(r['int8_kept'] for r in rows)} of {len(rows)}."]  # fmt: skip
    write_report(f"demo-seeds{tag}", "\n".join(L) + "\n", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
