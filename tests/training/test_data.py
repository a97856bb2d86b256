"""Layouts, validation errors, mask conversion and synthetic data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.datasets import detect_layout, load_dataset
from training.errors import DataError
from training.masks import colour_to_index, convert_masks, read_palette
from training.synth import SynthConfig, synth


def _img(path: Path, size=(16, 12), value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def _mask(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "training", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_generic_layout_detected(tmp_path):
    _img(tmp_path / "images" / "a.png")
    _mask(tmp_path / "masks" / "a.png", np.eye(12, 16) * 2)
    (tmp_path / "codes.txt").write_text("bg\nx\ny\n")
    ds = load_dataset(tmp_path)
    assert ds.layout == "generic" and ds.codes == ("bg", "x", "y") and len(ds.pairs) == 1


def test_leeds_layout_detected_and_binary(tmp_path):
    _img(tmp_path / "images" / "001.png")
    _mask(tmp_path / "segmentations" / "001_seg0.png", np.eye(12, 16) * 255)
    ds = load_dataset(tmp_path)
    assert ds.layout == "leeds" and ds.codes == ("background", "butterfly") and ds.binary_255
    from training.data import read_mask

    m = read_mask(ds.pairs[0][1], ds.binary_255)
    assert set(np.unique(m)) == {0, 1}


def test_camvid_layout_detected(tmp_path):
    _img(tmp_path / "images" / "f1.png")
    _mask(tmp_path / "labels" / "f1_P.png", np.ones((12, 16)))
    (tmp_path / "codes.txt").write_text("Void\nRoad\n")
    ds = load_dataset(tmp_path)
    assert ds.layout == "camvid" and ds.pairs[0][1].name == "f1_P.png"


def test_unknown_layout_is_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="masks/"):
        detect_layout(tmp_path)


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing_mask", "no mask for this image"),
        ("size_mismatch", "masks must match"),
        ("value_too_big", "mask value 5"),
        ("empty", "folder is empty"),
    ],
)
def test_bad_data_is_a_one_line_cli_error_and_writes_nothing(tmp_path, case, needle):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    (data / "codes.txt").write_text("bg\nfg\n")
    if case != "empty":
        _img(data / "images" / "a.png")
        if case == "missing_mask":
            pass
        elif case == "size_mismatch":
            _mask(data / "masks" / "a.png", np.zeros((5, 5)))
        else:
            _mask(data / "masks" / "a.png", np.full((12, 16), 5))
    out = tmp_path / "run"
    r = _cli("fit", "--data", data, "--out", out, "--size", "32")
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_binary_masks_convert_to_0_1(tmp_path):
    _mask(tmp_path / "src" / "m.png", np.array([[0, 255], [255, 0]]))
    assert convert_masks(tmp_path / "src", tmp_path / "out") == 1
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "m.png")), [[0, 1], [1, 0]])


def test_colour_masks_round_trip_with_palette(tmp_path):
    pal = tmp_path / "palette.txt"
    pal.write_text("background 0 0 0\nroad 128 64 128\ncar 64 0 128\n")
    names, colours = read_palette(pal)
    idx = np.random.default_rng(0).integers(0, 3, (9, 7)).astype(np.uint8)
    rgb = colours[idx]  # ids -> colours: the inverse of colour_to_index
    assert np.array_equal(colour_to_index(rgb, colours), idx)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    (tmp_path / "src").mkdir()
    Image.fromarray(rgb).save(tmp_path / "src" / "c.png")
    r = _cli("masks", tmp_path / "src", "--out", tmp_path / "ds" / "masks", "--palette", pal)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ds" / "masks" / "c.png")), idx)
    assert (tmp_path / "ds" / "codes.txt").read_text().split() == ["background", "road", "car"]


def test_unknown_colour_names_file_colour_and_count(tmp_path):
    pal = tmp_path / "palette.txt"
    pal.write_text("background 0 0 0\nroad 128 64 128\n")
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[0, :3] = (1, 2, 3)
    (tmp_path / "src").mkdir()
    Image.fromarray(rgb).save(tmp_path / "src" / "bad.png")
    r = _cli("masks", tmp_path / "src", "--out", tmp_path / "out", "--palette", pal)
    assert r.returncode != 0
    line = r.stderr.strip()
    assert "\n" not in line and "bad.png" in line and "(1, 2, 3)" in line and "3 pixels" in line
    assert not (tmp_path / "out").exists()


def test_synth_is_deterministic_and_textured(tmp_path):
    a = synth(SynthConfig(out=tmp_path / "a", n=3, size=64, seed=5))
    b = synth(SynthConfig(out=tmp_path / "b", n=3, size=64, seed=5))
    c = synth(SynthConfig(out=tmp_path / "c", n=3, size=64, seed=6))
    for name in ("scene_00000.png", "scene_00002.png"):
        ia, ib = np.asarray(Image.open(a / "images" / name)), np.asarray(Image.open(b / "images" / name))
        assert np.array_equal(ia, ib)
        assert np.array_equal(np.asarray(Image.open(a / "masks" / name)), np.asarray(Image.open(b / "masks" / name)))
        assert len(np.unique(ia.reshape(-1, 3), axis=0)) > 200  # photo textures, not flat colours
    assert not np.array_equal(
        np.asarray(Image.open(a / "images" / "scene_00000.png")),
        np.asarray(Image.open(c / "images" / "scene_00000.png")),
    )
    ds = load_dataset(a)
    assert ds.codes == ("background", "butterfly", "leaf")
    masks = np.stack([np.asarray(Image.open(m)) for _, m in ds.pairs])
    assert masks.max() <= 2 and len(np.unique(masks)) >= 2
