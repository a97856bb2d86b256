"""New model versions under load: `.venv/bin/python -m loadtest.swaps [--model exported_models/default]`.

A real `bentoml serve` of a model folder with SEG_RELOAD_S=1 and its default workers, loaded at concurrency 16 with
real photos for the whole run, while the folder is replaced three times: by version B, by a broken version (a cut-off
model.onnx: it must not be served), and by version C. B and C are the model with its classifier's bias moved (the
same cost, other masks), so every answer's mask can be checked against the offline mask of the version its Seg-Model
header names. Reports errors, wrong masks, the time from a version in place to every worker answering with it (the
last answer of the old version), and p99 around the swaps against steady state. Writes
benchmarks/results/swaps.md/.json.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from contract import DEFAULT_MODEL_DIR
from loadtest.client import photos
from loadtest.server import served, write_report


def variant(src: Path, out: Path, shift: float) -> Path:
    """A copy of the model folder (fp32 only) whose last convolution's bias for class 0 is moved by `shift`."""
    import onnx
    from onnx import numpy_helper

    out.mkdir(parents=True)
    model = onnx.load(str(src / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2][-1]
    bias = numpy_helper.to_array(inits[last.input[2]]).copy()
    bias[0] += shift
    inits[last.input[2]].CopyFrom(numpy_helper.from_array(bias, last.input[2]))
    onnx.save(model, str(out / "model.onnx"))
    return out


def replace(live: Path, new: Path) -> float:
    """The live folder replaced by `new` in one rename (as a deployment would); the time it happened."""
    staged = live.with_name(live.name + ".new")
    shutil.copytree(new, staged)
    shutil.rmtree(live)
    staged.rename(live)
    return time.monotonic()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--phase-s", type=float, default=15.0, help="seconds between swaps")
    a = p.parse_args(argv)
    from serving import Segmenter

    payloads = photos((256,))
    with tempfile.TemporaryDirectory(prefix="swaps-") as tmp:
        tmp = Path(tmp)
        versions = {"A": variant(a.model, tmp / "A", 0.0), "B": variant(a.model, tmp / "B", 1.5),
                    "C": variant(a.model, tmp / "C", -1.5)}  # fmt: skip
        broken = tmp / "broken"
        broken.mkdir()
        broken.joinpath("model.onnx").write_bytes((tmp / "A" / "model.onnx").read_bytes()[:5000])
        offline, names = {}, {}
        for key, folder in versions.items():
            seg = Segmenter.load(folder, "cpu", "fp32")
            offline[key] = [seg.predict(d) for d in payloads]
        live = tmp / "live"
        shutil.copytree(versions["A"], live)
        results, stop = [], threading.Event()
        with served(live, SEG_RELOAD_S=1) as proc:
            from serving.models import version_of

            for key, folder in versions.items():
                names[version_of(str(live), folder)[len(folder.name) :]] = key  # "@<digest>" -> key

            def worker(k: int):
                with requests.Session() as s:
                    i = k
                    while not stop.is_set():
                        t = time.monotonic()
                        try:
                            r = s.post(proc.url + "/segment", files={"image": ("p.png", payloads[i % 4])}, timeout=60)
                            version = names.get(r.headers.get("Seg-Model", "?")[len(live.name) :], "?")
                            mask = np.asarray(Image.open(io.BytesIO(r.content))) if r.status_code == 200 else None
                            ok = mask is not None and version != "?" and np.array_equal(mask, offline[version][i % 4])
                            results.append((t, time.monotonic() - t, r.status_code, version, ok))
                        except requests.RequestException as exc:
                            results.append((t, time.monotonic() - t, str(exc)[:80], "?", False))
                        i += 16

            threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
            for th in threads:
                th.start()
            time.sleep(a.phase_s)
            swaps = {}
            broken_info = {}
            for key, folder in (("B", versions["B"]), ("broken", broken), ("C", versions["C"])):
                swaps[key] = replace(live, folder)
                time.sleep(a.phase_s)
                if key == "broken":  # what /model says while the broken version sits in the folder
                    broken_info = requests.get(proc.url + "/model", timeout=10).json()["reload"]
            stop.set()
            for th in threads:
                th.join()
            info = requests.get(proc.url + "/model", timeout=10).json()
    info["reload"]["last_error"] = broken_info.get("last_error")
    report = summarise(results, swaps, info)
    write(report, a)
    return 0 if report["errors"] == 0 and report["wrong"] == 0 else 1


def summarise(results: list, swaps: dict, info: dict) -> dict:
    lat = lambda rows: float(np.percentile([r[1] for r in rows], 99) * 1000) if rows else None  # noqa: E731
    first = min(swaps.values())
    steady = [r for r in results if r[0] < first]
    around = [r for r in results if any(0 <= r[0] - t < 5 for t in swaps.values())]
    to_all = {}
    for key, prev in (("B", "A"), ("C", "B")):
        after = [r for r in results if r[0] >= swaps[key] and r[3] == prev]
        to_all[key] = (max(r[0] + r[1] for r in after) - swaps[key]) if after else 0.0
    errors, wrong = sum(r[2] != 200 for r in results), sum(not r[4] for r in results)
    return {"requests": len(results), "errors": errors, "wrong": wrong,
            "by_version": {v: sum(r[3] == v for r in results) for v in "ABC"},
            "broken_served": any(r[3] == "?" for r in results), "to_every_worker_s": to_all,
            "p99_steady_ms": lat(steady), "p99_around_swaps_ms": lat(around),
            "reload_error": info["reload"]["last_error"], "versions": info["reload"]["versions"]}  # fmt: skip


def write(r: dict, a) -> None:
    when = time.strftime("%Y-%m-%d %H:%M")
    L = [f"# Model swaps under load ({when}; `python -m loadtest.swaps --model {a.model}`)",
         "", f"Concurrency 16, 256 px photos, `bentoml serve` defaults with SEG_RELOAD_S=1; the folder replaced every "
         f"{a.phase_s:.0f} s: A -> B -> a broken model.onnx -> C.", "",
         "| figure | value |", "|---|---|",
         f"| requests | {r['requests']} (" + ", ".join(f"{k} {n}" for k, n in r["by_version"].items()) + ") |",
         f"| errors (non-200) | {r['errors']} |",
         f"| masks different from the offline mask of the version named | {r['wrong']} |",
         f"| the broken version served | {'yes' if r['broken_served'] else 'no'} "
         f"({r['reload_error'] or 'no error'}) |",
         "| from a version in place to every worker on it | "
         + ", ".join(f"{k} {v:.1f} s" for k, v in r["to_every_worker_s"].items()) + " |",
         f"| p99 steady / within 5 s of a swap | {r['p99_steady_ms']:.0f} / {r['p99_around_swaps_ms']:.0f} "
         "ms |"]  # fmt: skip
    write_report("swaps", "\n".join(L) + "\n", r)


if __name__ == "__main__":
    raise SystemExit(main())
