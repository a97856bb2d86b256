"""Each worker's memory: `python -m benchmarks.memory [MODEL_DIR ...] [--requests 2000]`.

For each model folder (default: the demo's), a real `bentoml serve` with its default settings: the resident memory
of the server process and of each worker after warm-up, whether any CUDA library (libcu*, libcudnn*, libnvrtc*) is
mapped into a worker, then `--requests` requests of real photos at the model's scale (concurrency 8) and the memory
again. Writes benchmarks/results/memory.md/.json.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import requests

from benchmarks.harness import ROOT, baseline_checkout, children, load, photos, rss_mb, served, stamp, write_report
from contract import DEFAULT_MODEL_DIR

CUDA_LIBS = re.compile(r"/(libcu[a-z]*|libcudnn[a-z_]*|libnvrtc|libnvJitLink)[^/]*\.so")


def workers(pid: int) -> list[int]:
    """The BentoML worker processes under a `bentoml serve` process."""
    return [p for p in children(pid) if b"_bentoml_impl.worker" in Path(f"/proc/{p}/cmdline").read_bytes()]


def cuda_mapped(pid: int) -> list[str]:
    """The CUDA libraries mapped into a process (from /proc/<pid>/maps)."""
    return sorted({m.group(1) for m in CUDA_LIBS.finditer(Path(f"/proc/{pid}/maps").read_text())})


def measure(model_dir: Path, n: int, cwd: Path = ROOT, label: str = "this checkout") -> dict:
    with served(model_dir, cwd=cwd) as proc:
        info = requests.get(proc.url + "/model", timeout=10).json()
        pids = workers(proc.pid)
        before = rss_mb(pids)
        side = max(info["metadata"]["input_size"])
        result = load(proc.url, photos(side), 8, n)
        after = rss_mb(pids)
        tree = sum(rss_mb([proc.pid, *children(proc.pid)]))
        return {"model": str(model_dir), "code": label, "variant": info["variant"], "provider": info["provider"],
                "device_reason": info.get("device_reason", ""), "workers_mb_warm": before, "workers_mb_loaded": after,
                "server_mb": tree, "cuda_libs": sorted({lib for p in pids for lib in cuda_mapped(p)}),
                "requests": n, "errors": result["errors"], "upload_px": side}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", type=Path, nargs="*", default=[ROOT / DEFAULT_MODEL_DIR])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--baseline", metavar="REF", help="also measure this git ref (e.g. the previous main), same run")
    a = p.parse_args(argv)
    rows = [measure(m, a.requests) for m in a.models]
    if a.baseline:
        with baseline_checkout(a.baseline) as tree:
            rows += [measure(m, a.requests, tree, f"previous main ({a.baseline[:7]})") for m in a.models]
    L = [f"# Memory per worker ({stamp(argv, 'benchmarks.memory')})", "",
         "`bentoml serve` with its defaults; resident memory (MB) of each worker after warm-up and after the requests "
         "(real photos at the model's scale, concurrency 8), the whole server tree after them, CUDA libraries mapped.",
         "",
         "| code | model | variant, provider | workers after warm-up | after the requests | server tree | "
         "CUDA libraries in a worker | errors |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        warm, loaded = (" / ".join(f"{v:.0f}" for v in r[k]) for k in ("workers_mb_warm", "workers_mb_loaded"))
        libs = ", ".join(r["cuda_libs"]) or "none"
        L.append(f"| {r['code']} | {r['model']} | {r['variant']}, {r['provider']} | {warm} | {loaded} after "
                 f"{r['requests']} | {r['server_mb']:.0f} | {libs} | {r['errors']} |")  # fmt: skip
    L += ["", "Device: " + "; ".join(sorted({r["device_reason"] for r in rows if r["device_reason"]}))]
    write_report("memory", "\n".join(L) + "\n", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
