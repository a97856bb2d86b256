"""Where a served request's time goes, layer by layer: py-spy samples a real `bentoml serve` under load.

    python -m benchmarks.profile_service [--model DIR] [--variant int8] [--requests 1500] [--format PNG|JPEG]
    python -m benchmarks.profile_service --free --baseline REF --format PNG   # the server's own cost, before and after

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
import contextlib
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
    ("decode + validate upload (Pillow)", "displayed_size"),  # EXIF orientation (once a full PNG decode)
    ("decode + validate upload (Pillow)", "orientation"),
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


def top_frames(raw: Path, k: int = 12) -> list[tuple[str, float]]:
    """The `k` leaf frames (function and file, no line) with the largest share of all samples."""
    leaves = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            leaf = stack.split(";")[-1]
            name, _, where = leaf.partition(" (")
            leaves[f"{name} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})"] += int(count)
    total = sum(leaves.values()) or 1
    return [(name, n / total) for name, n in leaves.most_common(k)]


def aggregate(raw: Path, n_requests: int) -> dict[str, float]:
    """ms of thread time per request in each layer, from py-spy's raw (collapsed) output."""
    samples = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            samples[classify(stack.split(";"))] += int(count)
    ms = {k: v / RATE * 1000 / n_requests for k, v in samples.most_common()}
    return ms


def profile_service(
    model_dir: Path,
    variant: str = "int8",
    n: int = 1500,
    fmt: str = "PNG",
    concurrency: int = 16,
    cwd: Path = ROOT,
    size: int = 256,
    label: str = "",
) -> dict:
    """py-spy over `bentoml serve` of `model_dir` from the checkout `cwd` while `concurrency` clients post `size` px photos."""
    from benchmarks.__main__ import load, photos
    from loadtest.server import served

    pyspy = Path(sys.executable).with_name("py-spy")
    if not pyspy.is_file():
        raise SystemExit("error: py-spy not found next to this Python; pip install py-spy (it is in the dev extras)")
    payloads = photos(size, fmt)
    with (
        tempfile.TemporaryDirectory() as tmp,
        served(model_dir, cwd=cwd, SEG_VARIANT=variant, SEG_MAX_BATCH_SIZE=8) as proc,
    ):
        raw = Path(tmp) / "stacks.txt"
        load(proc.url, payloads, concurrency, 100)  # warm
        spy = subprocess.Popen(
            [
                str(pyspy),
                "record",
                "--subprocesses",
                "--nonblocking",
                "-r",
                str(RATE),
                "--format",
                "raw",
                "-o",
                str(raw),
                "-p",
                str(proc.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(2)  # py-spy attaches
        res = load(proc.url, payloads, concurrency, n)
        spy.send_signal(2)
        _, err = spy.communicate(timeout=120)
        if not raw.is_file():
            raise SystemExit(
                f"error: py-spy wrote nothing ({(err or '').strip().splitlines()[-1:]}); it needs ptrace rights over the server"
            )
        layers, top = aggregate(raw, n), top_frames(raw)
    return {
        "format": fmt if size == 256 else f"{size} px {fmt}",
        "label": label,
        "requests": n,
        "concurrency": concurrency,
        "rps": res["rps"],
        "errors": res["errors"],
        "layers": layers,
        "top": top,
    }


def to_markdown(profiles: list[dict]) -> str:
    L = [
        f"# Where a request's time goes ({dt.date.today().isoformat()})",
        "",
        "py-spy samples (200 Hz) of every Python thread of a real `bentoml serve` while 16 clients post photos "
        "to /segment (batches of up to 8). ms of thread time per request; see benchmarks/profile_service.py "
        "for the rules and what thread time means on 2 shared cores.",
        "",
        "Server settings: "
        + ", ".join(f"{k}={os.environ.get(k, 'default')}" for k in ("SEG_TRACING", "SEG_ACCESS_LOG", "SEG_ORT_SPIN"))
        + ".",
        "",
    ]
    names = list(dict.fromkeys(k for p in profiles for k in p["layers"]))
    L += [
        "| layer | " + " | ".join(f"{p.get('label', '')} {p['format']} upload".strip() for p in profiles) + " |",
        "|---|" + "---|" * len(profiles),
    ]
    for k in names:
        L.append(f"| {k} | " + " | ".join(f"{p['layers'].get(k, 0):.2f}" for p in profiles) + " |")
    L.append(
        "| **all but the model rows** | "
        + " | ".join(
            f"**{sum(v for k, v in p['layers'].items() if not k.startswith(('model', 'batch queue'))):.2f}**"
            for p in profiles
        )
        + " |"
    )
    L += [
        "",
        " ".join(
            f"{p.get('label', '')} {p['format']}: {p['rps']:.0f} req/s, {p['errors']} errors.".strip() for p in profiles
        ),
        "",
    ]
    for p in profiles:
        if p.get("top"):
            L += [
                f"Top leaf frames, {p.get('label') or 'this checkout'}, {p['format']} (share of all samples; C calls that release the GIL "
                "include the wait to take it back):",
                "",
                "| frame | share |",
                "|---|---|",
            ]
            L += [f"| {name} | {share:.1%} |" for name, share in p["top"]] + [""]
    return "\n".join(L) + "\n"


def plot(profiles: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [
        k for k in dict.fromkeys(k for p in profiles for k in p["layers"]) if not k.startswith(("model", "batch queue"))
    ]
    fig, ax = plt.subplots(figsize=(8, 4))
    y = np.arange(len(names))
    for i, p in enumerate(profiles):
        w = 0.8 / len(profiles)
        ax.barh(
            y + i * w,
            [p["layers"].get(k, 0) for k in names],
            w,
            label=f"{p.get('label', '')} {p['format']} upload".strip(),
        )
    ax.set_yticks(y + 0.4 - 0.4 / len(profiles)), ax.set_yticklabels(names, fontsize=7), ax.invert_yaxis()
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
    p.add_argument("--size", type=int, default=256, help="upload side in pixels")
    p.add_argument(
        "--free", action="store_true", help="serve the near-zero-cost model built from --model (benchmarks.free_model)"
    )
    p.add_argument("--baseline", metavar="REF", help="profile this git ref (a worktree) first, then this checkout")
    a = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        model = a.model
        if a.free:
            from benchmarks.free_model import build

            model, a.variant = build(a.model, Path(stack.enter_context(tempfile.TemporaryDirectory())) / "free"), "fp32"
        trees = [(ROOT, "this checkout")]
        if a.baseline:
            from benchmarks.__main__ import baseline_checkout

            trees.insert(0, (stack.enter_context(baseline_checkout(a.baseline)), f"previous main ({a.baseline[:7]})"))
        profiles = [
            profile_service(model, a.variant, a.requests, f, cwd=tree, size=a.size, label=label)
            for tree, label in trees
            for f in a.format
        ]
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
