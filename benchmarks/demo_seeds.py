"""The default recipe, run again with other seeds: Dice, training time, int8's accuracy rule, agreement and speed.

    python -m benchmarks.demo_seeds [--seeds 1 2 3 4 5] [--work runs/seeds] [--args "--loss ce"] [--tag NAME]

Runs `python -m training demo --seed S` for each seed (the same 300 synthetic scenes, another split and
training order; `--args`: more `fit` options, to compare a recipe with the defaults), which exports fp32, int8 (kept only when it keeps >= 99 % of fp32's foreground Dice on the held-out images:
contract.metrics) and fp16, and tabulates
what each export.json and report.json say. Resumable: a seed whose export exists is not run again.
Writes benchmarks/results/demo-seeds[-<tag>]-<date>.md/.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
from pathlib import Path

from benchmarks import cpu_features, write_report

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "seeds")
    p.add_argument("--args", default="", help='more options for `python -m training demo` (fit\'s), e.g. "--loss ce"')
    p.add_argument("--tag", help="report name: demo-seeds-<tag>-<date>")
    a = p.parse_args(argv)
    rows = []
    for seed in a.seeds:
        out = a.work / f"export-{seed}"
        if not (out / "export.json").is_file():
            cmd = [
                sys.executable,
                "-m",
                "training",
                "demo",
                "--seed",
                str(seed),
                "--out",
                str(out),
                "--work",
                str(a.work / f"work-{seed}"),
                *shlex.split(a.args),
            ]
            print("$ " + " ".join(cmd), flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode:
                raise SystemExit(f"error: the demo with seed {seed} failed")
        export = json.loads((out / "export.json").read_text())
        report = json.loads((Path(export["run"]) / "report.json").read_text())
        q = export["int8"]
        rows.append(
            {
                "seed": seed,
                "dice_fg": report["metrics"]["dice_fg"],
                "train_min": report["timings"]["train_s"] / 60,
                "kept_epoch": report["schedule"]["kept_epoch"],
                "int8_agreement": q["agreement"],
                "int8_kept": q["kept"],
                "int8_speedup": q["speedup"],
                "int8_ratio": q.get("ratio"),
                "int8_dice": q.get("int8"),
                "fp32_dice": q.get("fp32"),
                "min_ratio": q.get("min_ratio"),
                "speed_measured": q.get("speed_measured"),
                "loss": report.get("loss", "ce"),
                "precision": report["schedule"].get("precision", "fp32"),
                "channels_last": report["schedule"].get("channels_last", False),
            }
        )
    extra = f" {a.args}" if a.args else ""
    L = [
        f"# The demo recipe{extra} over {len(rows)} seeds ({dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"`python -m benchmarks.demo_seeds`: `python -m training demo --seed S{extra}` each, loss {rows[0]['loss']} (300 synthetic 128 px scenes, 450 steps, "
        f"best epoch kept, export with parity gate, int8 and fp16); trained in {rows[0]['precision']}"
        f"{', channels-last' if rows[0]['channels_last'] else ''} on {cpu_features()}.",
        "",
        "| seed | foreground Dice (fit) | training min | epoch kept | held-out Dice fp32 / int8 | int8 accuracy ratio (rule >= 99 %) | int8 kept "
        "| pixel agreement (info) | int8 speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        L.append(
            f"| {r['seed']} | {r['dice_fg']:.3f} | {r['train_min']:.1f} | {r['kept_epoch']} | {r['fp32_dice']:.4f} / {r['int8_dice']:.4f} | "
            f"{r['int8_ratio']:.2%} | {'yes' if r['int8_kept'] else 'no'} | {r['int8_agreement']:.2%} | {r['int8_speedup']:.2f}x |"
        )
    ratio = [r["int8_ratio"] for r in rows]
    speed = [r["int8_speedup"] for r in rows]
    L += [
        "",
        f"int8 kept in {sum(r['int8_kept'] for r in rows)} of {len(rows)} runs; accuracy ratio min {min(ratio):.2%}, max {max(ratio):.2%}; "
        f"speed-up min {min(speed):.2f}x, max {max(speed):.2f}x ({rows[0]['speed_measured']}, the export's check).",
    ]
    md = "\n".join(L) + "\n"
    write_report(f"demo-seeds-{a.tag}" if a.tag else "demo-seeds", md, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
