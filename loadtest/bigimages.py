"""Large photos against a real `bentoml serve` with default settings, while small requests keep coming.

    .venv/bin/python -m loadtest.bigimages --model exported_models/default [--sizes 3000 6300]

For each size, a JPEG photo of that many pixels a side (skimage's astronaut, upscaled) is posted to
/segment?tile=true while 4 clients post 256 px PNGs back to back. Reports, per size: the big request's
status, time and mask size (or its 413 message), the server's peak RSS growth during it, and the small
requests' statuses and p50/p99 against SEG_MAX_LATENCY_MS. Prints a table, writes
loadtest/results/bigimages-*.json; a server that does not come up is one line on stderr (exit 2).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
from pathlib import Path

import requests
from PIL import Image

from contract import DEFAULT_MODEL_DIR, ContractError
from loadtest import client
from loadtest.overload import rss_mb
from loadtest.server import ServerError, served


def big_jpeg(side: int) -> bytes:
    import skimage.data

    b = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()).resize((side, side), Image.BILINEAR).save(b, "JPEG", quality=90)
    return b.getvalue()


def one_size(url: str, pid: int, side: int, stream_clients: int = 4) -> dict:
    data = big_jpeg(side)
    small = client.photos((256,))
    stop, results, peak = threading.Event(), [], [0.0]
    rss0 = rss_mb(pid)

    def stream():
        with requests.Session() as s:
            i = 0
            while not stop.is_set():
                t = time.perf_counter()
                try:
                    r = client.post(s, url, small[i % len(small)], timeout=120)
                    results.append(
                        client.Result(
                            i,
                            r.status_code,
                            time.perf_counter() - t,
                            r.headers.get("retry-after"),
                            r.status_code == 200,
                        )
                    )
                except requests.RequestException as exc:
                    results.append(client.Result(i, exc.__class__.__name__, time.perf_counter() - t))
                i += 1

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            stop.wait(0.1)

    threads = [threading.Thread(target=stream, daemon=True) for _ in range(stream_clients)] + [
        threading.Thread(target=sample, daemon=True)
    ]
    for th in threads:
        th.start()
    time.sleep(1.0)  # the stream is running before the big request arrives
    t = time.perf_counter()
    r = requests.post(url + "/segment", params={"tile": "true"}, files={"image": ("big.jpg", data)}, timeout=900)
    took = time.perf_counter() - t
    time.sleep(0.5)
    stop.set()
    for th in threads:
        th.join(130)
    out = {
        "side": side,
        "jpeg_bytes": len(data),
        "status": r.status_code,
        "seconds": took,
        "rss_before_mb": rss0,
        "rss_peak_growth_mb": peak[0] - rss0,
    }
    if r.status_code == 200:
        out["mask_size"] = list(Image.open(io.BytesIO(r.content)).size)
    else:
        out["error"] = r.json().get("error", r.text[:200])
    s = client.summary(results, 1.0)
    out["small"] = {
        "requests": s["requests"],
        "statuses": s["statuses"],
        "p50_ms": s["p50"],
        "p99_ms": s["p99"],
        "server_errors": sum(1 for x in results if isinstance(x.status, int) and x.status >= 500),
    }
    return out


def run(model: Path, sizes=(3000, 6300), env: dict | None = None) -> dict:
    with served(model, **(env or {})) as proc:
        info = requests.get(proc.url + "/model", timeout=10).json()
        rows = [one_size(proc.url, proc.pid, side) for side in sizes]
    return {
        "model": str(model),
        "settings": env or {},
        "variant": info["variant"],
        "workers": info["workers"],
        "max_tiles": info["admission"]["max_tiles"],
        "max_latency_ms": info["admission"]["max_latency_ms"],
        "input_size": info["metadata"]["input_size"],
        "rows": rows,
    }


def to_markdown(report: dict) -> str:
    L = [
        "| upload (JPEG, tile=true) | status | time s | mask | server RSS peak growth MB | small requests meanwhile | "
        "statuses | p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        what = "x".join(map(str, r["mask_size"])) if r["status"] == 200 else r.get("error", "")[:80]
        sm = r["small"]
        L.append(
            f"| {r['side']}x{r['side']} ({r['jpeg_bytes'] / 1e6:.1f} MB) | {r['status']} | {r['seconds']:.1f} | "
            f"{what} | "
            f"{r['rss_peak_growth_mb']:.0f} | {sm['requests']} | {sm['statuses']} | {sm['p50_ms']:.0f} / "
            f"{sm['p99_ms']:.0f} |"
        )
    L.append("")
    settings = ", ".join(f"{k}={v}" for k, v in (report.get("settings") or {}).items()) or "defaults"
    L.append(
        f"Server ({settings}): {report['workers']} workers, variant {report['variant']}, model trained at "
        f"{report['input_size']}, "
        f"SEG_MAX_TILES={report['max_tiles']}, SEG_MAX_LATENCY_MS={report['max_latency_ms']}."
    )
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 6300])
    ap.add_argument(
        "--set", nargs="*", default=[], metavar="SEG_NAME=VALUE", help="server settings other than the defaults"
    )
    a = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in a.set)
    try:
        report = run(a.model, a.sizes, env)
    except (ServerError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(to_markdown(report))
    out = Path("loadtest/results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / time.strftime("bigimages-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path}")
    bad = [r for r in report["rows"] if r["status"] not in (200, 413) or r["small"]["server_errors"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
