"""The GPU check in one command: `python -m benchmarks.gpu [--model DIR] [--seconds 8]`.

On a CUDA host: `bentoml serve` with SEG_DEVICE=cuda (fp16 and fp32), real photos at 128 and 256 px at c=1/16/64,
req/s, p99, the mean batch (seg_batch_size) and GPU utilisation (`nvidia-smi`); writes benchmarks/results/gpu.md.
Without CUDA it ends with one line saying why and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from benchmarks.harness import ROOT, served, write_report
from contract import DEFAULT_MODEL_DIR
from loadtest import client

CONCURRENCIES = (1, 16, 64)
SIZES = (128, 256)


def cuda_problem(model_dir: Path) -> str | None:
    """Why this host cannot run the model on CUDA, or None when it can: ONNX Runtime lists the CUDA provider
    even without a GPU, so a session is opened and asked what it really uses."""
    from contract import ContractError
    from serving.runtime import SegmentationRuntime, nvidia_gpus

    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed (pip install -e '.[serve]')"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no CUDAExecutionProvider: install onnxruntime-gpu"
    count, how = nvidia_gpus()
    if not count:
        return how
    try:
        rt = SegmentationRuntime.load(model_dir, "cuda", "fp32", threads=1)
    except ContractError as exc:
        return str(exc)
    return None if rt.provider == "CUDAExecutionProvider" else f"the session runs on {rt.provider}"


def mean_batch(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of the seg_batch_size histogram in a Prometheus /metrics page (all workers)."""
    found = {"sum": 0.0, "count": 0.0}
    for m in re.finditer(r"^seg_batch_size_(sum|count)(\{[^}]*\})?\s+([0-9.eE+-]+)$", metrics_text, re.M):
        found[m.group(1)] += float(m.group(3))
    return found["sum"], found["count"]


@contextlib.contextmanager
def gpu_use():
    """GPU utilisation samples (%) taken by `nvidia-smi` every 200 ms while the block runs (none without it)."""
    samples: list[float] = []
    exe = shutil.which("nvidia-smi")
    cmd = [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) if exe else None
    try:
        yield samples
    finally:
        if proc is not None:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
            samples += [float(v.split(",")[0]) for v in out.split() if v.split(",")[0].replace(".", "").isdigit()]


def cell(url: str, payloads: list[bytes], concurrency: int, seconds: float) -> dict:
    """Requests at `concurrency` for about `seconds` (after a short warm-up): summary, mean batch, GPU use."""
    client.run(url, payloads, concurrency=concurrency, n=concurrency * 2, timeout=60)
    probe = client.run(url, payloads, concurrency=concurrency, n=concurrency * 4, timeout=60)
    rate = len(probe[0]) / max(probe[1], 1e-3)
    n = max(concurrency * 4, int(rate * seconds))
    s0, c0 = mean_batch(requests.get(url + "/metrics", timeout=10).text)
    with gpu_use() as util:
        results, wall = client.run(url, payloads, concurrency=concurrency, n=n, timeout=60)
    s1, c1 = mean_batch(requests.get(url + "/metrics", timeout=10).text)
    batch = (s1 - s0) / (c1 - c0) if c1 > c0 else None
    return {"concurrency": concurrency, **client.summary(results, wall), "mean_batch": batch,
            "gpu_util": sum(util) / len(util) if util else None}  # fmt: skip


def to_markdown(rows: list[dict], model_dir: Path) -> str:
    L = [f"# GPU check ({time.strftime('%Y-%m-%d %H:%M')})", "",
         f"`python -m benchmarks.gpu --model {model_dir}`: `bentoml serve` with SEG_DEVICE=cuda, real photos to "
         "/segment, palette PNG answers.", "",
         "| variant | upload | concurrency | req/s | p50 ms | p99 ms | mean batch | GPU util % | errors |",
         "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

    def opt(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    for r in rows:
        L.append(f"| {r['variant']} | {r['size']} px PNG | {r['concurrency']} | {r['rps']:.0f} | {r['p50']:.0f} | "
                 f"{r['p99']:.0f} | {opt(r['mean_batch'], '.1f')} | {opt(r['gpu_util'], '.0f')} | "
                 f"{r['errors']} |")  # fmt: skip
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / DEFAULT_MODEL_DIR)
    p.add_argument("--seconds", type=float, default=8.0, help="timed seconds per cell")
    a = p.parse_args(argv)
    if not (a.model / "model.onnx").is_file():
        print(f"benchmarks.gpu: {a.model}: no model.onnx; build one with `python -m training demo`", file=sys.stderr)
        return 2
    problem = cuda_problem(a.model)
    if problem is not None:
        print(f"benchmarks.gpu: no CUDA here, nothing measured: {problem}", file=sys.stderr)
        return 2
    files = {"fp16": "model.fp16.onnx", "fp32": "model.onnx"}
    variants = [v for v, f in files.items() if (a.model / f).is_file()]
    rows = []
    for variant in variants:
        print(f"== {variant}", flush=True)
        with served(a.model, timeout=300, SEG_DEVICE="cuda", SEG_VARIANT=variant) as proc:
            for size in SIZES:
                payloads = client.photos((size,), "PNG")
                for c in CONCURRENCIES:
                    rows.append({"variant": variant, "size": size, **cell(proc.url, payloads, c, a.seconds)})
                    print(f"   {size} px c={c}: {rows[-1]['rps']:.0f} req/s, p99 {rows[-1]['p99']:.0f} ms", flush=True)
    write_report("gpu", to_markdown(rows, a.model), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
