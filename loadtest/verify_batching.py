"""Batching check against a real `bentoml serve`: N requests at concurrency C, every mask compared with
the offline ONNX Runtime result, batch sizes read from the service's own Prometheus histogram.

    .venv/bin/python -m loadtest.verify_batching --model exported_models/default --requests 2000 --concurrency 32

Prints a table and writes loadtest/results/verify_batching-<date>.json. All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from contract import DEFAULT_MODEL_DIR, ContractError
from loadtest import client
from loadtest.client import photos
from loadtest.server import ServerError, served
from serving.segmenter import Segmenter


def offline_masks(model: Path, payloads: list[bytes], tile: bool = False, variant: str = "auto") -> list[np.ndarray]:
    """The masks the service must answer, computed without a server by the Python API (same data path);
    `variant` as the server was told (auto: the same choice the service makes on this CPU)."""
    seg = Segmenter.load(model, "cpu", variant)
    return [seg.predict(data, tile=tile) for data in payloads]


def batch_histogram(url: str) -> dict[str, float]:
    """Cumulative bucket counts of seg_batch_size (le -> count), plus sum and count."""
    text = requests.get(url + "/metrics", timeout=10).text
    hist: dict[str, float] = {}
    for le, v in re.findall(r'^seg_batch_size_bucket\{[^}]*le="([^"]+)"[^}]*\} ([0-9.e+]+)$', text, re.M):
        hist[le] = hist.get(le, 0.0) + float(v)
    for key in ("sum", "count"):
        hist[key] = sum(
            float(v) for v in re.findall(rf"^seg_batch_size_{key}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
        )
    return hist


def run(model: Path, n: int, concurrency: int, env: dict | None = None) -> dict:
    payloads = photos((128, 256, 384), square=False)
    expected = offline_masks(model, payloads)

    def same(i, r):
        return np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[i % len(payloads)])

    with served(model, **(env or {})) as proc:
        before = batch_histogram(proc.url)
        results, wall = client.run(proc.url, payloads, concurrency=concurrency, n=n, check=same)
        after = batch_histogram(proc.url)
    sizes = {}
    prev = 0.0
    for le in sorted(
        (k for k in after if k not in ("sum", "count")), key=lambda x: float("inf") if x == "+Inf" else float(x)
    ):
        cum = after[le] - before.get(le, 0.0)
        if cum - prev:
            sizes[le] = int(cum - prev)
        prev = cum
    batches = after["count"] - before["count"]
    s = client.summary(results, wall)
    failed = [r for r in results if r.status != 200]
    return {
        "requests": n,
        "concurrency": concurrency,
        "errors": len(failed),
        "error_samples": [str(r.status) for r in failed[:5]],
        "wrong_masks": sum(1 for r in results if r.status == 200 and not r.ok),
        "throughput_rps": s["rps"],
        "p50_ms": s["p50"],
        "p95_ms": s["p95"],
        "p99_ms": s["p99"],
        "batches": int(batches),
        "images_batched": int(after["sum"] - before["sum"]),
        "mean_batch": float((after["sum"] - before["sum"]) / max(batches, 1)),
        "batch_size_histogram": sizes,
        "wall_s": wall,
        "model": str(model),
        "env": env or {},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("loadtest/results"))
    a = p.parse_args(argv)
    try:
        res = run(a.model, a.requests, a.concurrency, {"SEG_MAX_BATCH_SIZE": a.max_batch_size})
    except (ServerError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{'requests':>10} {'conc':>5} {'errors':>6} {'wrong':>6} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} "
        f"{'p99 ms':>7} {'batches':>7} {'mean batch':>10}"
    )
    print(
        f"{res['requests']:>10} {res['concurrency']:>5} {res['errors']:>6} {res['wrong_masks']:>6} "
        f"{res['throughput_rps']:>7.1f} {res['p50_ms']:>7.1f} {res['p95_ms']:>7.1f} {res['p99_ms']:>7.1f} "
        f"{res['batches']:>7} {res['mean_batch']:>10.2f}"
    )
    print("batch sizes seen (upper bucket bound: batches):", res["batch_size_histogram"])
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / time.strftime("verify_batching-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(res, indent=2))
    print(f"report: {path}")
    return 0 if res["errors"] == 0 and res["wrong_masks"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
