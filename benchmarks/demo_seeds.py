"""The default recipe, run again with other seeds: Dice, training time, int8 agreement and speed.

    python -m benchmarks.demo_seeds [--seeds 1 2 3 4 5] [--work runs/seeds]

Runs `python -m training demo --seed S` for each seed (the same 300 synthetic scenes, another split and
training order), which exports fp32, int8 (kept only above its agreement gate) and fp16, and tabulates
what each export.json and report.json say. Resumable: a seed whose export exists is not run again.
Writes benchmarks/results/demo-seeds-<date>.md/.json.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "seeds")
    a = p.parse_args(argv)
    rows = []
    for seed in a.seeds:
        out = a.work / f"export-{seed}"
        if not (out / "export.json").is_file():
            cmd = [sys.executable, "-m", "training", "demo", "--seed", str(seed), "--out", str(out), "--work", str(a.work / f"work-{seed}")]
            print("$ " + " ".join(cmd), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode:
                raise SystemExit(f"error: the demo with seed {seed} failed")
        export = json.loads((out / "export.json").read_text())
        report = json.loads((Path(export["run"]) / "report.json").read_text())
        q = export["int8"]
        rows.append({"seed": seed, "dice_fg": report["metrics"]["dice_fg"], "train_min": report["timings"]["train_s"] / 60,
                     "kept_epoch": report["schedule"]["kept_epoch"], "int8_agreement": q["agreement"], "int8_kept": q["kept"],
                     "int8_speedup": q["speedup"], "threshold": q["threshold"]})
    L = [f"# The demo recipe over {len(rows)} seeds ({dt.datetime.now():%Y-%m-%d %H:%M})", "",
         "`python -m benchmarks.demo_seeds`: `python -m training demo --seed S` each (300 synthetic 128 px scenes, 450 steps, "
         "best epoch kept, export with parity gate, int8 and fp16).", "",
         "| seed | foreground Dice | training min | epoch kept | int8 agreement | int8 kept | int8 speed-up (export check) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        L.append(f"| {r['seed']} | {r['dice_fg']:.3f} | {r['train_min']:.1f} | {r['kept_epoch']} | {r['int8_agreement']:.2%} | "
                 f"{'yes' if r['int8_kept'] else 'no'} (gate {r['threshold']:.1%}) | {r['int8_speedup']:.2f}x |")
    agree = [r["int8_agreement"] for r in rows]
    L += ["", f"int8 agreement: min {min(agree):.2%}, max {max(agree):.2%}; kept in {sum(r['int8_kept'] for r in rows)} of {len(rows)} runs."]
    md = "\n".join(L) + "\n"
    write_report("demo-seeds", md, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
