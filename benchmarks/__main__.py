"""The one-run report with the real model: `python -m benchmarks [--model DIR] [--variant int8] [--baseline REF]
[--quick]`.

1. this service against the previous main (a git worktree of REF) and the peers (LitServe, Ray Serve), every one
   serving the same model variant with the same per-request work, 256 px PNG uploads at c=1/16/32, in alternating
   rounds (benchmarks.server_cost's race);
2. raw ONNX Runtime at batch 1 and 8 in one process, no HTTP: the ceiling;
3. cold start: process start to /readyz 200.
Figures are ratios within this run. Writes benchmarks/results/report.md/.json and a PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import (
    ROOT,
    baseline_checkout,
    contenders,
    photos,
    plot,
    race,
    served,
    stamp,
    tables,
    write_report,
)
from contract import DEFAULT_MODEL_DIR


def raw_ort(model_dir: Path, variant: str, batch: int, seconds: float = 3.0) -> float:
    """Images per second of ONNX Runtime alone, every core, at the training size."""
    from serving.runtime import SegmentationRuntime

    rt = SegmentationRuntime.load(model_dir, "cpu", variant, threads=len(os.sched_getaffinity(0)))
    x = np.random.default_rng(0).integers(0, 256, (batch, *rt.meta.input_size, 3), dtype=np.uint8)
    rt.run(x)
    k, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        rt.run(x)
        k += 1
    return k * batch / (time.perf_counter() - t)


def cold_start(model_dir: Path, variant: str, repeats: int = 3) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        with served(model_dir, SEG_VARIANT=variant):
            times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / DEFAULT_MODEL_DIR)
    p.add_argument("--variant", default="int8", choices=("fp32", "int8"), help="the variant every server runs")
    p.add_argument("--baseline", metavar="REF", help="also serve this git ref (e.g. the previous main), same run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="fewer requests, one round")
    a = p.parse_args(argv)
    if a.variant == "int8" and not (a.model / "model.int8.onnx").is_file():
        print(f"   {a.model}: the export kept no int8 variant (its accuracy rule); serving fp32", flush=True)
        a.variant = "fp32"
    n, rounds = (200, 1) if a.quick else (600, a.rounds)
    sets = {"256 px PNG": photos(256)}
    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(baseline_checkout(a.baseline)) if a.baseline else None
        table = race(contenders(a.model, tree, a.baseline, a.variant), sets, n, rounds)
    report = {"variant": a.variant, "sets": list(sets), "table": table, "rounds": rounds}
    report["raw_ort"] = {b: raw_ort(a.model, a.variant, b) for b in (1, 8)}
    report["cold_start_s"] = cold_start(a.model, a.variant)
    ours = table["this service"]["256 px PNG"]
    L = [f"# The real model, served ({stamp(argv, 'benchmarks')})", "",
         f"{a.model} ({a.variant}) in every server, the same per-request work; {rounds} round(s), servers in "
         "alternating order, each cell the median round; client and servers share the cores.", "", *tables(report), "",
         f"Raw ONNX Runtime, one process, every core, no HTTP: batch 1 {report['raw_ort'][1]:.1f} img/s, batch 8 "
         f"{report['raw_ort'][8]:.1f} img/s; this service at c=16 / 32: "
         + " / ".join(f"{x['rps'] / report['raw_ort'][8]:.2f}" for x in ours[1:]) + " of the batch-8 rate.", "",
         f"Cold start (process start to /readyz 200): median {np.median(report['cold_start_s']):.1f} s of "
         + ", ".join(f"{t:.1f}" for t in report["cold_start_s"]) + ".", "", "![throughput](report.png)"]  # fmt: skip
    out = write_report("report", "\n".join(L) + "\n", report)
    plot(report, out.with_suffix(".png"), f"{a.variant} model, 256 px PNG")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
