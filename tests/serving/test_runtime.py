"""Provider and variant choice, contract checks at load time."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx import TensorProto

from contract_model import expected_mask, make_contract_model
from serving.runtime import ContractError, SegmentationRuntime, choose_providers


def test_runs_and_matches_rule(rule_model_dir):
    rt = SegmentationRuntime.load(rule_model_dir, "cpu")
    x = np.random.default_rng(1).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(rt.run(x), expected_mask(x))
    assert rt.run_scores(x)[1].shape == (5, 3, 32, 32)
    assert rt.provider == "CPUExecutionProvider" and rt.variant == "fp32"
    assert rt.meta.classes == ("background", "red", "green") and rt.meta.input_size == (32, 32)


def test_choose_providers():
    assert choose_providers("cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    cuda = choose_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda[0][0] == "CUDAExecutionProvider" and cuda[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ContractError, match="SEG_DEVICE=cuda"):
        choose_providers("cuda", ["CPUExecutionProvider"])


def test_auto_falls_back_to_cpu_with_a_warning(rule_model_dir, caplog):
    # ONNX Runtime lists CUDA here (onnxruntime-gpu) but cannot load it without a GPU: auto must say so and go on.
    with caplog.at_level(logging.WARNING, logger="serving.runtime"):
        rt = SegmentationRuntime.load(rule_model_dir, "auto", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert rt.provider == "CPUExecutionProvider"
    assert any("running on CPU" in r.message for r in caplog.records)


def test_cuda_asked_without_gpu_is_a_clear_error(rule_model_dir):
    with pytest.raises(ContractError, match="CUDA did not load|no CUDAExecutionProvider") as e:
        SegmentationRuntime.load(rule_model_dir, "cuda", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "\n" not in str(e.value)
    with pytest.raises(ContractError, match="no CUDAExecutionProvider"):
        SegmentationRuntime.load(rule_model_dir, "cuda", available=["CPUExecutionProvider"])


def test_cuda_path_uses_options_and_fp16(tmp_path, monkeypatch):
    """With a faked session factory that 'loads' CUDA: fp16 is picked, CUDA options are passed, and CUDA and
    cuDNN from NVIDIA's wheels are preloaded first (only when CUDA is asked for)."""
    make_contract_model(tmp_path / "model.onnx")
    make_contract_model(tmp_path / "model.fp16.onnx", metadata={"variant": "fp16"})
    seen = {}

    import onnxruntime as ort

    preloads = []
    monkeypatch.setattr(ort, "preload_dlls", lambda *a, **k: preloads.append(a), raising=False)
    SegmentationRuntime.load(tmp_path, "cpu", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert preloads == []

    class FakeSession(ort.InferenceSession):
        def __init__(self, path, so, providers):
            seen["path"], seen["providers"] = path, providers
            super().__init__(path, so, providers=["CPUExecutionProvider"])

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    rt = SegmentationRuntime.load(tmp_path, "cuda", available=["CUDAExecutionProvider", "CPUExecutionProvider"], _session_factory=FakeSession)
    assert seen["path"].endswith("model.fp16.onnx") and rt.variant == "fp16" and len(preloads) == 1
    assert seen["providers"][0][1]["device_id"] == 0 and seen["providers"][0][1]["arena_extend_strategy"]
    x = np.zeros((2, 32, 32, 3), np.uint8)
    assert rt._io_binding and rt.run(x).shape == (2, 32, 32)


def test_int8_variant_when_asked(tmp_path):
    make_contract_model(tmp_path / "model.onnx")
    with pytest.raises(ContractError, match="variant int8 asked for but not there"):
        SegmentationRuntime.load(tmp_path, "cpu", "int8")
    make_contract_model(tmp_path / "model.int8.onnx", metadata={"variant": "int8"})
    assert SegmentationRuntime.load(tmp_path, "cpu", "int8").variant == "int8"


def test_auto_serves_the_exported_int8_on_cpu_fp16_on_cuda_and_says_why(tmp_path):
    from serving.runtime import pick_variant

    make_contract_model(tmp_path / "model.onnx")
    assert pick_variant(tmp_path, "auto", on_cuda=False) == ("fp32", "auto: CPU, and the export kept no model.int8.onnx")
    make_contract_model(tmp_path / "model.int8.onnx", metadata={"variant": "int8"})
    make_contract_model(tmp_path / "model.fp16.onnx", metadata={"variant": "fp16"})
    variant, why = pick_variant(tmp_path, "auto", on_cuda=False)
    assert variant == "int8" and "agreement gate" in why
    assert pick_variant(tmp_path, "auto", on_cuda=True) == ("fp16", "auto: fp16 on CUDA")
    assert pick_variant(tmp_path, "fp32", on_cuda=False) == ("fp32", "SEG_VARIANT=fp32")
    rt = SegmentationRuntime.load(tmp_path, "auto")  # no GPU here: the CPU choice, int8
    assert rt.variant == "int8" and rt.path.name == "model.int8.onnx" and "int8 on CPU" in rt.variant_reason


@pytest.mark.parametrize("break_it,needle", [
    ("missing_dir", "model folder not found"),
    ("no_model", "no model.onnx"),
    ("corrupt", "cannot load it"),
    ("float_input", "input must be `image` uint8"),
    ("no_metadata", "metadata lacks classes"),
])
def test_contract_violations_are_one_line(tmp_path, break_it, needle):
    d = tmp_path / "m"
    if break_it == "no_model":
        d.mkdir()
    elif break_it == "corrupt":
        d.mkdir()
        (d / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    elif break_it == "float_input":
        make_contract_model(d / "model.onnx", input_type=TensorProto.FLOAT)
    elif break_it == "no_metadata":
        make_contract_model(d / "model.onnx", drop_keys=("classes",))
    with pytest.raises(ContractError, match=needle) as e:
        SegmentationRuntime.load(d, "cpu")
    assert "\n" not in str(e.value)
