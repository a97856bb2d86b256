"""The one small HTTP client the load scripts and the benchmark share (locust is the load kit for people:
loadtest/locustfile.py). All traffic goes to the URL given, 127.0.0.1 in every script here.

    results, wall = run(url, payloads, concurrency=16, n=600)            # closed loop: C clients back to back
    results, wall = run(url, payloads, concurrency=64, n=900, rate=150)  # open loop: arrivals at 150 req/s
    summary(results, wall) -> {"requests", "rps", "p50", "p95", "p99", "errors", "statuses"}
"""

from __future__ import annotations

import io
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import requests
from PIL import Image


@dataclass
class Result:
    index: int
    status: int | str  # HTTP status, or the exception's class name (timeout, reset...)
    seconds: float
    retry_after: str | None = None
    ok: bool = False  # status 200 and the check passed
    body: bytes | None = None  # kept only with keep_bodies


def photos(
    sizes=(256,), fmt: str = "PNG", square: bool = True, names=("astronaut", "chelsea", "coffee", "rocket")
) -> list[bytes]:
    """Real photos from skimage.data at each size (square, or keeping their aspect with that width), as
    PNG (zlib level 1) or JPEG (quality 90) bytes."""
    import skimage.data

    out = []
    for name in names:
        im = Image.fromarray(np.asarray(getattr(skimage.data, name)())[..., :3])
        for s in sizes:
            small = im.resize((s, s) if square else (s, max(1, s * im.height // im.width)))
            b = io.BytesIO()
            small.save(b, fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 90}))
            out.append(b.getvalue())
    return out


def post(
    session: requests.Session,
    url: str,
    data: bytes,
    *,
    route: str = "/segment",
    params: dict | None = None,
    filename: str = "upload",
    timeout: float = 60,
) -> requests.Response:
    """One upload: `data` in the multipart field `image`."""
    return session.post(url + route, params=params, files={"image": (filename, data)}, timeout=timeout)


def run(
    url: str,
    payloads: list[bytes],
    *,
    concurrency: int,
    n: int,
    route: str = "/segment",
    params: dict | None = None,
    rate: float | None = None,
    check: Callable[[int, requests.Response], bool] | None = None,
    timeout: float = 60,
    warmup: int = 0,
    keep_bodies: bool = False,
) -> tuple[list[Result], float]:
    """n requests (payload i % len(payloads)) with `concurrency` threads, each with its own keep-alive
    session; back to back, or started at `rate` per second (open loop). `check(i, response)` judges a
    200. Returns the results in order of index and the wall time; `warmup` requests go first, untimed."""
    local = threading.local()
    results: list[Result | None] = [None] * n

    def session() -> requests.Session:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        return s

    def one(i: int, start: float, record: bool):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        t = time.perf_counter()
        try:
            r = post(session(), url, payloads[i % len(payloads)], route=route, params=params, timeout=timeout)
            res = Result(
                i,
                r.status_code,
                time.perf_counter() - t,
                r.headers.get("retry-after"),
                r.status_code == 200 and (check is None or check(i, r)),
                r.content if keep_bodies else None,
            )
        except requests.RequestException as exc:
            res = Result(i, exc.__class__.__name__, time.perf_counter() - t)
        if record:
            results[i] = res

    with ThreadPoolExecutor(concurrency) as pool:
        if warmup:
            list(pool.map(lambda i: one(i, 0.0, False), range(warmup)))
        start = time.perf_counter()
        list(pool.map(lambda i: one(i, start, True), range(n)))
        wall = time.perf_counter() - start
    return results, wall  # type: ignore[return-value]


def summary(results: list[Result], wall: float) -> dict:
    """Throughput, latency percentiles (ms) and outcome counts of a run."""
    ms = np.array([r.seconds for r in results]) * 1000 if results else np.zeros(1)
    return {
        "requests": len(results),
        "rps": len(results) / wall if wall else 0.0,
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "errors": sum(1 for r in results if not r.ok),
        "statuses": dict(Counter(str(r.status) for r in results)),
    }
