"""Overload check: a burst at ~5x measured capacity against a real `bentoml serve` on 127.0.0.1.

    .venv/bin/python -m loadtest.overload --model exported_models/default

Measures capacity (req/s at concurrency 8), then sends a burst of 5x that many requests per second for a
few seconds with a short max_latency_ms so excess is shed. Reports: accepted / refused (503 with
Retry-After) / other, refusal latency vs the client timeout, accepted masks vs offline ONNX Runtime,
server RSS before/after, and that service is normal afterwards. Writes loadtest/results/overload-*.json.
"""
from __future__ import annotations

import argparse
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from loadtest.server import served
from loadtest.verify_batching import offline_masks, photos

CLIENT_TIMEOUT = 30.0


def rss_mb(pid: int) -> float:
    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("exported_models/default"))
    ap.add_argument("--factor", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--max-latency-ms", type=int, default=1000)
    a = ap.parse_args(argv)
    payloads = photos((256,))
    expected = offline_masks(a.model, payloads)
    with served(a.model, SEG_MAX_LATENCY_MS=a.max_latency_ms, SEG_MAX_BATCH_SIZE=8, SEG_MAX_CONCURRENCY=64) as proc:
        url = proc.url + "/segment"
        # capacity at concurrency 8
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: requests.post(url, files={"image": ("x.png", payloads[i % 4])}, timeout=CLIENT_TIMEOUT), range(80)))
        capacity = 80 / (time.perf_counter() - t0)
        rss0 = rss_mb(proc.pid)
        rate = capacity * a.factor
        total = int(rate * a.seconds)
        results = []
        lock = threading.Lock()

        def one(i):
            time.sleep(max(0.0, t_start + i / rate - time.perf_counter()))
            t = time.perf_counter()
            try:
                r = requests.post(url, files={"image": ("x.png", payloads[i % 4])}, timeout=CLIENT_TIMEOUT)
                dt = time.perf_counter() - t
                same = r.status_code == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[i % 4])
                item = (r.status_code, dt, r.headers.get("retry-after"), same)
            except requests.RequestException as exc:
                item = (exc.__class__.__name__, time.perf_counter() - t, None, False)
            with lock:
                results.append(item)

        t_start = time.perf_counter()
        with ThreadPoolExecutor(256) as pool:
            list(pool.map(one, range(total)))
        rss1 = rss_mb(proc.pid)
        time.sleep(2)
        after = [requests.post(url, files={"image": ("x.png", payloads[i % 4])}, timeout=CLIENT_TIMEOUT) for i in range(8)]
        normal = all(r.status_code == 200 for r in after)
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    other = [r for r in results if r[0] not in (200, 503)]
    report = {
        "capacity_rps": capacity, "burst_rps": rate, "burst_requests": total, "accepted": len(ok), "accepted_correct": sum(r[3] for r in ok),
        "refused_503": len(shed), "refused_with_retry_after": sum(1 for r in shed if r[2]), "other": len(other), "other_samples": [str(r[0]) for r in other[:5]],
        "refusal_p50_ms": float(np.median([r[1] for r in shed]) * 1000) if shed else None,
        "refusal_max_ms": float(max(r[1] for r in shed) * 1000) if shed else None, "client_timeout_s": CLIENT_TIMEOUT,
        "accepted_p99_ms": float(np.percentile([r[1] for r in ok], 99) * 1000) if ok else None,
        "rss_before_mb": rss0, "rss_after_mb": rss1, "normal_afterwards": normal, "max_latency_ms": a.max_latency_ms,
    }
    for k, v in report.items():
        print(f"{k:>26}: {v}")
    out = Path("loadtest/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / time.strftime("overload-%Y%m%d-%H%M%S.json")).write_text(json.dumps(report, indent=2))
    good = not other and report["accepted_correct"] == len(ok) and normal and report["refused_with_retry_after"] == len(shed)
    return 0 if good else 1


if __name__ == "__main__":
    raise SystemExit(main())
