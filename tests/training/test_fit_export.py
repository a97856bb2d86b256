"""A one-epoch fit on tiny images, and its ONNX export checked against fastai."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from training.demo import QUICK_STEPS
from training.export import load_images, read_metadata, tie_pixels
from training.export.gates import _fastai_probs


def test_fit_writes_artefacts_and_metrics_in_range(tiny_run):
    for name in ("model.pth", "config.json", "report.json", "results.png", "curves.png"):
        assert (tiny_run / name).is_file(), name
    report = json.loads((tiny_run / "report.json").read_text())
    m = report["metrics"]
    assert 0.0 <= m["dice_fg"] <= 1.0 and 0.0 <= m["pixel_acc"] <= 1.0
    assert set(m["dice"]) == {"background", "butterfly", "leaf"}
    assert [h["phase"] for h in report["history"]] == ["frozen", "unfrozen"]
    assert report["timings"]["train_s"] > 0 and report["versions"]["fastai"]
    assert report["config"]["encoder"] == "efficientnet_lite0"


def test_export_graph_io_types_and_shapes(tiny_export):
    model = onnx.load(str(tiny_export / "model.onnx"))
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "image" and inp.type == "tensor(uint8)" and inp.shape[3] == 3
    assert not any(isinstance(d, int) for d in inp.shape[:3])  # batch, height and width are dynamic
    outs = {o.name: o for o in sess.get_outputs()}
    assert outs["mask"].type == "tensor(uint8)" and len(outs["mask"].shape) == 3
    assert outs["probs"].type == "tensor(float)" and outs["probs"].shape[1] == 3
    for h, w in [(64, 64), (97, 131), (32, 200), (250, 333)]:  # odd sizes and non-multiples of 32 run too
        m, p = sess.run(["mask", "probs"], {"image": np.zeros((2, h, w, 3), np.uint8)})
        assert m.shape == (2, h, w) and p.shape == (2, 3, h, w)


def test_metadata_round_trip(tiny_export, tiny_run):
    meta = read_metadata(tiny_export / "model.onnx")
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert json.loads(meta["classes"]) == cfg["codes"] == ["background", "butterfly", "leaf"]
    assert len(json.loads(meta["colours"])) == 3
    assert json.loads(meta["input_size"]) == [64, 64]
    assert json.loads(meta["mean"]) == [0.5, 0.5, 0.5] and json.loads(meta["std"]) == [0.5, 0.5, 0.5]
    assert meta["exporter"] in ("dynamo", "legacy") and meta["variant"] == "fp32" and meta["dynamic_hw"] == "true"
    assert meta["tta"] == "none"
    assert meta["resize"].startswith("keep-aspect-short-side")
    assert meta["encoder"] == "efficientnet_lite0" and meta["decoder_norm"] == cfg["config"]["decoder_norm"] == "batch"
    parity = json.loads(meta["parity"])
    assert parity["identical"] and parity["other_shapes"]["identical"]
    assert [r["shape"] for r in parity["other_shapes"]["shapes"]] == [[64, 96], [65, 83], [128, 160]]
    assert {"fastai", "torch", "onnx", "onnxruntime"} <= set(json.loads(meta["versions"]))
    assert 0 <= json.loads(meta["metrics"])["dice_fg"] <= 1
    # the serving side reads the same metadata through ONNX Runtime
    from contract import ModelMeta

    sm = ModelMeta.from_props(
        ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
        .get_modelmeta()
        .custom_metadata_map
    )
    assert sm.classes == ("background", "butterfly", "leaf") and sm.input_size == (64, 64) and sm.dynamic_hw


@pytest.mark.parametrize("batch", [1, 2])
def test_onnx_masks_identical_to_fastai(tiny_export, tiny_run, tiny_dataset, batch):
    """fp32 masks equal fastai's own get_preds on 100 % of pixels, at batch sizes other than the traced one (2 is
    traced; 1 is not)."""
    from training.run import load_run

    learn, meta, _ = load_run(tiny_run)
    paths = meta["valid_images"] + meta["train_images"][:3]
    ref = _fastai_probs(learn, paths)
    images = load_images(paths, (64, 64))
    sess = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    masks, probs = [], []
    for i in range(0, len(images), batch):
        m, p = sess.run(["mask", "probs"], {"image": images[i : i + batch]})
        masks.append(m), probs.append(p)
    masks, probs = np.concatenate(masks), np.concatenate(probs)
    differ = masks != ref.argmax(1).astype(np.uint8)
    # identical everywhere except numerical ties (fastai's top-2 probabilities within TIE_TOL), and those are rare
    assert not (differ & ~tie_pixels(ref)).any()
    assert differ.sum() <= 3
    assert np.abs(probs - ref).max() < 1e-4


def test_int8_is_judged_by_the_accuracy_rule_and_the_check_is_bundled(tiny_export, tiny_run, tmp_path, monkeypatch):
    """export.json records the rule (foreground Dice of int8 vs fp32 on the held-out images against their truth),
    pixel agreement as information and the speed-up measured as the service runs it; model.int8.onnx is there
    exactly when the rule kept it; check/ holds held-out images at the training size with their truths."""
    import contract.metrics as acc
    import training.export as ex
    from training.export.gates import load_truths

    info = json.loads((tiny_export / "export.json").read_text())["int8"]
    assert info["metric"] == "dice_fg" and info["min_ratio"] == 0.99 and 0.0 <= info["agreement"] <= 1.0
    assert (
        info["kept"] == (info["int8"] >= 0.99 * info["fp32"])
        and abs(info["ratio"] - info["int8"] / info["fp32"]) < 1e-9
    )
    assert (tiny_export / "model.int8.onnx").is_file() == info["kept"]
    assert info["speed_measured"] == "ONNX Runtime CPU, 1 thread, batch 8, 64x64" and info["speedup"] > 0
    assert info["recipe"]["format"] == "QDQ" and info["recipe"]["float_nodes"]["batchnorm"] == 4
    images, truths, check = acc.read_check(tiny_export)
    assert (check["exported"] is not None) == info["kept"]  # the start-up check's reference: int8 there, these images
    if info["kept"]:
        assert 0 <= check["exported"]["int8"] <= 1 and check["exported"]["fp32"] >= 0
    meta = json.loads((tiny_run / "config.json").read_text())
    assert (
        check["images"] == len(meta["valid_images"]) == 3
        and images.shape == (3, 64, 64, 3)
        and check["metric"] == "dice_fg"
    )
    assert np.array_equal(images, load_images(meta["valid_images"], (64, 64)))
    # either side of the rule, through the export's own function: the bound moved under and over this model's ratio
    imgs = load_images(meta["valid_images"], (64, 64))
    ratio = None
    for step, kept in ((0, True), (1, False)):
        bound = 0.0 if ratio is None else ratio + 1e-6  # the same calibration gives the same int8: just over its ratio
        monkeypatch.setattr(acc, "MIN_RATIO", bound)
        res = ex.make_int8(
            tiny_export / "model.onnx", tmp_path / f"q{step}.onnx", imgs, imgs, truths, meta["codes"], None, "dice_fg"
        )
        assert res["kept"] is kept and res["min_ratio"] == bound
        ratio = res["ratio"]
    res = ex.make_int8(
        tiny_export / "model.onnx", tmp_path / "q.onnx", imgs, imgs
    )  # no ground truth: the rule cannot keep it
    assert res["kept"] is False and "no ground truth" in res["why"]
    assert load_truths([np.eye(4, dtype=np.uint8)], (8, 8)).shape == (1, 8, 8)


def test_int8_recipes_are_tried_in_order_until_one_keeps_the_rule(tiny_export, tiny_run, tmp_path, monkeypatch):
    """The portable 7-bit recipe first, full 8-bit weights next; the first kept is written with what was tried; when
    none keeps the rule there is no model.int8.onnx."""
    import contract.metrics as acc
    from training.export import variants

    meta = json.loads((tiny_run / "config.json").read_text())
    imgs = load_images(meta["valid_images"], (64, 64))
    _, truths, _ = acc.read_check(tiny_export)
    fp32 = tiny_export / "model.onnx"

    def int8(folder):
        folder.mkdir()
        return variants._int8(fp32, folder, {"classes": "x"}, imgs, imgs, truths, meta["codes"], None, "dice_fg")

    monkeypatch.setattr(acc, "MIN_RATIO", 2.0)  # no recipe can keep it
    res = int8(tmp_path / "none")
    assert [t["recipe"] for t in res["tried"]] == [r.name for r in variants.RECIPES] and len(variants.RECIPES) == 2
    assert res["kept"] is False and not (tmp_path / "none" / "model.int8.onnx").exists()
    monkeypatch.setattr(acc, "MIN_RATIO", 0.0)
    real = variants.make_int8

    def first_fails(*a, **k):  # the portable recipe judged as failing: the full-range one is tried and kept
        res = real(*a, **k)
        return {**res, "kept": False} if a[-1] is variants.RECIPE else res

    monkeypatch.setattr(variants, "make_int8", first_fails)
    res = int8(tmp_path / "second")
    assert res["kept"] and [t["recipe"] for t in res["tried"]] == ["qdq-pc-rr-bn-early", "qdq-pc-bn-early"]
    assert res["recipe"]["reduce_range"] is False and (tmp_path / "second" / "model.int8.onnx").is_file()


def test_export_errors_are_one_line(tmp_path, tiny_export, tiny_run):
    def cli(*a):
        return subprocess.run(
            [sys.executable, "-m", "training", "export", *map(str, a)], capture_output=True, text=True, timeout=300
        )

    r = cli("--model", tmp_path / "nope", "--out", tmp_path / "x")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "not a training run" in r.stderr
    assert not (tmp_path / "x").exists()
    r = cli("--model", tiny_run, "--out", tiny_export)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "already exists" in r.stderr
    r = cli("--model", tiny_run, "--out", tmp_path / "y", "--tta", "flip", "--tta-scales", "1", "3")
    assert (
        r.returncode != 0 and r.stderr.count("\n") == 1 and "--tta-scales 3: give scales between 0.5 and 2" in r.stderr
    )
    assert not (tmp_path / "y").exists()


def test_tta_options_name_the_graphs_passes():
    """`--tta flip --tta-scales 1 1.5 1.5`: flips at scales 1 and 1.5 (a repeat dropped), 6.5x the model's work."""
    from training.__main__ import parse
    from training.export import Tta
    from training.options import tta_of

    a = parse(["export", "--model", "r", "--out", "o", "--tta", "flip", "--tta-scales", "1", "1.5", "1.5"])
    assert tta_of(a) == Tta(flip=True, scales=(1.0, 1.5)) and tta_of(a).work == 6.5
    plain = tta_of(parse(["export", "--model", "r", "--out", "o"]))
    assert plain == Tta() and not plain and str(plain) == "none" and str(Tta(scales=(1.0, 1.25))) == "scales 1 1.25"


def test_fp16_variant_checks_and_runs(tiny_export):
    """fp16 for GPUs: passes the onnx checker, keeps uint8 in / uint8 + float32 out, and ORT CPU runs it
    close to fp32 (its GPU speed cannot be measured here)."""
    path = tiny_export / "model.fp16.onnx"
    onnx.checker.check_model(onnx.load(str(path)))
    assert read_metadata(path)["variant"] == "fp16"
    s16 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    s32 = ort.InferenceSession(str(tiny_export / "model.onnx"), providers=["CPUExecutionProvider"])
    assert s16.get_inputs()[0].type == "tensor(uint8)"
    assert {o.name: o.type for o in s16.get_outputs()} == {"mask": "tensor(uint8)", "probs": "tensor(float)"}
    x = np.random.default_rng(4).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    assert (s16.run(["mask"], {"image": x})[0] == s32.run(["mask"], {"image": x})[0]).mean() > 0.99
    info = json.loads((tiny_export / "export.json").read_text())["fp16"]
    assert info["checked"] and "gpu_speed" not in info and info["cpu_agreement"] > 0.99


def test_lr_find_writes_its_plot(tiny_dataset, tmp_path):
    from training.config import TrainConfig
    from training.fit import fit

    out = tmp_path / "lrf"
    report = fit(
        TrainConfig(
            data=tiny_dataset,
            out=out,
            size=32,
            bs=4,
            frozen_epochs=0,
            unfrozen_epochs=1,
            lr_find=True,
            lr_find_iters=12,
            n_show=1,
        )
    )
    assert (out / "lr_find.png").stat().st_size > 1000
    assert [h["phase"] for h in report["history"]] == ["unfrozen"]


def test_parity_gate_separates_ties_from_errors():
    probs = np.zeros((1, 3, 2, 2), np.float32)
    probs[0, :, 0, 0] = (0.5, 0.49999, 0.00001)  # a numerical tie
    probs[0, :, 0, 1] = (0.9, 0.05, 0.05)
    probs[0, :, 1, :] = [[0.2, 0.2], [0.7, 0.7], [0.1, 0.1]]
    assert tie_pixels(probs).tolist() == [[[True, False], [False, False]]]


def test_demo_command_builds_a_servable_model(tmp_path):
    """`python -m training demo` (what `make serve` runs when no model exists), shrunk: synth -> fit -> export."""
    out = tmp_path / "exported" / "demo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "training",
            "demo",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
            "--n",
            "8",
            "--size",
            "32",
            "--bs",
            "4",
            "--frozen-epochs",
            "1",
            "--unfrozen-epochs",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-1500:]
    assert "== demo 3/3" in r.stdout and "== demo done" in r.stdout
    (report,) = [json.loads(f.read_text()) for f in (tmp_path / "work").glob("run-*/report.json")]
    assert report["augment"] == "field"  # the demo's own recipe (training.demo.DEMO_DEFAULTS)
    meta = read_metadata(out / "model.onnx")
    assert json.loads(meta["input_size"]) == [32, 32] and json.loads(meta["classes"]) == [
        "background",
        "butterfly",
        "leaf",
    ]
    assert (out / "model.fp16.onnx").is_file()
    import onnx

    # traced at 32 px the deepest maps are 1 px, which torch.export would fix: PixelShuffle stays DepthToSpace
    assert "DepthToSpace" in {n.op_type for n in onnx.load(out / "model.onnx").graph.node}
    from serving.runtime import SegmentationRuntime

    rt = SegmentationRuntime.load(out, "cpu")
    assert rt.run(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 32, 32)
    r = subprocess.run(
        [sys.executable, "-m", "training", "demo", "--out", str(out), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "already exists" in r.stderr


def test_quick_first_model_then_the_full_one_moved_into_its_place(tmp_path):
    """What `make serve` does without a model: `demo --quick` (few steps, fp32 only, legacy exporter), then
    `demo --replace` builds the full one beside it and moves it into the same folder (a polling service reloads)."""
    out, work = tmp_path / "exported" / "default", tmp_path / "work"
    small = ["--work", str(work), "--n", "8", "--size", "32", "--bs", "4"]

    def demo(*extra):
        cmd = [sys.executable, "-m", "training", "demo", "--out", str(out), *small, *extra]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-1500:]
        return r.stdout

    stdout = demo("--quick")
    quick = json.loads((out / "export.json").read_text())
    assert quick["exporter"] == "legacy" and quick["int8"] is None and not (out / "model.fp16.onnx").exists()
    run = json.loads((Path(quick["run"]) / "report.json").read_text())
    assert run["schedule"]["steps_budget"] == QUICK_STEPS and "== demo done" in stdout
    stdout = demo("--replace", "--frozen-epochs", "1", "--unfrozen-epochs", "0")
    assert f"{out} replaced by the full demo model" in stdout and (out / "model.fp16.onnx").is_file()
    assert not list(out.parent.glob(".default.*"))  # nothing left beside it
    assert json.loads((out / "export.json").read_text())["run"] != quick["run"]
