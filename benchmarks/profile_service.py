"""Where a served request's time goes, layer by layer: py-spy samples a real `bentoml serve` under load.

    python -m benchmarks.profile_service [--model DIR] [--variant int8] [--requests 1500] [--format PNG|JPEG]

py-spy (a sampling profiler, in the dev extras) records every Python thread of the server's process
tree at 200 Hz while 16 concurrent clients post 256 px photos to /segment. Each sample is charged to
the nearest frame, from the leaf up, that matches one of the LAYERS rules below; the table gives
milliseconds of thread time per request. Thread time is wall time a thread was running or waiting for
a core: on 2 shared cores it runs above CPU time, so the split is the point, not the sum. ONNX
Runtime's own worker threads are native and invisible to py-spy: the "model" row is the Python thread
waiting in Session.run. Prints the table, writes benchmarks/results/profile-<date>.md and a PNG.
"""
from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RATE = 200

# (layer, substring of a py-spy frame "function (file:line)"), checked leaf to root; the first frame
# that matches any rule owns the sample, rules earlier in this list win on the same frame.
LAYERS = [
    ("model: ONNX Runtime run (batch of 8)", "Session.run"),
    ("model: batch assembly (np.stack) + split", "Batcher."),
    ("batch queue: worker thread idle", "Queue.get"),
    ("decode + validate upload (Pillow)", "load_rgb"),
    ("decode + validate upload (Pillow)", "open_image"),
    ("decode + validate upload (Pillow)", "decode_image"),
    ("to the model's scale (resize, pad)", "Job.__init__"),
    ("scores upsampled to the upload's size", "upsample_scores"),
    ("scores upsampled to the upload's size", "Job.mask"),
    ("mask back to upload size", "resize_mask"),
    ("palette PNG encode (Pillow)", "palette_png"),
    ("stats / overlay / RLE", "class_stats"),
    ("multipart parse (python-multipart) + gate, admission (ours)", "read_upload"),
    ("multipart parse (python-multipart) + gate, admission (ours)", "python_multipart"),
    ("multipart parse (python-multipart) + gate, admission (ours)", "formparsers"),
    ("multipart parse (python-multipart) + gate, admission (ours)", "Gate."),
    ("multipart parse (python-multipart) + gate, admission (ours)", "serving/service.py"),
    ("BentoML: OpenTelemetry tracing", "OpenTelemetry"),
    ("BentoML: OpenTelemetry tracing", "opentelemetry"),
    ("BentoML: OpenTelemetry tracing", "otel_"),
    ("BentoML: OpenTelemetry tracing", "Span."),
    ("BentoML: OpenTelemetry tracing", "Tracer."),
    ("BentoML: access log", "AccessLog"),
    ("BentoML: prometheus metrics", "Metrics"),
    ("BentoML: prometheus metrics", "prometheus"),
    ("BentoML: other middleware (timeout, errors, concurrency)", "TimeoutMiddleware"),
    ("BentoML: other middleware (timeout, errors, concurrency)", "ServerErrorMiddleware"),
    ("BentoML: other middleware (timeout, errors, concurrency)", "MaxConcurrencyMiddleware"),
    ("BentoML: other middleware (timeout, errors, concurrency)", "bentoml"),
    ("HTTP: uvicorn/httptools parse + send", "HttpToolsProtocol"),
    ("HTTP: uvicorn/httptools parse + send", "RequestResponseCycle"),
    ("HTTP: uvicorn/httptools parse + send", "uvicorn"),
    ("HTTP: starlette", "starlette"),
    ("HTTP: starlette", "Starlette"),
    ("event loop (asyncio/uvloop) and hand-offs", "asyncio"),
    ("event loop (asyncio/uvloop) and hand-offs", "Runner.run"),
]


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):  # leaf first
        for layer, needle in LAYERS:
            if needle in frame:
                return layer
    return "other"


def aggregate(raw: Path, n_requests: int) -> dict[str, float]:
    """ms of thread time per request in each layer, from py-spy's raw (collapsed) output."""
    samples = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[classify(stack.split(";"))] += int(count)
    ms = {k: v / RATE * 1000 / n_requests for k, v in samples.most_common()}
    return ms


def profile_service(model_dir: Path, variant: str = "int8", n: int = 1500, fmt: str = "PNG", concurrency: int = 16) -> dict:
    from benchmarks.__main__ import load, photos
    from loadtest.server import served

    pyspy = Path(sys.executable).with_name("py-spy")
    if not pyspy.is_file():
        raise SystemExit("error: py-spy not found next to this Python; pip install py-spy (it is in the dev extras)")
    payloads = photos(256, fmt)
    with tempfile.TemporaryDirectory() as tmp, served(model_dir, SEG_VARIANT=variant, SEG_MAX_BATCH_SIZE=8) as proc:
        raw = Path(tmp) / "stacks.txt"
        load(proc.url, payloads, concurrency, 100)  # warm
        spy = subprocess.Popen([str(pyspy), "record", "--subprocesses", "--nonblocking", "-r", str(RATE), "--format", "raw",
                                "-o", str(raw), "-p", str(proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(2)  # py-spy attaches
        res = load(proc.url, payloads, concurrency, n)
        spy.send_signal(2)
        _, err = spy.communicate(timeout=120)
        if not raw.is_file():
            raise SystemExit(f"error: py-spy wrote nothing ({(err or '').strip().splitlines()[-1:]}); it needs ptrace rights over the server")
        layers = aggregate(raw, n)
    return {"format": fmt, "requests": n, "concurrency": concurrency, "rps": res["rps"], "errors": res["errors"], "layers": layers}


def to_markdown(profiles: list[dict]) -> str:
    L = [f"# Where a request's time goes ({dt.date.today().isoformat()})", "",
         "py-spy samples (200 Hz) of every Python thread of a real `bentoml serve` while 16 clients post 256 px photos "
         "to /segment (int8 model, batches of 8). ms of thread time per request; see benchmarks/profile_service.py "
         "for the rules and what thread time means on 2 shared cores.", "",
         "Server settings: " + ", ".join(f"{k}={os.environ.get(k, 'default')}" for k in ("SEG_TRACING", "SEG_ACCESS_LOG", "SEG_ORT_SPIN")) + ".", ""]
    names = list(dict.fromkeys(k for p in profiles for k in p["layers"]))
    L += ["| layer | " + " | ".join(f"{p['format']} upload" for p in profiles) + " |", "|---|" + "---|" * len(profiles)]
    for k in names:
        L.append(f"| {k} | " + " | ".join(f"{p['layers'].get(k, 0):.2f}" for p in profiles) + " |")
    L.append("| **all but the model rows** | " + " | ".join(f"**{sum(v for k, v in p['layers'].items() if not k.startswith(('model', 'batch queue'))):.2f}**" for p in profiles) + " |")
    L += ["", " ".join(f"{p['format']}: {p['rps']:.0f} req/s, {p['errors']} errors." for p in profiles), ""]
    return "\n".join(L) + "\n"


def plot(profiles: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [k for k in dict.fromkeys(k for p in profiles for k in p["layers"]) if not k.startswith(("model", "batch queue"))]
    fig, ax = plt.subplots(figsize=(8, 4))
    y = np.arange(len(names))
    for i, p in enumerate(profiles):
        ax.barh(y + i * 0.4, [p["layers"].get(k, 0) for k in names], 0.4, label=f"{p['format']} upload")
    ax.set_yticks(y + 0.2), ax.set_yticklabels(names, fontsize=7), ax.invert_yaxis()
    ax.set_xlabel("ms of thread time per request"), ax.legend(), ax.set_title("service time beyond the model, by layer")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "exported_models" / "default")
    p.add_argument("--variant", default="int8", choices=("fp32", "int8"))
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--format", nargs="+", default=["PNG", "JPEG"], choices=("PNG", "JPEG"))
    a = p.parse_args(argv)
    profiles = [profile_service(a.model, a.variant, a.requests, f) for f in a.format]
    md = to_markdown(profiles)
    out = ROOT / "benchmarks" / "results" / f"profile-{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(profiles, out.with_suffix(".png"))
    out.write_text(md + f"\n![profile]({png.name})\n")
    print(md)
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
