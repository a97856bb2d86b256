"""The parity gate is sound: a model's own export passes (real-photo sizes included), and exports broken the ways
exports break (a wrong normalisation, a missing layer, a wrong resize) are refused with nothing written."""

from __future__ import annotations

import copy
import functools
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from training.errors import ExportError
from training.export.gates import PROB_TOL, parity_gate
from training.export.graph import Tta, export_graph, inference_module
from training.model import IMAGENET_STATS, standardize


@functools.cache
def _learn(run: Path):
    from training.run import load_run

    return load_run(run)


def _gate(learn, meta, module, tta=False, exporter: str = "legacy") -> dict:
    """Export `module` (legacy exporter: fast) and run the gate as export does."""
    size = tuple(meta["size"])
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    export_graph(module, size, path, True, exporter)
    return parity_gate(learn, path, meta["valid_images"], size, meta["mean"], meta["std"], True, tta)


def test_a_sound_export_passes_with_float32_noise_only(tiny_run):
    learn, meta, _ = _learn(tiny_run)
    parity = _gate(learn, meta, inference_module(learn.model, meta["mean"], meta["std"], True, tuple(meta["size"])))
    assert parity["identical"] and parity["other_shapes"]["identical"]
    assert parity["max_prob_diff"] < PROB_TOL / 10 and parity["prob_tolerance"] == PROB_TOL


def _no_last_block(model):
    """The U-Net without its last residual block (fastai's ResBlock before the classifier): shapes unchanged."""
    from fastai.layers import ResBlock

    model = copy.deepcopy(model)
    i = max(i for i, m in enumerate(model.layers) if isinstance(m, ResBlock))
    model.layers[i] = torch.nn.Identity()
    return model


class _HalfScale(torch.nn.Module):
    """A graph that runs the network at half the image's size and upsamples its scores (a wrong resize)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, image):
        x = image.permute(0, 3, 1, 2).float()
        small = F.interpolate(x, scale_factor=0.5, mode="bilinear").round().clamp(0, 255)
        mask, probs = self.inner(small.to(torch.uint8).permute(0, 2, 3, 1))
        probs = F.interpolate(probs, size=image.shape[1:3], mode="bilinear")
        return probs.argmax(1).to(torch.uint8), probs


@pytest.mark.parametrize("broken", ["normalisation", "missing-layer", "resize"])
def test_broken_exports_are_refused(tiny_run, broken):
    learn, meta, _ = _learn(tiny_run)
    size, mean, std = tuple(meta["size"]), meta["mean"], meta["std"]
    if broken == "normalisation":  # ImageNet's statistics where the model was trained with 0.5 / 0.5
        module = inference_module(learn.model, *IMAGENET_STATS, True, size)
    elif broken == "missing-layer":
        module = inference_module(_no_last_block(learn.model), mean, std, True, size)
    else:
        module = _HalfScale(inference_module(learn.model, mean, std, True, size))
    with pytest.raises(ExportError, match=r"parity failed: .* probabilities differ by up to .*nothing written"):
        _gate(learn, meta, module)


def test_a_mixed_precision_learner_is_compared_in_fp32(tiny_run):
    """A Learner still carrying bf16 autocast (as after a bf16 fit in a notebook) is the fp32 model to the gate."""
    from training.export.gates import _fastai_probs
    from training.precision import Bf16Autocast

    learn, meta, _ = _learn(tiny_run)
    plain = _fastai_probs(learn, meta["valid_images"])
    learn.add_cb(Bf16Autocast())
    try:
        assert np.array_equal(_fastai_probs(learn, meta["valid_images"]), plain)
    finally:
        learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, Bf16Autocast)])


def test_standardize_in_onnx_is_as_precise_as_pytorch_on_a_real_photo():
    """The per-image standardisation over a real 400x600 photo: ONNX Runtime within 1e-6 of float64, as PyTorch is
    (one running fp32 sum over the whole image drifted ~1e-5 and flipped classes of a real CamVid model)."""
    from skimage import data

    x = torch.from_numpy(data.coffee()).permute(2, 0, 1)[None].float() / 127.5 - 1

    class Std(torch.nn.Module):
        def forward(self, x):
            return standardize(x)

    path = Path(tempfile.mkdtemp()) / "std.onnx"
    torch.onnx.export(Std(), (x,), str(path), dynamo=False, input_names=["x"], dynamic_axes={"x": {2: "h", 3: "w"}})
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    exact = standardize(x.double()).numpy()
    assert np.abs(got - exact).max() < 1e-6 and np.abs(standardize(x).numpy() - exact).max() < 1e-6


def test_test_time_flips_are_gated_against_the_flipped_model(tiny_run):
    """`export --tta flip`: the graph averages each image with its mirror image; the gate's reference does the same
    with fastai's model, and a graph without the flips is not taken for it."""
    learn, meta, _ = _learn(tiny_run)
    size, mean, std = tuple(meta["size"]), meta["mean"], meta["std"]
    parity = _gate(learn, meta, inference_module(learn.model, mean, std, True, size, tta=True), tta=True)
    assert parity["identical"] and parity["max_prob_diff"] < PROB_TOL / 10
    with pytest.raises(ExportError, match="parity failed"):
        _gate(learn, meta, inference_module(learn.model, mean, std, True, size), tta=True)


def test_test_time_scales_are_gated_against_the_rescaled_model(tiny_run):
    """`export --tta flip --tta-scales 1 1.5` (the dynamo exporter, as `export` uses first): the graph resizes each
    image by 1.5 and its scores back, at every shape the gate checks; a graph with the flips only is refused."""
    learn, meta, _ = _learn(tiny_run)
    size, mean, std = tuple(meta["size"]), meta["mean"], meta["std"]
    tta = Tta(flip=True, scales=(1.0, 1.5))
    assert str(tta) == "flip, scales 1 1.5" and tta.work == 6.5
    parity = _gate(learn, meta, inference_module(learn.model, mean, std, True, size, tta=tta), tta, "dynamo")
    assert parity["identical"] and parity["other_shapes"]["identical"] and parity["max_prob_diff"] < PROB_TOL / 10
    with pytest.raises(ExportError, match="parity failed"):
        _gate(learn, meta, inference_module(learn.model, mean, std, True, size, tta=True), tta)
