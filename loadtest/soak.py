"""Soak: ~70 % of capacity for 10 minutes against a real `bentoml serve`; errors and server RSS over time.

    .venv/bin/python -m loadtest.soak --model exported_models/default --minutes 10

Goal: 0 errors and RSS growth <= 5 % (first minute vs last minute). Writes loadtest/results/soak-*.json
and a PNG of RSS and throughput over time. All traffic to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

from contract import DEFAULT_MODEL_DIR, ContractError
from loadtest import client
from loadtest.client import photos
from loadtest.overload import rss_mb
from loadtest.server import ServerError, served


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    a = ap.parse_args(argv)
    payloads = photos((256,))
    try:
        with served(a.model, SEG_MAX_BATCH_SIZE=8) as proc:
            warm, wall = client.run(proc.url, payloads, concurrency=8, n=80, timeout=30)
            capacity = len(warm) / wall
            rate = capacity * a.load
            total = int(rate * a.minutes * 60)
            samples, stop = [], threading.Event()
            start = time.perf_counter()

            def sampler():
                while not stop.is_set():
                    samples.append((time.perf_counter() - start, rss_mb(proc.pid)))
                    stop.wait(5)

            th = threading.Thread(target=sampler, daemon=True)
            th.start()
            results, _ = client.run(proc.url, payloads, concurrency=64, n=total, rate=rate, timeout=30)
            stop.set()
            th.join()
    except (ServerError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    errors = [r.status for r in results if not r.ok]
    # requests finished per sample interval, from each request's scheduled start + its latency
    finished = np.sort([r.index / rate + r.seconds for r in results])
    t, rss = map(np.array, zip(*samples))
    n = np.searchsorted(finished, t)
    first, last = rss[t <= 60].mean(), rss[t >= t.max() - 60].mean()
    report = {
        "minutes": a.minutes,
        "capacity_rps": capacity,
        "target_rps": rate,
        "requests": total,
        "errors": len(errors),
        "error_samples": [str(e) for e in errors[:5]],
        "rss_first_min_mb": float(first),
        "rss_last_min_mb": float(last),
        "rss_growth": float(last / first - 1),
        "rss_max_mb": float(rss.max()),
    }
    for k, v in report.items():
        print(f"{k:>18}: {v}")
    out = Path("loadtest/results")
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"soak-{stamp}.json").write_text(json.dumps(report, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(t / 60, rss, label="server RSS (MB)")
    ax.set_xlabel("minutes"), ax.set_ylabel("MB")
    ax2 = ax.twinx()
    ax2.plot(t[1:] / 60, np.diff(n) / np.diff(t), color="C1", alpha=0.6, label="req/s")
    ax2.set_ylabel("req/s")
    fig.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"soak-{stamp}.png", dpi=80)
    return 0 if not errors and report["rss_growth"] <= 0.05 else 1


if __name__ == "__main__":
    raise SystemExit(main())
