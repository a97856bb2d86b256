"""Training precision and memory format: bf16 autocast where it is native, channels-last, and the model
handed back to evaluation and export in fp32 and the contiguous format."""

from __future__ import annotations

import json

import pytest
import torch

from training.config import TrainConfig
from training.errors import TrainingError
from training.learner import learner_for
from training.precision import resolve_precision, speed_callbacks

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    "mode, flags, want",
    [
        ("auto", {"avx2", "fma"}, "fp32"),  # AVX2 only: bf16 would be emulated
        ("auto", {"avx2", "avx512f", "avx512_vnni"}, "fp32"),  # AVX-512 without BF16
        ("auto", {"avx512f", "avx512_bf16"}, "bf16"),
        ("auto", {"amx_tile", "amx_bf16"}, "bf16"),
        ("fp32", {"amx_bf16"}, "fp32"),  # asked for: kept
        ("bf16", {"avx2"}, "bf16"),
    ],
)
def test_auto_precision_follows_the_cpu(mode, flags, want):
    assert resolve_precision(mode, CPU, flags) == want


def test_unknown_precision_is_a_one_line_error(tmp_path):
    with pytest.raises(TrainingError, match=r"--precision 'fp16': use auto, fp32, bf16"):
        TrainConfig(data=tmp_path, out=tmp_path / "o", precision="fp16")


def test_bf16_channels_last_train_then_hand_back_fp32_contiguous(tiny_dataset, tmp_path):
    """During fit the convolutions run in bf16 on channels-last tensors; the loss is finite; afterwards the
    model's weights are fp32 and contiguous and its predictions are fp32 again (what evaluate and export use)."""
    config = TrainConfig(data=tiny_dataset, out=tmp_path, size=64, bs=4, valid_pct=0.25)
    learn, _ = learner_for(config)
    first_conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    hook = first_conv.register_forward_hook(
        lambda m, i, o: seen.append((o.dtype, o.is_contiguous(memory_format=torch.channels_last)))
    )
    speed = speed_callbacks("bf16", True)
    learn.add_cbs(speed)
    learn.fit(1, 1e-3)
    learn.remove_cbs(speed)
    during = set(seen)
    assert during == {(torch.bfloat16, True)}, during
    assert all(torch.isfinite(torch.tensor(v)).all() for v in learn.recorder.values[-1][:2])
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in learn.model.parameters())
    seen.clear()
    preds, _ = learn.get_preds(dl=learn.dls.valid)
    hook.remove()
    assert preds.dtype == torch.float32 and {d for d, _ in seen} == {torch.float32}


def test_fp32_adds_no_autocast():
    names = [type(cb).__name__ for cb in speed_callbacks("fp32", True)]
    assert names == ["ChannelsLast"] and speed_callbacks("fp32", False) == []


def test_fit_records_the_precision_it_used(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    assert report["schedule"]["precision"] == resolve_precision("auto", CPU)
    assert report["schedule"]["channels_last"] is True
