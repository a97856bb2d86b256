"""Images per request on the Open Inference Protocol: `python -m benchmarks.oip [--model DIR] [--rounds 20]`.

`bentoml serve` of the model, its defaults; 8 real photos (256 px PNG) sent as 8 single-image infer requests one after
the other, as 8 at once, and as one request holding the 8 (binary BYTES [8]), in alternating rounds: wall and server
CPU milliseconds per image (its process tree). Writes benchmarks/results/oip.md/.json."""

from __future__ import annotations

import argparse
import json
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests

from benchmarks.harness import ROOT, photos, served, stamp, tree_cpu, write_report
from contract import DEFAULT_MODEL_DIR

INFER = "/v2/models/segmentation/infer"


def body(images: list[bytes]) -> tuple[bytes, dict]:
    """One infer request with `images` as a binary BYTES tensor, the masks asked back as binary palette PNGs."""
    blob = b"".join(struct.pack("<I", len(d)) + d for d in images)
    head = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                                   "parameters": {"binary_data_size": len(blob)}}],
                       "outputs": [{"name": "mask_png", "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    return head + blob, {"Inference-Header-Content-Length": str(len(head))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=ROOT / DEFAULT_MODEL_DIR)
    p.add_argument("--rounds", type=int, default=20)
    a = p.parse_args(argv)
    images = (photos(256) * 2)[:8]
    singles = [body([d]) for d in images]
    batch = body(images)
    ways = {"8 single-image requests, one after the other": None, "8 single-image requests at once": 8,
            "1 request holding the 8 images": "batch"}  # fmt: skip
    times = {w: [] for w in ways}
    cpus = {w: [] for w in ways}
    with served(a.model) as proc, requests.Session() as s, ThreadPoolExecutor(8) as pool:

        def send(req):
            r = s.post(proc.url + INFER, data=req[0], headers=req[1], timeout=120)
            assert r.status_code == 200, r.text[:300]

        for _ in range(2):  # warm-up
            send(batch)
            list(pool.map(send, singles))
        for r in range(a.rounds):
            for way, how in ways.items() if r % 2 == 0 else reversed(list(ways.items())):
                c, t = tree_cpu(proc.pid), time.perf_counter()
                if how == "batch":
                    send(batch)
                elif how is None:
                    for req in singles:
                        send(req)
                else:
                    list(pool.map(send, singles))
                times[way].append((time.perf_counter() - t) / 8 * 1000)
                cpus[way].append((tree_cpu(proc.pid) - c) / 8 * 1000)
    med = {w: (float(np.median(times[w])), float(np.median(cpus[w]))) for w in ways}
    rows = {w: {"ms_per_image": t, "cpu_ms_per_image": c} for w, (t, c) in med.items()}
    base = rows["8 single-image requests, one after the other"]
    L = [f"# Images per request, Open Inference Protocol ({stamp(argv, 'benchmarks.oip')})", "",
         f"{a.model} with `bentoml serve` defaults; 8 photos of 256 px (PNG, binary BYTES tensors, masks back as "
         f"binary palette PNGs); medians of {a.rounds} alternating rounds.", "",
         "| how the 8 images are sent | wall ms per image | server CPU ms per image | per image against 8 singles |",
         "|---|---|---|---|"]  # fmt: skip
    for way, r in rows.items():
        L.append(f"| {way} | {r['ms_per_image']:.1f} | {r['cpu_ms_per_image']:.1f} | "
                 f"{r['ms_per_image'] / base['ms_per_image']:.2f}x wall, "
                 f"{r['cpu_ms_per_image'] / base['cpu_ms_per_image']:.2f}x CPU |")  # fmt: skip
    write_report("oip", "\n".join(L) + "\n", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
