"""Operating the service: how sure each answer is, drift against the model's reference, the uploads kept to label
next, and a new model version without a restart (issue 30)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
from contract_model import CLASSES, COLOURS, expected_mask, make_contract_model, png_bytes
from PIL import Image

from contract.metrics import UNCERTAIN_BELOW, confidence, psi, reference
from loadtest.server import ROOT, served

RNG = np.random.default_rng(5)


def rule_top1(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W): the rule model's top-1 probability (softmax of (0.5, R, G))."""
    x = images.astype(np.float32) / np.float32(255.0)
    logits = np.stack([np.full(x.shape[:-1], 0.5, np.float32), x[..., 0], x[..., 1]], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


def test_confidence_of_a_known_probability_map():
    top1 = np.array([[0.9, 0.5], [0.7, 0.3]], np.float32)
    assert confidence(top1, below=0.6) == {"mean": pytest.approx(0.6), "uncertain_fraction": 0.5}
    assert confidence(np.ones((4, 4)))["uncertain_fraction"] == 0.0


def test_single_images_batches_and_tiles_give_the_same_figures(rule_model_dir):
    """The rule model decides each pixel alone: an image's figures are the rule's whether it is answered alone, in a
    batch of other images, or by overlapping tiles at full resolution (blended probabilities)."""
    from serving import Segmenter

    seg = Segmenter.load(rule_model_dir, "cpu")
    a, b = (RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2))
    want = confidence(rule_top1(a[None])[0])
    alone = seg.confidence(a)
    batched = seg.analyse_many([Image.fromarray(b), Image.fromarray(a)])[1][1]
    assert alone == pytest.approx(want) and batched == pytest.approx(want)
    blocks = np.kron(RNG.integers(0, 256, (3, 3, 3), dtype=np.uint8), np.ones((40, 40, 1), np.uint8))  # 120x120
    tiled = seg.confidence(blocks, tile=True)
    assert tiled == pytest.approx(confidence(rule_top1(blocks[None])[0]), abs=2e-3)  # float16 band, exact otherwise
    no_probs = rule_model_dir.parent / "no-probs"
    make_contract_model(no_probs / "model.onnx", probs=False)
    assert Segmenter.load(no_probs, "cpu").confidence(a) is None


def test_answers_say_how_sure_and_which_version(client, rule_model_dir):
    photo = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # the model's size: no resize, exact figures
    want = confidence(rule_top1(photo[None])[0])
    for route in ("/segment", "/overlay", "/stats", "/confidence"):
        r = client.post(route, files={"image": ("p.png", png_bytes(photo))})
        assert r.status_code == 200, r.text
        assert float(r.headers["Seg-Confidence"]) == pytest.approx(want["mean"], abs=1e-4)
        assert float(r.headers["Seg-Uncertain-Fraction"]) == pytest.approx(want["uncertain_fraction"], abs=1e-4)
        assert r.headers["Seg-Model"].startswith(f"{rule_model_dir.name}@")
    stats = client.post("/stats", files={"image": ("p.png", png_bytes(photo))}).json()
    assert stats["confidence"] == pytest.approx(want) and stats["model"] == r.headers["Seg-Model"]
    cmap = np.asarray(Image.open(io.BytesIO(r.content)))  # the last answer: /confidence
    assert cmap.shape == (32, 32) and np.abs(cmap.astype(int) - np.round(rule_top1(photo[None])[0] * 255)).max() <= 1
    info = client.get("/model").json()
    assert info["version"] == r.headers["Seg-Model"]
    assert info["confidence"] == {"available": True, "uncertain_below": UNCERTAIN_BELOW}
    assert info["drift"]["reference"].startswith("none") and info["reload"]["poll_s"].startswith("off")


def test_drift_is_the_psi_of_recent_answers_against_the_reference():
    from serving.monitor import MIN_ANSWERS, Monitor

    rng = np.random.default_rng(0)
    ref = reference(list(rng.normal(0.9, 0.02, 60)))
    assert ref["bins"] == 5 and len(ref["edges"]) == 4 and ref["p5"] < ref["p50"] < 0.95
    assert psi(list(rng.normal(0.9, 0.02, 200)), ref) < 0.25 < psi(list(rng.normal(0.84, 0.02, 200)), ref)
    mon = Monitor(window=100)
    mon.use(ref)
    pixels = np.array([16.0, 0.0])
    for i, m in enumerate(rng.normal(0.8, 0.02, MIN_ANSWERS)):
        assert mon.drift is None or i >= MIN_ANSWERS - 1
        mon.answer({"mean": float(m), "uncertain_fraction": 0.1}, pixels, CLASSES, "v1")
    assert mon.drift > 1.0 and mon.describe()["answers_in_window"] == MIN_ANSWERS
    mon.use(ref)  # a new model version: a new window
    assert mon.drift is None and not mon.window


class Counter:
    def __init__(self):
        self.counts = {}

    def labels(self, outcome):
        return SimpleNamespace(inc=lambda: self.counts.__setitem__(outcome, self.counts.get(outcome, 0) + 1))


def _wait(pred, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_capture_keeps_unsure_answers_with_labelme_pre_annotations_within_its_caps(tmp_path):
    from serving.capture import Capture, Rule

    counter = Counter()
    cap = Capture(Rule(tmp_path / "cap", below=0.8, sample=0.0, max_files=2, max_bytes=10**9), counter)
    photo = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    mask = np.zeros((48, 64), np.uint8)
    mask[5:30, 10:40], mask[35:45, 45:60] = 1, 2
    unsure, sure = {"mean": 0.5, "uncertain_fraction": 0.6}, {"mean": 0.95, "uncertain_fraction": 0.0}
    cap.offer(png_bytes(photo), "PNG", mask, sure, CLASSES, COLOURS, "m@1")  # sure: not kept
    for _ in range(3):
        cap.offer(png_bytes(photo), "PNG", mask, unsure, CLASSES, COLOURS, "m@1")
    _wait(lambda: sum(counter.counts.values()) == 3)
    assert counter.counts == {"written": 2, "dropped_cap": 1}
    root = tmp_path / "cap"
    assert (root / "codes.txt").read_text().split() == CLASSES
    (doc,) = [p for p in (root / "images").glob("*.json")][:1]
    stem = doc.stem
    assert np.array_equal(np.asarray(Image.open(root / "masks" / f"{stem}.png")), mask)
    assert np.array_equal(np.asarray(Image.open(root / "images" / f"{stem}.png")), photo)
    # LabelMe's own loader opens the pre-annotation, polygons labelled with the model's classes
    code = (
        "import sys; from labelme import LabelFile; print(sorted({s['label'] for s in LabelFile(sys.argv[1]).shapes}))"
    )
    r = subprocess.run([sys.executable, "-c", code, str(doc)], capture_output=True, text=True, timeout=120,
                       env={"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert r.returncode == 0 and r.stdout.strip() == "['green', 'red']", r.stderr[-800:]
    # read back as a data set: `fit --data` as it is, and `masks --labelme` (the model's class order kept)
    from training.data import load_dataset

    ds = load_dataset(root)
    assert ds.codes == tuple(CLASSES) and len(ds.pairs) == 2
    out = tmp_path / "relabelled"
    cmd = [sys.executable, "-m", "training", "masks", "--labelme", str(root / "images"), "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    back = np.asarray(Image.open(out / "masks" / f"{stem}.png"))
    assert (out / "codes.txt").read_text().split() == CLASSES
    for c in (1, 2):  # the polygons give the regions back (their outline on pixel centres: a pixel's width)
        inter, union = ((back == c) & (mask == c)).sum(), ((back == c) | (mask == c)).sum()
        assert inter / union > 0.85


def test_capture_never_fails_or_slows_an_answer(tmp_path):
    from serving.capture import QUEUE, Capture, Rule

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    counter = Counter()
    cap = Capture(Rule(not_a_folder, below=1.0, sample=0.0, max_files=10, max_bytes=10**9), counter)
    mask = np.zeros((8, 8), np.uint8)
    t = time.perf_counter()
    for _ in range(QUEUE * 3):  # a burst: more than the queue holds
        cap.offer(b"\x89PNG", "PNG", mask, {"mean": 0.1, "uncertain_fraction": 1.0}, CLASSES, COLOURS, "m")
    assert time.perf_counter() - t < 0.5  # offers only queue: no answer waits for the disk
    _wait(lambda: sum(counter.counts.values()) == QUEUE * 3)
    assert counter.counts["failed"] >= 1 and counter.counts.get("dropped_busy", 0) >= 1
    assert set(counter.counts) <= {"failed", "dropped_busy"}
    sampled = Capture(Rule(tmp_path / "s", below=0.0, sample=1.0, max_files=10, max_bytes=10**9), Counter())
    assert sampled.wanted({"mean": 0.99, "uncertain_fraction": 0.0}) and sampled.wanted(None)


def _config(folder: Path, **kw):
    return SimpleNamespace(model_source=str(folder), device="cpu", variant="auto", intra_op_threads=1, ort_spin=False,
                           max_batch_size=2, reload_s=1, **kw)  # fmt: skip


def test_a_new_version_is_swapped_in_and_a_broken_one_keeps_the_old(tmp_path):
    import asyncio

    from serving import models

    folder = tmp_path / "m"
    make_contract_model(folder / "model.onnx")
    config = _config(folder)
    first = models.load(config, on_batch=None, share_cap=None)
    swapped, counter = [], Counter()
    watcher = models.Watcher(config, first, swapped.append, lambda: models.load(config, on_batch=None, share_cap=None),
                             counter)  # fmt: skip
    assert asyncio.run(watcher.check()) is False  # nothing changed
    (folder / "model.onnx").write_bytes(b"not onnx")  # a broken version
    assert asyncio.run(watcher.check()) is False and watcher.current is first and not swapped
    assert "not served" in watcher.last_error and counter.counts == {"failed": 1}
    assert asyncio.run(watcher.check()) is False and counter.counts == {"failed": 1}  # not retried until it changes
    make_contract_model(folder / "model.onnx", background=0.8)  # a good new version
    assert asyncio.run(watcher.check()) is True and swapped == [watcher.current] and watcher.last_error is None
    assert watcher.current.version != first.version and counter.counts == {"failed": 1, "ok": 1}
    x = RNG.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    assert not np.array_equal(watcher.current.runtime.run(x), first.runtime.run(x))  # the new one answers


def test_a_real_server_serves_a_new_version_without_a_restart(tmp_path):
    folder = tmp_path / "live"
    make_contract_model(folder / "model.onnx")
    photo = png_bytes(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    with served(folder, SEG_RELOAD_S=1, SEG_WORKERS=1) as proc:

        def answer():
            r = requests.post(proc.url + "/segment", files={"image": ("p.png", photo)}, timeout=30)
            assert r.status_code == 200
            return r.headers["Seg-Model"]

        v1 = answer()
        new = tmp_path / "new"
        make_contract_model(new / "model.onnx", background=0.8)
        shutil.rmtree(folder)
        new.rename(folder)  # the folder replaced by another export
        _wait(lambda: answer() != v1, 30)
        v2 = answer()
        (folder / "model.onnx").write_bytes(b"broken")
        _wait(lambda: requests.get(proc.url + "/model", timeout=10).json()["reload"]["last_error"] is not None, 30)
        assert answer() == v2  # the old one stays
        info = requests.get(proc.url + "/model", timeout=10).json()
        assert [v["version"] for v in info["reload"]["versions"]] == [v1, v2] and "not served" in info["reload"][
            "last_error"
        ]
        metrics = requests.get(proc.url + "/metrics", timeout=10).text
        assert "seg_confidence_bucket" in metrics and "seg_uncertain_fraction_count" in metrics
        assert f'seg_class_pixels_total{{class_name="red",model="{v1}"}}' in metrics
        assert 'seg_model_reloads_total{outcome="ok"} 1.0' in metrics
        assert 'seg_model_reloads_total{outcome="failed"} 1.0' in metrics


def test_a_model_without_probabilities_still_serves_and_says_so(tmp_path):
    folder = tmp_path / "old"
    make_contract_model(folder / "model.onnx", probs=False)
    photo = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with served(folder, SEG_WORKERS=1) as proc:
        r = requests.post(proc.url + "/segment", files={"image": ("p.png", png_bytes(photo))}, timeout=30)
        assert r.status_code == 200 and "Seg-Confidence" not in r.headers and r.headers["Seg-Model"]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected_mask(photo[None])[0])
        r = requests.post(proc.url + "/confidence", files={"image": ("p.png", png_bytes(photo))}, timeout=30)
        assert r.status_code == 409 and "no class probabilities" in r.json()["error"]
        info = requests.get(proc.url + "/model", timeout=10).json()
        assert info["confidence"]["available"] is False and "probs" in info["confidence"]["why"]
        stats = requests.post(proc.url + "/stats", files={"image": ("p.png", png_bytes(photo))}, timeout=30).json()
        assert stats["confidence"] is None and json.dumps(stats)
