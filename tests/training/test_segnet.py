"""SegNet's CamVid folder read as it is, its split kept apart (fit trains on train/, validates on val/, never reads
test/), `fit --valid`, and `evaluate` scoring an export the field's way through the served data path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from contract.datasets import SEGNET_CLASSES, DataError, load_dataset
from training.data import fit_dataset, split_pairs


def _cli(module: str, *args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_segnet_folder_read_as_it_is(tiny_segnet):
    ds = load_dataset(tiny_segnet)
    assert ds.layout == "segnet" and ds.street and ds.codes == SEGNET_CLASSES and ds.void == 11
    assert len(ds.pairs) == 12 and ds.valid_from == 8 and ds.split == "train+val"
    assert {p.parent.name for p, _ in ds.pairs[:8]} == {"train"} and {p.parent.name for p, _ in ds.pairs[8:]} == {"val"}
    assert all(m.parent.name == p.parent.name + "annot" and m.name == p.name for p, m in ds.pairs)
    test = load_dataset(tiny_segnet / "test")  # one split's own folder
    assert test.layout == "segnet" and test.split == "test" and len(test.pairs) == 4 and test.valid_from is None
    assert load_dataset(tiny_segnet, split="test").pairs == test.pairs
    train, valid = split_pairs(ds, valid_pct=0.5, seed=0)  # the folder's own split, whatever the share
    assert train == list(range(8)) and valid == list(range(8, 12))


def test_fit_never_reads_the_test_split(tiny_segnet, tmp_path):
    root = shutil.copytree(tiny_segnet, tmp_path / "CamVid")
    for f in (root / "test").iterdir():
        f.write_bytes(b"not an image")  # reading any of them would fail
    shutil.rmtree(root / "testannot")
    ds = fit_dataset(root)
    assert not [p for pair in ds.pairs for p in pair if "test" in p.parent.name]


def test_segnet_list_files_and_bad_folders_are_one_line_errors(tiny_segnet, tmp_path):
    root = shutil.copytree(tiny_segnet, tmp_path / "CamVid")
    (root / "val.txt").write_text("/SegNet/CamVid/val/va000_3.png\n")
    with pytest.raises(DataError, match="expected `image mask` paths"):
        load_dataset(root)
    (root / "val.txt").write_text("/x/val/missing.png /x/valannot/missing.png\n")
    with pytest.raises(DataError, match="missing.png: listed but not found"):
        load_dataset(root)
    (root / "val.txt").unlink()  # no list file: the folder's images, paired by name
    assert len(load_dataset(root).pairs) == 12
    (root / "codes.txt").write_text("Sky\nVoid\n")
    with pytest.raises(DataError, match="mask value .* but only 2 classes"):
        load_dataset(root)


def test_fit_valid_folder(tiny_segnet, tiny_dataset, tmp_path):
    ds = fit_dataset(tiny_segnet, tiny_segnet / "test")  # SegNet train/, another folder as validation
    assert ds.valid_from == 8 and {p.parent.name for p, _ in ds.pairs[8:]} == {"test"}
    with pytest.raises(DataError, match="classes .* differ from the training data's"):
        fit_dataset(tiny_segnet, tiny_dataset)
    with pytest.raises(DataError, match="in both the training and the --valid data"):
        fit_dataset(tiny_dataset, tiny_dataset)


@pytest.fixture(scope="module")
def segnet_fit(tiny_segnet, tmp_path_factory):
    """`python -m training fit --data CamVid` as a user runs it, output to a pipe (a log file, not a terminal)."""
    out = tmp_path_factory.mktemp("segnet-run") / "run"
    r = _cli("training", "fit", "--data", tiny_segnet, "--out", out, "--no-plan", "--size", "64", "96", "--bs", "4",
             "--frozen-epochs", "1", "--unfrozen-epochs", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stdout


def test_fit_on_segnet_trains_on_train_and_validates_on_val(segnet_fit, tiny_segnet):
    run, _ = segnet_fit
    meta = json.loads((run / "config.json").read_text())
    assert sorted(Path(p).name for p in meta["train_images"]) == sorted(
        p.name for p in (tiny_segnet / "train").iterdir()
    )
    assert sorted(Path(p).name for p in meta["valid_images"]) == sorted(p.name for p in (tiny_segnet / "val").iterdir())
    tests = {p.name for p in (tiny_segnet / "test").iterdir()}
    assert not tests & {Path(p).name for p in meta["train_images"] + meta["valid_images"]}
    assert meta["layout"] == "segnet" and meta["codes"] == list(SEGNET_CLASSES)


def test_fit_log_has_one_line_per_epoch_when_not_a_terminal(segnet_fit):
    _, log = segnet_fit
    assert "\r" not in log
    lines = log.splitlines()
    heads = [i for i, line in enumerate(lines) if line.split()[:3] == ["epoch", "train_loss", "valid_loss"]]
    assert len(heads) == 2  # one per phase
    epochs = [line.split() for line in lines if line.split() and line.split()[0].isdigit()]
    assert [e[0] for e in epochs] == ["0", "0", "1"] and all(len(e) == len(lines[heads[0]].split()) for e in epochs)
    assert len(log) < 6000  # the whole fit's log, not frames of progress bars


@pytest.fixture(scope="module")
def segnet_export(segnet_fit, tmp_path_factory):
    from training.export import export_run

    out = tmp_path_factory.mktemp("segnet-export") / "street"
    export_run(segnet_fit[0], out, int8=True)
    return out


def _independent_mean_iou(masks_dir: Path, truth_dir: Path, n_classes: int, void: int) -> float:
    """Mean IoU over the classes but Void from mask PNGs on disk: one pixel count per class, summed over the set."""
    inter, union = np.zeros(n_classes), np.zeros(n_classes)
    for truth_path in sorted(truth_dir.iterdir()):
        truth = np.asarray(Image.open(truth_path))
        pred = np.asarray(Image.open(masks_dir / truth_path.name))
        keep = truth != void
        for c in range(n_classes):
            t, p = (truth == c) & keep, (pred == c) & keep
            inter[c] += (t & p).sum()
            union[c] += (t | p).sum()
    scored = [c for c in range(n_classes) if c != void and union[c] > 0]
    return float(np.mean(inter[scored] / union[scored]))


def test_evaluate_equals_an_independent_count_of_predict_masks(segnet_export, tiny_segnet, tmp_path):
    r = _cli("training", "evaluate", "--model", segnet_export, "--data", tiny_segnet / "test", "--shifts", "blur,jpeg",
             "--out", tmp_path / "eval")  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["images"] == 4 and report["split"] == "test" and set(report["shifts"]) == {"blur", "jpeg"}
    assert (tmp_path / "eval" / "confusion.png").is_file() and (tmp_path / "eval" / "overlays.png").is_file()
    table = r.stdout
    assert "Pole" in table and "Void" not in table and f"mean IoU {report['clean']['iou_fg']:.3f}" in table
    variant = report["variant"]
    p = _cli("serving", "predict", tiny_segnet / "test", tmp_path / "masks", "--model", segnet_export,
             "--variant", variant)  # fmt: skip
    assert p.returncode == 0, p.stderr
    independent = _independent_mean_iou(tmp_path / "masks", tiny_segnet / "testannot", 12, 11)
    assert report["clean"]["iou_fg"] == pytest.approx(independent, abs=1e-9)
    # the SegNet folder itself is scored on its test/ split
    r = _cli("serving", "evaluate", "--model", segnet_export, "--data", tiny_segnet, "--out", tmp_path / "eval2")
    assert r.returncode == 0 and json.loads((tmp_path / "eval2" / "report.json").read_text())["split"] == "test"


BAD = [("no-labels", "no images/ folder"), ("classes", "differ from the model's"), ("sizes", "masks must match"),
       ("exists", "exists and is not empty")]  # fmt: skip


@pytest.mark.parametrize("case,needle", BAD)
def test_evaluate_bad_input_is_one_line(segnet_export, tiny_segnet, tiny_dataset, tmp_path, case, needle):
    data, out = tiny_segnet / "test", tmp_path / "eval"
    if case == "no-labels":
        data = tiny_segnet / "train"
        shutil.copytree(data, tmp_path / "photos")
        data = tmp_path / "photos"
    elif case == "classes":
        data = tiny_dataset
    elif case == "sizes":
        data = shutil.copytree(tiny_segnet, tmp_path / "CamVid") / "test"
        first = sorted((data.parent / "testannot").iterdir())[0]
        Image.fromarray(np.zeros((10, 10), np.uint8)).save(first)
    else:
        out.mkdir()
        (out / "report.json").write_text("{}")
    r = _cli("training", "evaluate", "--model", segnet_export, "--data", data, "--out", out)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], r.stderr
