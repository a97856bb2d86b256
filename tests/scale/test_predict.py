"""`python -m serving predict`: a folder in, masks (+ overlays, CSV) out, resumable, inputs untouched."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
from contract_model import expected_mask
from PIL import Image


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "serving", "predict", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_predict_folder_writes_masks_overlays_csv_and_resumes(tmp_path, rule_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    arrays = {}
    for i in range(5):
        arrays[f"im{i}"] = a = rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)
        Image.fromarray(a).save(src / f"im{i}.png")
    (src / "broken.png").write_bytes(b"not an image")
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "out"
    r = _cli(src, out, "--model", rule_model_dir, "--overlays", "--csv", "--batch-size", "2", "--device", "cpu")
    assert r.returncode == 1  # one input failed
    assert "skipped broken.png" in r.stderr and "5 segmented" in r.stdout
    for name, a in arrays.items():
        m = np.asarray(Image.open(out / f"{name}.png"))
        assert m.shape == a.shape[:2] and m.max() < 3
        assert Image.open(out / f"{name}.overlay.png").size == (a.shape[1], a.shape[0])
    rows = list(csv.DictReader((out / "classes.csv").open()))
    assert len(rows) == 5 and abs(sum(float(rows[0][c]) for c in ("background", "red", "green")) - 1) < 1e-4
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # inputs untouched
    (src / "broken.png").unlink()
    r = _cli(src, out, "--model", rule_model_dir, "--device", "cpu")
    assert r.returncode == 0 and "0 segmented, 5 already done" in r.stdout


def test_predict_tiled_is_exact_for_a_per_pixel_model(tmp_path, rule_model_dir):
    src = tmp_path / "in"
    src.mkdir()
    a = np.random.default_rng(2).integers(0, 256, (100, 130, 3), dtype=np.uint8)
    Image.fromarray(a).save(src / "big.png")
    r = _cli(src, tmp_path / "out", "--model", rule_model_dir, "--tile", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "big.png")), expected_mask(a[None])[0])


def test_predict_bad_arguments_are_one_line(tmp_path, rule_model_dir):
    r = _cli(tmp_path / "nope", tmp_path / "out", "--model", rule_model_dir)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "input folder not found" in r.stderr
    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    r = _cli(tmp_path / "in", tmp_path / "in", "--model", rule_model_dir)
    assert r.returncode == 2 and "output folder is the input folder" in r.stderr
    r = _cli(tmp_path / "in", tmp_path / "out", "--model", tmp_path / "nomodel")
    assert r.returncode == 2 and "model folder not found" in r.stderr
