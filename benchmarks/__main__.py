"""One run, side by side, on this machine: `python -m benchmarks [--quick] [--model DIR] [--run RUN_DIR]`.

1. model: PyTorch eager vs ONNX Runtime fp32 vs int8 (images/s, batch 1 and 8), FLOPs, fraction of CPU peak
2. service: HTTP throughput and p50/p95/p99 at several concurrencies, batching on and off, vs raw ORT
3. the naive alternative: fastai `learn.predict` per request behind a plain HTTP server
4. cold start: process start to /readyz 200
5. cost per pixel: service latency for uploads from 128^2 to 512^2
Figures are ratios within this run (the machine is shared and noisy), medians of repeats. Writes
benchmarks/results/<date>.md and PNG plots; prints the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from loadtest import client
from loadtest.server import process, served

ROOT = Path(__file__).resolve().parents[1]
PEAK_FLOP_PER_CYCLE = 32  # AVX2: 2 FMA units x 8 fp32 lanes x 2 FLOPs


def cpu_peak() -> tuple[float, str]:
    ghz = 0.0
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            ghz = float(line.split(":")[1]) / 1000
            break
    cores = len(os.sched_getaffinity(0))
    return (
        cores * ghz * 1e9 * PEAK_FLOP_PER_CYCLE,
        f"{cores} cores x {ghz:.2f} GHz x {PEAK_FLOP_PER_CYCLE} FLOP/cycle (AVX2 FMA)",
    )


def photos(size: int, fmt: str = "PNG") -> list[bytes]:
    """Four skimage.data photos squished to size x size, as PNG (zlib level 1) or JPEG (quality 90)."""
    return client.photos((size,), fmt)


def _rate(fn, n_images: int, repeats: int, min_time: float = 1.0) -> float:
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        k, t0 = 0, time.perf_counter()
        while True:
            fn()
            k += 1
            if time.perf_counter() - t0 >= min_time:
                break
        rates.append(k * n_images / (time.perf_counter() - t0))
    return float(np.median(rates))


def bench_model(model_dir: Path, run_dir: Path | None, repeats: int, threads: int) -> dict:
    from benchmarks.flops import count_flops
    from serving.runtime import SegmentationRuntime

    rows = []
    variants = {"ORT fp32": SegmentationRuntime.load(model_dir, "cpu", "fp32", threads=threads)}
    h, w = variants["ORT fp32"].meta.input_size
    if (model_dir / "model.int8.onnx").is_file():
        variants["ORT int8"] = SegmentationRuntime.load(model_dir, "cpu", "int8", threads=threads)
    torch_model = None
    if run_dir is not None:
        import torch

        from training.run import load_run

        torch.set_num_threads(threads)
        learn, meta, _ = load_run(run_dir)
        torch_model = learn.model.eval()
        mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    sized = {}  # ORT runs at sizes other than the exported one: the same learner exported again at that size
    for size in (128, 256, 512):
        if (size, size) != (h, w) and torch_model is not None and not variants["ORT fp32"].meta.dynamic_hw:
            print(f"   exporting the learner again at {size} px (fp32 + int8) for the ORT rows", flush=True)
            sized[size] = sized_sessions(learn, meta, size, threads)
        for batch in (1, 8):
            x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
            row = {"size": size, "batch": batch}
            if torch_model is not None:
                import torch

                def eager():
                    with torch.inference_mode():
                        t = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std
                        torch_model(t).argmax(1)

                row["PyTorch eager"] = _rate(eager, batch, repeats)
            for name, r in variants.items():
                if (size, size) == (h, w) or r.meta.dynamic_hw:
                    row[name] = _rate(lambda: r.run(x), batch, repeats)
            for name, run in sized.get(size, {}).items():
                row[name] = _rate(lambda: run(x), batch, repeats)
            rows.append(row)
    flops = count_flops(model_dir / "model.onnx", hw=(h, w))
    peak, how = cpu_peak()
    best = max(v for r in rows if r["size"] == h for k, v in r.items() if k.startswith("ORT"))
    return {
        "rows": rows,
        "flops_per_image": flops,
        "peak_flops": peak,
        "peak_how": how,
        "input_size": [h, w],
        "best_ort_img_s": best,
        "fraction_of_peak": best * flops / peak,
        "threads": threads,
    }


def sized_sessions(learn, meta: dict, size: int, threads: int) -> dict:
    """ORT fp32 and int8 sessions of the learner exported at `size` px (the served graph has a fixed size),
    with the served runtime's session options; int8 calibrated on photo crops. name -> run(uint8 NHWC)."""
    import tempfile

    import onnxruntime as ort

    from contract.session import session_options
    from training.export import make_int8
    from training.export.graph import export_graph, inference_module

    tmp = Path(tempfile.mkdtemp(prefix=f"bench-{size}-"))
    fp32, int8 = tmp / "model.onnx", tmp / "model.int8.onnx"
    export_graph(
        inference_module(learn.model, meta["mean"], meta["std"], probs=True, trace_hw=(size, size)),
        (size, size),
        fp32,
        True,
        "auto",
    )
    crops = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in photos(size)] * 2)
    make_int8(fp32, int8, crops, crops[:4])
    out = {}
    for name, path in (("ORT fp32", fp32), ("ORT int8", int8)):
        sess = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        out[name] = lambda x, sess=sess: sess.run(["mask"], {"image": x})[0]
    return out


def forced_int8(model_dir: Path, run: Path | None) -> Path:
    """A temporary copy of `model_dir` with an int8 variant made by the export's own recipe (training.export.make_int8),
    calibrated on the run's training images (or the model's samples), kept whatever its agreement: for a benchmark
    only. Its agreement with fp32 is printed and written beside it as int8-forced.json."""
    import shutil
    import tempfile

    from training.export import load_images, make_int8

    out = Path(tempfile.mkdtemp(prefix="forced-int8-")) / model_dir.name
    shutil.copytree(model_dir, out)
    from serving.runtime import SegmentationRuntime

    size = SegmentationRuntime.load(model_dir, "cpu", "fp32", threads=1).meta.input_size
    train = []
    if run is not None and (run / "config.json").is_file():
        data = ROOT / json.loads((run / "config.json").read_text())["config"]["data"]
        train = sorted((data / "images").glob("*.png"))[:32]
    paths = train or sorted((model_dir / "samples").glob("*.png"))

    from contract.metrics import CHECK_DIR, explain, read_check

    bundled = read_check(model_dir)
    if bundled is not None:  # the export's held-out images with their truths: the accuracy rule is reported too
        check, truths, meta = bundled
        info = make_int8(
            out / "model.onnx",
            out / "model.int8.onnx",
            load_images(paths, size),
            check,
            truths,
            meta["codes"],
            meta.get("void"),
            meta["metric"],
        )
        shutil.rmtree(out / CHECK_DIR)  # forced: the service must not re-check (and drop) it
    else:
        info = make_int8(
            out / "model.onnx",
            out / "model.int8.onnx",
            load_images(paths, size),
            load_images(sorted((model_dir / "samples").glob("*.png")) or paths[:8], size),
        )
    (out / "int8-forced.json").write_text(json.dumps(info, indent=2, default=float))
    print(
        f"   int8 forced for this run: {explain(info) if 'ratio' in info else info['why']}; {info['agreement']:.2%} pixel agreement "
        f"with fp32, {info['speedup']:.2f}x fp32 in the export's speed check",
        flush=True,
    )
    return out


def load(url: str, payloads: list[bytes], concurrency: int, n: int, route: str = "/segment") -> dict:
    """n requests at `concurrency` (after a warm-up round): req/s, p50/p95/p99 ms, errors."""
    results, wall = client.run(
        url, payloads, concurrency=concurrency, n=n, route=route, timeout=120, warmup=min(concurrency, n)
    )
    return {"concurrency": concurrency, **client.summary(results, wall)}


def overhead_profile(model_dir: Path, variant: str, repeats: int = 200) -> dict:
    """CPU milliseconds per 256 px request in each pure step of the data path (no HTTP), as the service runs them."""
    from serving import imaging, pipeline
    from serving.runtime import SegmentationRuntime

    rt = SegmentationRuntime.load(model_dir, "cpu", variant, threads=1)
    data = photos(256)[0]
    im = imaging.open_image(data, max_bytes=10**9, max_pixels=10**9)
    img = imaging.load_rgb(im, data)
    plan = pipeline.plan(rt.meta, img.size)
    job = pipeline.Job(rt.meta, img, plan)
    x = job.single_input[None]
    masks, probs = rt.run_scores(x)

    def finish():
        j = pipeline.Job(rt.meta, img, plan)
        j.add([(masks[0], probs[0] if probs is not None else None)])
        return j.mask()

    mask = finish()
    steps = {
        "decode + validate (PNG 256 px: header, CRCs, libspng)": lambda: imaging.load_rgb(
            imaging.open_image(data, max_bytes=10**9, max_pixels=10**9), data
        ),
        "to the model's scale (resize, pad)": lambda: pipeline.Job(rt.meta, img, plan),
        "model (ORT, 1 thread, batch 1)": lambda: rt.run_scores(x),
        "scores upsampled to 256 px + argmax": finish,
        "palette PNG encode": lambda: imaging.palette_png(mask, rt.meta.colours),
    }
    res = {}
    for name, fn in steps.items():
        fn()
        t = time.process_time()
        for _ in range(repeats):
            fn()
        res[name] = (time.process_time() - t) / repeats * 1000
    return res


def server_cpu_per_request(model_dir: Path, variant: str, n: int = 400, fmt: str = "PNG", cwd: Path = ROOT) -> dict:
    """CPU seconds the whole server process tree spends per request at concurrency 16, minus the model's own CPU
    (`cwd`: the checkout whose service runs)."""
    import psutil

    from serving.runtime import SegmentationRuntime

    payloads = photos(256, fmt)
    with served(model_dir, cwd=cwd, SEG_VARIANT=variant, SEG_MAX_BATCH_SIZE=8) as proc:
        tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        load(proc.url, payloads, 16, 32)

        def cpu():
            total = 0.0
            for p in tree:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            return total

        c0 = cpu()
        res = load(proc.url, payloads, 16, n)
        used = cpu() - c0
    rt = SegmentationRuntime.load(model_dir, "cpu", variant, threads=2)
    small = np.random.default_rng(0).integers(0, 256, (8, *rt.meta.input_size, 3), dtype=np.uint8)
    rt.run(small)
    t = time.process_time()
    for _ in range(max(n // 8, 10)):
        rt.run(small)
    model_cpu = (time.process_time() - t) / (max(n // 8, 10) * 8)
    return {
        "server_cpu_ms_per_request": used / n * 1000,
        "model_cpu_ms_per_image": model_cpu * 1000,
        "overhead_cpu_ms_per_request": used / n * 1000 - model_cpu * 1000,
        "rps": res["rps"],
    }


@contextlib.contextmanager
def peer_server(module: str, *args: str, timeout: float = 240):
    """Run `python -m <module> ... --port P` in its own process group; yield its URL once /readyz answers."""
    with process([sys.executable, "-m", module, *args, "--port", "{port}"], module, timeout, stop_timeout=30) as (
        _,
        url,
    ):
        yield url


def bench_naive(run_dir: Path, concurrency: int, n: int) -> dict:
    with peer_server("benchmarks.naive_server", "--run", str(run_dir), timeout=180) as url:
        return load(url, photos(256), concurrency, n)


@contextlib.contextmanager
def baseline_checkout(ref: str):
    """A detached git worktree of `ref` (e.g. the previous main), removed afterwards."""
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="seg-baseline-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True)


def bench_compare(model_dir: Path, variant: str, concurrencies, n: int, baseline: str | None, rounds: int = 2) -> dict:
    """256 px PNG to /segment at each concurrency: this service, the `baseline` ref's service (a worktree),
    LitServe and Ray Serve, same model variant and per-request work, raced as benchmarks.server_cost races
    them (servers taking turns, order reversed every other round; each cell the median round, all rounds
    kept). name -> one row per concurrency."""
    from benchmarks.server_cost import contenders, race

    with contextlib.ExitStack() as stack:
        tree = stack.enter_context(baseline_checkout(baseline)) if baseline else None
        table = race(
            contenders(model_dir, tree, baseline, variant), {"256 px PNG": photos(256)}, n, rounds, concurrencies
        )
    return {name: rows["256 px PNG"] for name, rows in table.items()}


def cold_start(model_dir: Path, variant: str, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        with served(model_dir, SEG_VARIANT=variant):
            times.append(time.perf_counter() - t)
    return times


def cost_per_pixel(model_dir: Path, variant: str, n: int) -> list[dict]:
    rows = []
    with served(model_dir, SEG_VARIANT=variant) as proc:
        for size in (128, 256, 384, 512):
            r = load(proc.url, photos(size), 1, n)
            rows.append({"size": size, "p50_ms": r["p50"], "us_per_kpixel": r["p50"] * 1000 / (size * size / 1000)})
    return rows


def raw_ort(model_dir: Path, variant: str, threads: int, batch: int) -> float:
    from serving.runtime import SegmentationRuntime

    rt = SegmentationRuntime.load(model_dir, "cpu", variant, threads=threads)
    x = np.random.default_rng(0).integers(0, 256, (batch, *rt.meta.input_size, 3), dtype=np.uint8)
    return _rate(lambda: rt.run(x), batch, 3)


def plots(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    m = report["model"]["rows"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{r['size']}px b{r['batch']}" for r in m]
    keys = [k for k in ("PyTorch eager", "ORT fp32", "ORT int8") if any(k in r for r in m)]
    for i, k in enumerate(keys):
        ax.bar(np.arange(len(m)) + i * 0.27, [r.get(k, 0) for r in m], 0.27, label=k)
    (
        ax.set_xticks(np.arange(len(m)) + 0.27),
        ax.set_xticklabels(labels, fontsize=8),
        ax.set_ylabel("images/s"),
        ax.legend(),
    )
    ax.set_title("model throughput (CPU)")
    fig.tight_layout()
    files.append(out.with_name(out.stem + "-model.png"))
    fig.savefig(files[-1], dpi=80)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for label, rows in report["compare"].items():
        ax.plot([r["concurrency"] for r in rows], [r["rps"] for r in rows], "o-", label=label)
    if "naive" in report:
        ax.plot(
            [report["naive"]["concurrency"]], [report["naive"]["rps"]], "s", color="red", label="naive fastai server"
        )
    ax.axhline(report["raw_ort_b8"], ls="--", color="grey", label="raw ORT batch 8 (ceiling)")
    ax.set_xscale("log", base=2), ax.set_xlabel("concurrency"), ax.set_ylabel("requests/s"), ax.legend(fontsize=8)
    ax.set_title("HTTP throughput, 256 px PNG uploads")
    fig.tight_layout()
    files.append(out.with_name(out.stem + "-service.png"))
    fig.savefig(files[-1], dpi=80)
    plt.close("all")
    return files


CPU_GOAL_MS = 1.5  # service CPU beyond the model per 256 px PNG request (issue 11)


def compare_markdown(r: dict) -> list[str]:
    """Section 2: this service, the previous main and the peers side by side, and the goals against them."""
    rows = r["compare"]
    conc = [x["concurrency"] for x in rows["this service"]]
    L = [
        "## 2. This service, the previous main and peers (256 px PNG to /segment, same model variant and per-request work)",
        "",
        "| server | " + " | ".join(f"c={c}: req/s (p50 / p99 ms)" for c in conc) + " | errors |",
        "|---|" + "---|" * (len(conc) + 1),
    ]
    for name, xs in rows.items():
        L.append(
            f"| {name} | "
            + " | ".join(f"{x['rps']:.1f} ({x['p50']:.0f} / {x['p99']:.0f})" for x in xs)
            + f" | {sum(x['errors'] for x in xs)} |"
        )
    if any("rounds_rps" in x for xs in rows.values() for x in xs):
        L += [
            "",
            "Each cell: the median of the rounds (servers took turns, order reversed every other round); req/s per round: "
            + "; ".join(
                f"{name} " + ", ".join("/".join(f"{v:.0f}" for v in x["rounds_rps"]) for x in xs)
                for name, xs in rows.items()
            )
            + ".",
        ]
    L += [
        "",
        f"Raw ONNX Runtime at {r['model']['threads']} threads, no HTTP: batch 1 {r['raw_ort_b1']:.1f} img/s, batch 8 {r['raw_ort_b8']:.1f} img/s (the ceiling).",
        "",
    ]
    peers = {k: v for k, v in rows.items() if k != "this service" and not k.startswith("previous")}
    ours = {x["concurrency"]: x for x in rows["this service"]}
    for c in (16, 32):
        if c not in ours:
            continue
        line = f"- c={c}: {ours[c]['rps']:.1f} req/s = {ours[c]['rps'] / r['raw_ort_b8']:.2f} of the raw batch-8 ceiling (goal >= 0.95)"
        if peers:
            best_name, best = max(
                ((k, next(x for x in v if x["concurrency"] == c)) for k, v in peers.items()),
                key=lambda kv: kv[1]["rps"],
            )
            line += (
                f"; best peer {best_name} {best['rps']:.1f} req/s: ratio {ours[c]['rps'] / best['rps']:.2f} (goal >= 1.2), "
                f"p99 {ours[c]['p99']:.0f} vs {best['p99']:.0f} ms (goal: lower)"
            )
        for k, v in rows.items():
            if k.startswith("previous"):
                old = next(x for x in v if x["concurrency"] == c)
                line += f"; previous main {old['rps']:.1f} req/s (p99 {old['p99']:.0f} ms): {ours[c]['rps'] / old['rps']:.2f}x"
        L.append(line)
    return L + [""]


def to_markdown(r: dict, files: list[Path]) -> str:
    L = [
        f"# Benchmark {r['date']}",
        "",
        f"Machine: {r['machine']}; model {r['model_dir']} ({r['variant']} served); "
        f"threads {r['model']['threads']}. Client and server share the same 2 cores.",
        "",
    ]
    L += [
        "## 1. Model (images/s)",
        "",
        "| size | batch | PyTorch eager | ORT fp32 | ORT int8 |",
        "|---|---|---|---|---|",
    ]
    for row in r["model"]["rows"]:
        L.append(
            f"| {row['size']} | {row['batch']} | "
            + " | ".join(f"{row[k]:.1f}" if k in row else "n/a" for k in ("PyTorch eager", "ORT fp32", "ORT int8"))
            + " |"
        )
    m = r["model"]
    L += [
        "",
        f"FLOPs per image at {m['input_size'][0]} px: {m['flops_per_image'] / 1e9:.2f} GFLOP; CPU peak {m['peak_flops'] / 1e9:.0f} GFLOP/s "
        f"({m['peak_how']}); best ORT {m['best_ort_img_s']:.1f} img/s = {m['fraction_of_peak']:.1%} of peak.",
        "",
    ]
    L += compare_markdown(r)
    L += [
        "### Where the time goes (CPU ms per 256 px request, measured on the pure functions)",
        "",
        "| step | ms |",
        "|---|---|",
    ]
    L += [f"| {k} | {v:.2f} |" for k, v in r["profile"].items()]
    for fmt, s in r.get("server_cpu", {}).items():  # fmt: "PNG", "JPEG", "PNG, previous main"
        over = s["overhead_cpu_ms_per_request"]
        verdict = "met" if over <= CPU_GOAL_MS else f"missed by {over / CPU_GOAL_MS:.1f}x"
        L += [
            "",
            f"{s.get('label', 'this service')}, whole server process tree at concurrency 16, 256 px {fmt} uploads: "
            f"{s['server_cpu_ms_per_request']:.2f} ms CPU per request, of which the model {s['model_cpu_ms_per_image']:.2f} ms: "
            f"beyond the model {over:.2f} ms (goal <= {CPU_GOAL_MS} ms: {verdict}); {s['rps']:.0f} req/s.",
        ]
    if r.get("layers"):
        from benchmarks.profile_service import to_markdown as layers_md

        L += ["", "### Where the time goes in the running server (py-spy, by layer)", ""]
        L += layers_md(r["layers"]).split("\n")[2:]
    if "naive" in r:
        n = r["naive"]
        ours = next(x for x in r["compare"]["this service"] if x["concurrency"] == n["concurrency"])
        L += [
            "",
            "## 3. Naive fastai server (learn.predict per request)",
            "",
            f"At concurrency {n['concurrency']}: {n['rps']:.1f} req/s, p99 {n['p99']:.0f} ms. Ours: {ours['rps']:.1f} req/s, p99 {ours['p99']:.0f} ms "
            f"-> {ours['rps'] / n['rps']:.1f}x throughput (goal >= 4x), p99 ratio {ours['p99'] / n['p99']:.2f} (goal <= 0.25).",
        ]
    if r.get("bigimages"):
        from loadtest.bigimages import to_markdown as big_md

        L += [
            "",
            "## 3b. Large photos, tiled, while 256 px requests keep coming (`python -m loadtest.bigimages`)",
            "",
            big_md(r["bigimages"]),
        ]
    L += [
        "",
        "## 4. Cold start (process start to /readyz 200)",
        "",
        f"Median {np.median(r['cold_start_s']):.1f} s over {len(r['cold_start_s'])} starts (goal <= 5 s): "
        + ", ".join(f"{t:.1f}" for t in r["cold_start_s"]),
    ]
    L += ["", "## 5. Cost per pixel (concurrency 1, p50)", "", "| upload | p50 ms | us per 1000 px |", "|---|---|---|"]
    L += [f"| {x['size']}^2 | {x['p50_ms']:.1f} | {x['us_per_kpixel']:.1f} |" for x in r["cost_per_pixel"]]
    L += [""] + [f"![{f.stem}]({f.name})" for f in files]
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="one-run benchmark report")
    p.add_argument("--model", type=Path, default=ROOT / "exported_models" / "default")
    p.add_argument(
        "--run",
        type=Path,
        help="fastai run folder (for PyTorch eager and the naive server); default: the one in export.json",
    )
    p.add_argument("--variant", default="int8", choices=("fp32", "int8"), help="variant every server runs")
    p.add_argument(
        "--baseline", metavar="REF", help="also serve this git ref (e.g. the previous main) from a worktree, same run"
    )
    p.add_argument(
        "--force-int8",
        action="store_true",
        help="where the export dropped int8 (its accuracy rule), quantize a "
        "copy of the model for this run only, with the export's own recipe; the report gives its agreement",
    )
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--compare-only", action="store_true", help="only section 2: this service, the baseline and the peers"
    )
    a = p.parse_args(argv)
    run = a.run
    if run is None and (a.model / "export.json").is_file():
        run = Path(json.loads((a.model / "export.json").read_text())["run"])
    if a.variant == "int8" and not (a.model / "model.int8.onnx").is_file():
        if not a.force_int8:
            print(
                f"   {a.model}: the export kept no int8 variant; serving fp32 (--force-int8 makes one for this run)",
                flush=True,
            )
            a.variant = "fp32"
        else:
            a.model = forced_int8(a.model, run)
    repeats, n = (2, 100) if a.quick else (3, 600)
    threads = len(os.sched_getaffinity(0))
    report = {
        "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "machine": cpu_peak()[1],
        "model_dir": str(a.model),
        "variant": a.variant,
        "baseline": a.baseline,
    }
    if a.compare_only:
        report["raw_ort_b1"] = raw_ort(a.model, a.variant, threads, 1)
        report["raw_ort_b8"] = raw_ort(a.model, a.variant, threads, 8)
        report["compare"] = bench_compare(a.model, a.variant, (1, 16, 32), n, a.baseline)
        out = ROOT / "benchmarks" / "results" / f"{dt.date.today().isoformat()}-compare-{a.variant}.md"
        md = "\n".join(
            [
                f"# Section 2 only ({report['date']})",
                "",
                f"Machine: {report['machine']}; {a.variant}.",
                "",
                *compare_markdown({**report, "model": {"threads": threads}}),
            ]
        )
        out.write_text(md + "\n")
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=float))
        print(md)
        return 0
    print("== 1/6 model throughput", flush=True)
    report["model"] = bench_model(a.model, run if run and run.is_dir() else None, repeats, threads)
    report["raw_ort_b1"] = raw_ort(a.model, a.variant, threads, 1)
    report["raw_ort_b8"] = raw_ort(a.model, a.variant, threads, 8)
    print("== 2/6 service, previous main and peers", flush=True)
    report["compare"] = bench_compare(a.model, a.variant, (1, 16, 32), n, a.baseline)
    report["profile"] = overhead_profile(a.model, a.variant)
    report["server_cpu"] = {fmt: server_cpu_per_request(a.model, a.variant, n, fmt) for fmt in ("PNG", "JPEG")}
    if a.baseline:
        with baseline_checkout(a.baseline) as tree:
            report["server_cpu"]["PNG, previous main"] = {
                **server_cpu_per_request(a.model, a.variant, n, "PNG", cwd=tree),
                "label": f"previous main ({a.baseline[:7]})",
            }
    if Path(sys.executable).with_name("py-spy").is_file():
        from benchmarks.profile_service import profile_service

        report["layers"] = [profile_service(a.model, a.variant, 2 * n, fmt) for fmt in ("PNG", "JPEG")]
    print("== 3/6 large photos", flush=True)
    from loadtest.bigimages import run as run_bigimages

    report["bigimages"] = run_bigimages(a.model, (3000,) if a.quick else (3000, 6300))
    if run and run.is_dir():
        print("== 4/6 naive fastai server", flush=True)
        report["naive"] = bench_naive(run, 16, max(n // 4, 40))
    print("== 5/6 cold start", flush=True)
    report["cold_start_s"] = cold_start(a.model, a.variant, 3)
    print("== 6/6 cost per pixel", flush=True)
    report["cost_per_pixel"] = cost_per_pixel(a.model, a.variant, 30 if a.quick else 60)
    out = ROOT / "benchmarks" / "results" / f"{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    files = plots(report, out)
    md = to_markdown(report, files)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=float))
    print(md)
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
