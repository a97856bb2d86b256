"""int8 recipes side by side on one exported model: the accuracy rule, agreement and speed, on this CPU.

    python -m benchmarks.int8_recipes [--model exported_models/default] [--emulate haswell] [--only NAME...] [--tag NAME]

For each recipe (training.export.Recipe: QDQ or QOperator, per-channel or per-tensor weights, 7-bit
weights or not, the quantizer's pre-processing, which nodes stay float) the model's fp32 graph is
quantized with calibration on its run's training images, then judged as the export judges it: its
foreground Dice (mean IoU for street scenes) against the ground truth of the model's bundled held-out
images (check/) as a share of fp32's (rule: >= 99 %), pixel agreement with fp32, and images/s with one
ONNX Runtime thread at batch 8 at the training size (how a service worker runs it), fp32 and int8
measured in alternating rounds. `--emulate haswell` also scores every recipe under `qemu-x86_64 -cpu
Haswell` (AVX2 without VNNI: ONNX Runtime picks its other u8s8 kernels there; scores only, no speed).
Prints a table, writes benchmarks/results/int8-recipes-<date>.md/.json and a PNG.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import cpu_features, write_report
from training.export.variants import throughputs, worker_session

ROOT = Path(__file__).resolve().parents[1]


def recipes():
    from training.export import RECIPE, Recipe

    return [
        RECIPE,
        Recipe(name="qdq-pc-rr-bn", float_nodes=("bn",)),
        Recipe(name="qdq-pt-rr-bn-early", per_channel=False),
        Recipe(name="qdq-pc-8bit-bn-early", reduce_range=False),
        Recipe(name="qop-pc-rr-bn-early", fmt="QOperator"),
        Recipe(name="qdq-pc-rr-bn-early-noprep", pre_process=False),
        Recipe(name="qdq-pc-rr-bn-early-entropy", calibrate="Entropy"),
    ]


def _emulated(folder: Path, cpu: str) -> dict:
    """The start-up re-check of `folder` under qemu-x86_64 -cpu `cpu` (another CPU's int8 kernels)."""
    code = (
        "import json, sys; from serving.runtime import SegmentationRuntime as R; "
        "c = R.load(sys.argv[1], 'cpu', threads=1).int8_check; print('RESULT ' + json.dumps({k: c[k] for k in ('kept', 'ratio', 'agreement')}))"
    )
    r = subprocess.run(
        ["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", code, str(folder)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(
            f"error: qemu-x86_64 -cpu {cpu} failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}"
        )
    return json.loads(line[7:])


def main(argv=None) -> int:
    from contract.metrics import judge, read_check
    from training.export import quantize
    from training.export.gates import load_images

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "exported_models" / "default")
    p.add_argument(
        "--emulate", metavar="CPU", help="also score under qemu-x86_64 -cpu CPU (e.g. haswell: AVX2 without VNNI)"
    )
    p.add_argument("--only", nargs="+", help="recipe names to run")
    p.add_argument("--tag", help="report name: int8-recipes-<tag>-<date> (e.g. the model's name)")
    a = p.parse_args(argv)
    bundled = read_check(a.model)
    if bundled is None:
        raise SystemExit(f"error: {a.model} has no check/ folder; re-export it with `python -m training export`")
    images, truths, info = bundled
    size = images.shape[1:3]
    export = json.loads((a.model / "export.json").read_text())
    run = Path(export["run"])
    train = (
        json.loads((run / "config.json").read_text())["train_images"][:32] if (run / "config.json").is_file() else []
    )
    calib = load_images(train, size) if train else images
    rows = []
    work = Path(tempfile.mkdtemp(prefix="int8-recipes-"))
    try:
        for recipe in recipes():
            if a.only and recipe.name not in a.only:
                continue
            folder = work / recipe.name
            shutil.copytree(
                a.model, folder, ignore=shutil.ignore_patterns("model.int8.onnx", "model.fp16.onnx", "samples")
            )
            t = time.perf_counter()
            kept_float = quantize(folder / "model.onnx", folder / "model.int8.onnx", calib, recipe)
            quant_s = time.perf_counter() - t
            s32, s8 = worker_session(folder / "model.onnx"), worker_session(folder / "model.int8.onnx")
            verdict = judge(
                lambda x: s32.run(["mask"], {"image": x})[0],
                lambda x: s8.run(["mask"], {"image": x})[0],
                images,
                truths,
                info["codes"],
                info.get("void"),
                info["metric"],
            )
            fp32_rate, int8_rate = throughputs([folder / "model.onnx", folder / "model.int8.onnx"], images)
            row = {
                "recipe": recipe.name,
                **recipe.describe(),
                "float_nodes": kept_float,
                "ratio": verdict["ratio"],
                "kept": verdict["kept"],
                "agreement": verdict["agreement"],
                "fp32_img_s": fp32_rate,
                "int8_img_s": int8_rate,
                "speedup": int8_rate / fp32_rate,
                "quantize_s": quant_s,
                "metric": verdict["metric"],
                "fp32": verdict["fp32"],
                "int8": verdict["int8"],
            }
            if a.emulate:
                row["emulated"] = {"cpu": a.emulate, **_emulated(folder, a.emulate)}
            rows.append(row)
            em = (
                f", {a.emulate}: {row['emulated']['ratio']:.2%} / {row['emulated']['agreement']:.2%}"
                if a.emulate
                else ""
            )
            print(
                f"{recipe.name}: ratio {row['ratio']:.2%}, agreement {row['agreement']:.2%}, {row['speedup']:.2f}x fp32{em}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cpu = cpu_features()
    L = [
        f"# int8 recipes on {a.model.name} ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"Host: {cpu}. `python -m benchmarks.int8_recipes"
        + (f" --emulate {a.emulate}" if a.emulate else "")
        + "`. Rule: int8's "
        f"{'mean IoU' if info['metric'] == 'iou_fg' else 'foreground Dice'} on the {len(images)} bundled held-out images >= 99 % of fp32's; "
        f"speed: one ONNX Runtime thread, batch 8, {size[0]}x{size[1]}, fp32 and int8 in 5 alternating rounds (median).",
        "",
        "| recipe | format | weights | 7-bit | pre-process | float nodes | accuracy ratio | rule | agreement | int8 speed-up |"
        + (f" {a.emulate}: ratio / agreement |" if a.emulate else ""),
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if a.emulate else ""),
    ]
    for r in rows:
        fl = f"{r['float_nodes']['batchnorm']} BN + {r['float_nodes']['early_encoder_convs']} early convs"
        L.append(
            f"| {r['recipe']} | {r['format']} | {'per channel' if r['per_channel'] else 'per tensor'} | {'yes' if r['reduce_range'] else 'no'} | "
            f"{'yes' if r['pre_process'] else 'no'} | {fl} | {r['ratio']:.2%} | {'kept' if r['kept'] else 'dropped'} | {r['agreement']:.2%} | "
            f"{r['speedup']:.2f}x ({r['int8_img_s']:.0f} vs {r['fp32_img_s']:.0f} img/s) |"
            + (f" {r['emulated']['ratio']:.2%} / {r['emulated']['agreement']:.2%} |" if a.emulate else "")
        )
    md = "\n".join(L) + "\n"
    name = "int8-recipes" + (f"-{a.tag}" if a.tag else "") + (f"-{a.emulate.lower()}" if a.emulate else "")
    out = write_report(name, md, {"host": cpu, "emulated_cpu": a.emulate, "rows": rows})
    _plot(rows, out.with_suffix(".png"))
    return 0


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.scatter(r["speedup"], r["ratio"] * 100, color="C2" if r["kept"] else "C3")
        ax.annotate(
            r["recipe"], (r["speedup"], r["ratio"] * 100), fontsize=7, xytext=(3, 3), textcoords="offset points"
        )
    ax.axhline(99, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("int8 speed-up over fp32 (1 thread, batch 8)"), ax.set_ylabel("int8 accuracy, % of fp32")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
