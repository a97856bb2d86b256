"""Soak: ~70 % of capacity for 10 minutes against a real `bentoml serve`; errors and server RSS over time.

    .venv/bin/python -m loadtest.soak --model exported_models/default --minutes 10

Goal: 0 errors and RSS growth <= 5 % (first minute vs last minute). Writes loadtest/results/soak-*.json
and a PNG of RSS and throughput over time. All traffic to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from loadtest.overload import rss_mb
from loadtest.server import served
from loadtest.verify_batching import photos


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("exported_models/default"))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of measured capacity")
    a = ap.parse_args(argv)
    payloads = photos((256,))
    with served(a.model, SEG_MAX_BATCH_SIZE=8) as proc:
        url = proc.url + "/segment"
        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: requests.post(url, files={"image": ("x.png", payloads[i % 4])}, timeout=30), range(80)))
        capacity = 80 / (time.perf_counter() - t0)
        rate = capacity * a.load
        total = int(rate * a.minutes * 60)
        samples, errors, done = [], [], [0]
        lock = threading.Lock()
        stop = threading.Event()

        def sampler():
            while not stop.is_set():
                samples.append((time.perf_counter() - start, rss_mb(proc.pid), done[0]))
                stop.wait(5)

        def one(i):
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            try:
                r = requests.post(url, files={"image": ("x.png", payloads[i % 4])}, timeout=30)
                if r.status_code != 200:
                    with lock:
                        errors.append(r.status_code)
            except requests.RequestException as exc:
                with lock:
                    errors.append(exc.__class__.__name__)
            with lock:
                done[0] += 1

        start = time.perf_counter()
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        with ThreadPoolExecutor(64) as pool:
            list(pool.map(one, range(total)))
        stop.set()
        th.join()
    t, rss, n = map(np.array, zip(*samples))
    first, last = rss[t <= 60].mean(), rss[t >= t.max() - 60].mean()
    report = {"minutes": a.minutes, "capacity_rps": capacity, "target_rps": rate, "requests": total, "errors": len(errors),
              "error_samples": [str(e) for e in errors[:5]], "rss_first_min_mb": float(first), "rss_last_min_mb": float(last),
              "rss_growth": float(last / first - 1), "rss_max_mb": float(rss.max())}
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
