"""The one-run report with the real model: `python -m benchmarks [--model DIR] [--variant int8] [--baseline REF]
[--quick]`.

1. this service against the previous main (a git worktree of REF) and the peers (LitServe, Ray Serve), every one
   serving the same model variant with the same per-request work, 256 px PNG uploads at c=1/16/32, in alternating
   rounds (benchmarks.server_cost's race);
2. what a user would run instead, in one process, no HTTP: fastai's `learn.predict` one image at a time, the trained
   U-Net in PyTorch eager (fp32) and ONNX Runtime fp32 and int8, at batch 1 and 8, every core;
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
from contract import DEFAULT_MODEL_DIR, VARIANT_FILES


def raw_ort(model_dir: Path, variant: str, batch: int, seconds: float = 3.0) -> float:
    """Images per second of ONNX Runtime alone, every core, at the training size."""
    from serving.runtime import SegmentationRuntime

    rt = SegmentationRuntime.load(model_dir, "cpu", variant, threads=len(os.sched_getaffinity(0)))
    x = np.random.default_rng(0).integers(0, 256, (batch, *rt.meta.input_size, 3), dtype=np.uint8)
    return rate(lambda: rt.run(x), batch, seconds)


def rate(fn, images: int, seconds: float = 3.0) -> float:
    """Images per second of `fn()` (which handles `images` images), after one call."""
    fn()
    k, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        fn()
        k += 1
    return k * images / (time.perf_counter() - t)


def user_baselines(model_dir: Path, seconds: float = 3.0) -> dict:
    """Images per second of fastai's learn.predict (a sample photo of the export, one at a time, its own transforms
    and decoding) and of the trained U-Net in PyTorch eager (uint8 in, normalised, argmax out, as the graph) at batch 1
    and 8: the run folder the export names in export.json."""
    import json

    import torch

    from training.run import load_run

    learn, meta, _ = load_run(Path(json.loads((model_dir / "export.json").read_text())["run"]))
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    mean, std = (torch.tensor(meta[k]).view(1, 3, 1, 1) * 255 for k in ("mean", "std"))
    model, photo = learn.model.eval(), model_dir / "samples" / "sample_0.png"

    def eager(x):
        with torch.inference_mode():
            return model((x.permute(0, 3, 1, 2).float() - mean) / std).argmax(1)

    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (8, *meta["size"], 3), dtype=np.uint8))
    return {"learn.predict": {1: rate(lambda: learn.predict(photo), 1, seconds)},
            "PyTorch eager fp32": {b: rate(lambda: eager(x[:b]), b, seconds) for b in (1, 8)}}  # fmt: skip


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
    ort = {f"ONNX Runtime {v}": {b: raw_ort(a.model, v, b) for b in (1, 8)} for v in ("fp32", "int8")
           if (a.model / VARIANT_FILES[v]).is_file()}  # fmt: skip
    report["in_process"] = {**user_baselines(a.model), **ort}
    report["raw_ort"] = ort[f"ONNX Runtime {a.variant}"]
    report["cold_start_s"] = cold_start(a.model, a.variant)
    ours = table["this service"]["256 px PNG"]
    L = [f"# The real model, served ({stamp(argv, 'benchmarks')})", "",
         f"{a.model} ({a.variant}) in every server, the same per-request work; {rounds} round(s), servers in "
         "alternating order, each cell the median round; client and servers share the cores.", "", *tables(report), "",
         f"Raw ONNX Runtime, one process, every core, no HTTP: batch 1 {report['raw_ort'][1]:.1f} img/s, batch 8 "
         f"{report['raw_ort'][8]:.1f} img/s; this service at c=16 / 32: "
         + " / ".join(f"{x['rps'] / report['raw_ort'][8]:.2f}" for x in ours[1:]) + " of the batch-8 rate.", "",
         "What a user would run instead, one process, every core, no HTTP (images per second at the training size):",
         "", "| | batch 1 | batch 8 |", "|---|---|---|",
         *[f"| {k} | {v[1]:.1f} | " + (f"{v[8]:.1f} |" if 8 in v else "- |") for k, v in report["in_process"].items()],
         f"| this service over HTTP (256 px PNG, {a.variant}) | c=1 {ours[0]['rps']:.1f} | c=16 {ours[1]['rps']:.1f} |",
         "", f"Cold start (process start to /readyz 200): median {np.median(report['cold_start_s']):.1f} s of "
         + ", ".join(f"{t:.1f}" for t in report["cold_start_s"]) + ".", "", "![throughput](report.png)"]  # fmt: skip
    out = write_report("report", "\n".join(L) + "\n", report)
    plot(report, out.with_suffix(".png"), f"{a.variant} model, 256 px PNG")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
