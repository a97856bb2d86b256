"""The loop, end to end: serve -> see -> collect -> label -> fit -> export -> serve, without a restart.

    .venv/bin/python -m loadtest.field_loop [--work runs/loop] [--answers 200]

1. Synthetic demo scenes (128 px butterflies and leaves): a training set, held-out scenes as generated, and "field"
   scenes: other scenes in a shade the training set lacks (every hue turned by 180 degrees: blue butterflies,
   magenta leaves), labels unchanged. A second field set, scored but never trained on, measures how far the new
   model generalises.
2. `fit` v1 on the training set, `export --int8 --bentoml segmentation` into a BentoML store of its own.
3. `bentoml serve` with SEG_MODEL=segmentation:latest, SEG_RELOAD_S=5 and SEG_CAPTURE_DIR (uploads whose answer's
   mean confidence is below the reference's 5th percentile are kept, with their LabelMe pre-annotations).
4. The held-out scenes (`--answers` answers) keep seg_drift low; then 2,000 more (false alarms: its largest value);
   the field scenes raise it past the alert level; the capture folder fills with them.
5. Their true masks stand in for a person's corrections (LabelMe would give them back); `fit` v2 on the training
   set plus the captured images; `export --bentoml segmentation`: the server serves v2 without a restart.
6. The field scenes again: drift, mean confidence and mean foreground IoU before and after, on the scenes sent and
   on the field set never trained on. Writes benchmarks/results/field-loop.md/.json.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from loadtest.server import ROOT, served, write_report

PY = sys.executable


def hue_turned(image: np.ndarray) -> np.ndarray:
    """The scene in a shade the training set lacks: every hue turned by 180 degrees (saturation and value kept)."""
    hsv = np.asarray(Image.fromarray(image).convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(int) + 128) % 256
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def run(cmd: list[str], env: dict) -> None:
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=ROOT, env=env).returncode:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed")


def scenes(folder: Path, n: int, seed: int, shift=None) -> list[tuple[bytes, np.ndarray]]:
    """(PNG bytes, truth) of `n` synthetic scenes, shifted by `shift` when given."""
    from training.synth import SynthConfig, synth

    if not (folder / "codes.txt").is_file():
        synth(SynthConfig(out=folder, n=n, size=128, seed=seed))
    out = []
    for p in sorted((folder / "images").glob("*.png")):
        img = np.asarray(Image.open(p).convert("RGB"))
        buf = io.BytesIO()
        Image.fromarray(shift(img) if shift else img).save(buf, "PNG")
        out.append((buf.getvalue(), np.asarray(Image.open(folder / "masks" / p.name))))
    return out


def pixels(data: bytes) -> str:
    """A scene's identity: the SHA-256 of its decoded RGB pixels (whatever encoded them)."""
    return hashlib.sha256(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).tobytes()).hexdigest()


def send(url: str, items: list, answers: int) -> dict:
    """`answers` requests cycling over `items`: mean confidence, mean foreground IoU, the model version(s)."""
    from contract.metrics import score

    conf, preds, truths, versions = [], [], [], set()
    with requests.Session() as s:
        for i in range(answers):
            data, truth = items[i % len(items)]
            r = s.post(url + "/segment", files={"image": ("scene.png", data)}, timeout=60)
            assert r.status_code == 200, r.text[:200]
            conf.append(float(r.headers["Seg-Confidence"]))
            versions.add(r.headers["Seg-Model"])
            if i < len(items):
                preds.append(np.asarray(Image.open(io.BytesIO(r.content))))
                truths.append(truth)
    iou = score(preds, truths, ["background", "butterfly", "leaf"])["iou_fg"]
    return {"confidence": float(np.mean(conf)), "iou_fg": iou, "versions": sorted(versions)}


def drift(url: str) -> float:
    """The server's seg_drift (the largest over its workers; 0 before any worker has a full window)."""
    text = requests.get(url + "/metrics", timeout=10).text
    values = [float(v) for v in re.findall(r"^seg_drift(?:\{[^}]*\})? ([0-9.eE+-]+)$", text, re.M)]
    return max(values, default=0.0)


def fit_export(data: Path, run_dir: Path, export: Path, env: dict, minutes: float | None = None) -> None:
    """`fit` with its defaults (the plan; `minutes`: its budget, else fit's default), then `export --int8`."""
    if not (run_dir / "report.json").is_file():
        budget = ["--minutes", f"{minutes:g}"] if minutes else []
        run([PY, "-m", "training", "fit", "--data", str(data), "--out", str(run_dir), *budget], env)
    if not export.is_dir():
        run([PY, "-m", "training", "export", "--model", str(run_dir), "--out", str(export), "--int8", "--bentoml",
             "segmentation"], env)  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "loop")
    p.add_argument("--answers", type=int, default=200, help="answers per stream (the drift window is 200)")
    p.add_argument("--minutes", type=float, help="each fit's budget (default: fit's own)")
    a = p.parse_args(argv)
    work = a.work.resolve()
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml_home"), "BENTOML_DO_NOT_TRACK": "true"}
    os.environ.update(env)
    held = scenes(work / "held-out", 60, 1)
    field = scenes(work / "field", 60, 2, hue_turned)
    unseen = scenes(work / "field-unseen", 60, 3, hue_turned)
    if not (work / "train" / "codes.txt").is_file():
        from training.synth import SynthConfig, synth

        synth(SynthConfig(out=work / "train", n=240, size=128, seed=0))
    fit_export(work / "train", work / "run-v1", work / "export-v1", env, a.minutes)
    ref = json.loads((work / "export-v1" / "export.json").read_text())["confidence_reference"]
    capture = work / "capture"
    shutil.rmtree(capture, ignore_errors=True)
    report = {"reference": ref}
    settings = dict(SEG_MODEL="segmentation:latest", SEG_RELOAD_S=5, SEG_CAPTURE_DIR=capture,
                    SEG_CAPTURE_BELOW=ref["p5"], BENTOML_HOME=env["BENTOML_HOME"])  # fmt: skip
    with served("segmentation:latest", timeout=300, **settings) as proc:
        report["held_out"] = {**send(proc.url, held, a.answers), "drift": drift(proc.url)}
        peak = 0.0
        for _ in range(10):  # 2,000 more answers on scenes as generated: the largest drift seen
            send(proc.url, held, 200)
            peak = max(peak, drift(proc.url))
        report["false_alarms"] = {"answers": 2000, "max_drift": peak, "alert": ref["alert"]}
        report["field_before"] = {**send(proc.url, field, a.answers), "drift": drift(proc.url)}
        report["unseen_before"] = send(proc.url, unseen, len(unseen))
        time.sleep(3)  # the capture thread writes off the request path
        kept = sorted(p for p in (capture / "images").glob("*.png"))
        # scenes are matched by their pixels; the field set kept apart is scored by the server too, so its captures
        # are set aside, not trained on
        truth_of = {pixels(d): t for d, t in field + held}
        unseen_keys, field_keys = {pixels(d) for d, _ in unseen}, {pixels(d) for d, _ in field}
        merged = work / "train-plus-captured"
        shutil.rmtree(merged, ignore_errors=True)
        shutil.copytree(work / "train", merged)
        keys = {img: pixels(img.read_bytes()) for img in kept}
        train_on = [img for img in kept if keys[img] in truth_of and keys[img] not in unseen_keys]
        for img in train_on:  # the true mask stands in for the person's correction of the pre-annotation
            shutil.copy(img, merged / "images" / f"captured_{img.name}")
            Image.fromarray(truth_of[keys[img]]).save(merged / "masks" / f"captured_{img.name}")
        report["captured"] = {"images": len(kept), "of_field": sum(k in field_keys for k in keys.values()),
                              "trained_on": len(train_on)}  # fmt: skip
        shutil.rmtree(work / "run-v2", ignore_errors=True)
        shutil.rmtree(work / "export-v2", ignore_errors=True)
        t = time.perf_counter()
        fit_export(merged, work / "run-v2", work / "export-v2", env, a.minutes)
        registered, v1 = time.perf_counter(), report["field_before"]["versions"][0]
        while send(proc.url, field[:4], 4)["versions"] == [v1]:
            time.sleep(0.5)
        first = time.perf_counter() - registered
        report["reload"] = {"fit_and_export_s": registered - t, "to_first_answer_of_v2_s": first}
        send(proc.url, field, a.answers)  # fill the window with the new model's answers
        report["field_after"] = {**send(proc.url, field, a.answers), "drift": drift(proc.url)}
        report["unseen_after"] = send(proc.url, unseen, len(unseen))
    write(report, a)
    return 0


def write(r: dict, a) -> None:
    def row(label, before, after, key, fmt=".3f"):
        return f"| {label} | {format(before[key], fmt)} | {format(after[key], fmt)} |"

    L = [f"# The loop, end to end ({time.strftime('%Y-%m-%d %H:%M')}; `python -m loadtest.field_loop`)", "",
         "Demo scenes; the field: other scenes with every hue turned by 180 degrees (a shade the training set lacks), "
         f"labels unchanged; {a.answers} answers per stream, drift window 200, alert above {r['reference']['alert']}.",
         "", "| figure | v1 (before) | v2 (after, served without a restart) |", "|---|---|---|",
         row("drift (PSI) on the field scenes", r["field_before"], r["field_after"], "drift"),
         row("mean confidence on the field scenes", r["field_before"], r["field_after"], "confidence"),
         row("mean foreground IoU on the field scenes sent", r["field_before"], r["field_after"], "iou_fg"),
         row("mean foreground IoU on field scenes never trained on", r["unseen_before"], r["unseen_after"], "iou_fg"),
         row("mean confidence on field scenes never trained on", r["unseen_before"], r["unseen_after"], "confidence"),
         "",
         f"Held-out scenes as generated with v1: drift {r['held_out']['drift']:.3f}, mean confidence "
         f"{r['held_out']['confidence']:.3f}, IoU {r['held_out']['iou_fg']:.3f}; over 2,000 more answers the drift "
         f"stayed at most {r['false_alarms']['max_drift']:.3f} (alert {r['false_alarms']['alert']}). Captured: "
         f"{r['captured']['images']} uploads ({r['captured']['of_field']} of them field scenes) with LabelMe "
         f"pre-annotations, {r['captured']['trained_on']} trained on (the set never trained on set aside); "
         f"fit v2 + export took {r['reload']['fit_and_export_s'] / 60:.1f} min; from the new "
         f"version in the store to its first answer {r['reload']['to_first_answer_of_v2_s']:.1f} s "
         "(SEG_RELOAD_S=5)."]  # fmt: skip
    write_report("field-loop", "\n".join(L) + "\n", r)


if __name__ == "__main__":
    raise SystemExit(main())
