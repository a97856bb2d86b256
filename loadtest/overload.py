"""Overload check: a burst at ~5x measured capacity against a real `bentoml serve` on 127.0.0.1.

    .venv/bin/python -m loadtest.overload --model exported_models/default
    .venv/bin/python -m loadtest.overload --storm 128 --requests 4000 --size 512    # clients that ignore Retry-After

Measures capacity (req/s at concurrency 8), then sends a burst at 5x that rate (open loop) for a few
seconds with a short SEG_MAX_LATENCY_MS so the excess is refused; or, with `--storm C`, C clients each sending its
next upload as soon as the last is answered or refused (closed loop, Retry-After ignored). Reports: accepted /
refused (429 or 503, each with Retry-After) / other, how fast refusals come, accepted masks vs offline ONNX Runtime,
server RSS before/after, and that service is normal afterwards. Prints the report and writes
loadtest/results/overload-*.json; a server that does not come up is one line on stderr (exit 2).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

from contract import DEFAULT_MODEL_DIR, ContractError
from loadtest import client
from loadtest.client import photos
from loadtest.server import ServerError, served
from loadtest.verify_batching import offline_masks

CLIENT_TIMEOUT = 30.0


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, MB."""
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def run(model: Path, factor: float, seconds: float, max_latency_ms: int, storm: int = 0, requests: int = 4000,
        size: int = 256) -> dict:  # fmt: skip
    payloads = photos((size,))
    expected = offline_masks(model, payloads)

    def same(i, r):
        return np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[i % len(payloads)])

    with served(model, SEG_MAX_LATENCY_MS=max_latency_ms, SEG_MAX_BATCH_SIZE=8, SEG_MAX_CONCURRENCY=64) as proc:
        warm, wall = client.run(proc.url, payloads, concurrency=8, n=80, timeout=CLIENT_TIMEOUT)
        capacity = len(warm) / wall
        rss0 = rss_mb(proc.pid)
        rate = capacity * factor
        if storm:
            results, _ = client.run(
                proc.url, payloads, concurrency=storm, n=requests, check=same, timeout=CLIENT_TIMEOUT
            )
        else:
            results, _ = client.run(proc.url, payloads, concurrency=256, n=int(rate * seconds), rate=rate, check=same,
                                    timeout=CLIENT_TIMEOUT)  # fmt: skip
        rss1 = rss_mb(proc.pid)
        time.sleep(2)
        after, _ = client.run(proc.url, payloads, concurrency=1, n=8, check=same, timeout=CLIENT_TIMEOUT)
    ok = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status in (429, 503)]
    other = [r for r in results if r.status not in (200, 429, 503)]
    return {
        "capacity_rps": capacity,
        "burst_rps": rate,
        "burst_requests": len(results),
        "accepted": len(ok),
        "accepted_correct": sum(r.ok for r in ok),
        "refused_429": sum(1 for r in refused if r.status == 429),
        "refused_503": sum(1 for r in refused if r.status == 503),
        "refused_with_retry_after": sum(1 for r in refused if r.retry_after),
        "other": len(other),
        "other_samples": [str(r.status) for r in other[:5]],
        "refusal_p50_ms": float(np.median([r.seconds for r in refused]) * 1000) if refused else None,
        "refusal_max_ms": float(max(r.seconds for r in refused) * 1000) if refused else None,
        "client_timeout_s": CLIENT_TIMEOUT,
        **{
            f"accepted_p{q}_ms": float(np.percentile([r.seconds for r in ok], q) * 1000) if ok else None
            for q in (50, 95, 99)
        },  # fmt: skip
        "load": f"{storm} clients back to back, {requests} uploads of {size} px" if storm else f"{factor:g}x capacity",
        "rss_before_mb": rss0,
        "rss_after_mb": rss1,
        "normal_afterwards": all(r.ok for r in after),
        "afterwards": [str(r.status) for r in after],
        "max_latency_ms": max_latency_ms,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--factor", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--max-latency-ms", type=int, default=1000)
    ap.add_argument("--storm", type=int, default=0, metavar="C", help="C clients back to back instead of a burst")
    ap.add_argument("--requests", type=int, default=4000, help="with --storm: uploads in all")
    ap.add_argument("--size", type=int, default=256, help="the uploads' side in px (real photos of skimage.data)")
    a = ap.parse_args(argv)
    try:
        report = run(a.model, a.factor, a.seconds, a.max_latency_ms, a.storm, a.requests, a.size)
    except (ServerError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for k, v in report.items():
        print(f"{k:>26}: {v}")
    out = Path("loadtest/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / time.strftime("overload-%Y%m%d-%H%M%S.json")).write_text(json.dumps(report, indent=2))
    refused = report["refused_429"] + report["refused_503"]
    good = (
        not report["other"]
        and report["accepted_correct"] == report["accepted"]
        and report["normal_afterwards"]
        and report["refused_with_retry_after"] == refused
    )
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
