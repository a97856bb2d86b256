"""Where a served request's time goes, layer by layer: py-spy samples a real `bentoml serve` under load.

    python -m benchmarks.profile_service [--model DIR] [--variant int8] [--requests 1500] [--format PNG|JPEG]
        [--size 256]
    python -m benchmarks.profile_service --free --format PNG   # the server's own cost (before/after: server_cost)

py-spy (a sampling profiler, in the dev extras) records every Python thread of the server's process
tree at 200 Hz while 16 concurrent clients post 256 px photos to /segment. Each sample is charged to
the nearest frame, from the leaf up, that matches one of the LAYERS rules below; the table gives
milliseconds of thread time per request. Thread time is wall time a thread was running or waiting for
a core: on 2 shared cores it runs above CPU time, so the split is the point, not the sum. ONNX
Runtime's own worker threads are native and invisible to py-spy: the "model" row is the Python thread
waiting in Session.run. Prints the table and writes benchmarks/results/profile.md.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.free_model import build
from benchmarks.harness import ROOT, load, photos, served, stamp, write_report
from contract import DEFAULT_MODEL_DIR

RATE = 200

# (layer, substrings of a py-spy frame "function (file:line)"), checked leaf to root; the first frame that matches
# any rule owns the sample, rules earlier in this list win on the same frame.
LAYERS = [
    ("model: ONNX Runtime run (batch of 8)", ("Session.run",)),
    ("model: batch assembly (np.stack) + split", ("Batcher.",)),
    ("batch queue: worker thread idle", ("Queue.get",)),
    ("decode + validate upload", ("load_rgb", "open_image", "decode_image", "displayed_size", "orientation")),
    ("to the model's scale (resize, pad)", ("Job.__init__",)),
    ("scores upsampled to the upload's size", ("upsample_scores", "Job.mask", "resize_mask")),
    ("palette PNG encode (Pillow)", ("palette_png",)),
    ("stats / overlay / RLE / confidence, metrics", ("class_stats", "confidence", "Monitor.")),
    ("multipart, gate, admission (ours)", ("read_upload", "python_multipart", "formparsers", "Gate.", "serving/")),
    ("BentoML: OpenTelemetry tracing", ("OpenTelemetry", "opentelemetry", "otel_", "Span.", "Tracer.")),
    ("BentoML: access log", ("AccessLog",)),
    ("BentoML: prometheus metrics", ("Metrics", "prometheus")),
    ("BentoML: other middleware", ("TimeoutMiddleware", "ServerErrorMiddleware", "MaxConcurrency", "bentoml")),
    ("HTTP: uvicorn/httptools, starlette", ("HttpToolsProtocol", "RequestResponseCycle", "uvicorn", "starlette")),
    ("event loop (asyncio/uvloop) and hand-offs", ("asyncio", "Runner.run")),
]


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):  # leaf first
        for layer, needles in LAYERS:
            if any(n in frame for n in needles):
                return layer
    return "other"


def aggregate(raw: Path, n_requests: int) -> dict[str, float]:
    """ms of thread time per request in each layer, from py-spy's raw (collapsed) output."""
    samples = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[classify(stack.split(";"))] += int(count)
    return {k: v / RATE * 1000 / n_requests for k, v in samples.most_common()}


def profile_service(model_dir: Path, variant: str = "int8", n: int = 1500, fmt: str = "PNG", concurrency: int = 16,
                    size: int = 256) -> dict:  # fmt: skip
    """py-spy over `bentoml serve` of `model_dir` while `concurrency` clients post `size` px photos."""
    pyspy = Path(sys.executable).with_name("py-spy")
    if not pyspy.is_file():
        raise SystemExit("error: py-spy not found next to this Python; pip install py-spy (it is in the dev extras)")
    payloads = photos(size, fmt)
    with tempfile.TemporaryDirectory() as tmp, served(model_dir, SEG_VARIANT=variant) as proc:
        raw = Path(tmp) / "stacks.txt"
        load(proc.url, payloads, concurrency, 100)  # warm
        cmd = f"record --subprocesses --nonblocking -r {RATE} --format raw -o {raw} -p {proc.pid}".split()
        spy = subprocess.Popen([str(pyspy), *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(2)  # py-spy attaches
        res = load(proc.url, payloads, concurrency, n)
        spy.send_signal(2)
        _, err = spy.communicate(timeout=120)
        if not raw.is_file():
            why = (err or "").strip().splitlines()[-1:]
            raise SystemExit(f"error: py-spy wrote nothing ({why}); it needs ptrace rights over the server")
        layers = aggregate(raw, n)
    return {"format": fmt, "size": size, "requests": n, "concurrency": concurrency, "rps": res["rps"],
            "errors": res["errors"], "layers": layers}  # fmt: skip


def to_markdown(profiles: list[dict], when: str = "") -> str:
    settings = ", ".join(
        f"{k}={os.environ.get(k, 'default')}" for k in ("SEG_TRACING", "SEG_ACCESS_LOG", "SEG_ORT_SPIN")
    )
    L = [f"# Where a request's time goes ({when})", "",
         f"py-spy samples (200 Hz) of every Python thread of a real `bentoml serve` while 16 clients post "
         f"{profiles[0].get('size', 256)} px photos "
         "to /segment (batches of up to 8). ms of thread time per request; see benchmarks/profile_service.py for the "
         f"rules and what thread time means on 2 shared cores. Server settings: {settings}.", "",
         "| layer | " + " | ".join(f"{p['format']} upload" for p in profiles) + " |",
         "|---|" + "---|" * len(profiles)]  # fmt: skip
    for k in dict.fromkeys(k for p in profiles for k in p["layers"]):
        L.append(f"| {k} | " + " | ".join(f"{p['layers'].get(k, 0):.2f}" for p in profiles) + " |")
    rest = [sum(v for k, v in p["layers"].items() if not k.startswith(("model", "batch queue"))) for p in profiles]
    L.append("| **all but the model rows** | " + " | ".join(f"**{v:.2f}**" for v in rest) + " |")
    runs = " ".join(f"{p['format']}: {p['rps']:.0f} req/s, {p['errors']} errors."
                    for p in profiles)  # fmt: skip
    return "\n".join(L + ["", runs, ""]) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / DEFAULT_MODEL_DIR)
    p.add_argument("--variant", default="int8", choices=("fp32", "int8"))
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--size", type=int, default=256, help="the photos' side in pixels")
    p.add_argument("--format", nargs="+", default=["PNG", "JPEG"], choices=("PNG", "JPEG"))
    p.add_argument("--free", action="store_true", help="serve the near-zero-cost model built from --model")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model, a.variant = (build(a.model, Path(tmp) / "free"), "fp32") if a.free else (a.model, a.variant)
        profiles = [profile_service(model, a.variant, a.requests, f, size=a.size) for f in a.format]
    write_report("profile", to_markdown(profiles, stamp(argv, "benchmarks.profile_service")), profiles)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
