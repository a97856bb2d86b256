"""Models that hold in the field: the camera-shift augmentation reaches the training batches (and only them), the
held-out shifts are what they say, the shifted evaluation scores a known perturbation, and bad options are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from contract.shifts import SHIFTS
from training.augment import KINDS, FieldShifts, draw_kinds, field_shifts


def test_field_augmentation_reaches_the_training_batches_only(tiny_dataset):
    from fastai.torch_core import TensorImage, TensorMask

    from training.data import load_dataset, make_dataloaders

    ds = load_dataset(tiny_dataset)
    kw = dict(size=(64, 64), bs=2, mean=[0.5] * 3, std=[0.5] * 3, valid_pct=0.25, seed=0)
    dls = make_dataloaders(ds, augment="field", field=FieldShifts(1.0), **kw)
    (tfm,) = [t for t in dls.after_batch.fs if isinstance(t, FieldShifts)]
    assert tfm.shift_p == 1.0 and tfm.split_idx == 0 and tfm.order < 99  # before Normalize
    x = TensorImage(torch.rand(4, 3, 64, 64))
    torch.manual_seed(0)
    assert not torch.equal(tfm(x, split_idx=0), x)  # every image shifted in training
    assert torch.equal(tfm(x, split_idx=1), x)  # validation untouched
    m = TensorMask(torch.randint(0, 3, (4, 64, 64)))
    assert torch.equal(tfm(m, split_idx=0), m)  # masks never move
    plain = make_dataloaders(ds, augment="flip", **kw)
    assert torch.equal(dls.valid.one_batch()[0], plain.valid.one_batch()[0])  # held-out batches: the same pixels


def test_a_share_of_images_is_shifted_by_a_few_kinds_each():
    torch.manual_seed(0)
    on = torch.stack(list(draw_kinds(20_000, 0.5).values()), 1)
    shifted = on.any(1)
    assert 0.48 < shifted.float().mean() < 0.52
    assert 2.2 < on[shifted].sum(1).float().mean() < 2.8 and on[shifted].sum(1).min() >= 1
    assert all(0.12 < on[shifted, i].float().mean() < 0.45 for i in range(len(KINDS)))  # every kind drawn
    x = torch.rand(6, 3, 48, 64)
    assert torch.equal(field_shifts(x, 0.0), x)  # none shifted: the same pixels
    y = field_shifts(x, 1.0, scale=64 / 480)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert all(not torch.equal(a, b) for a, b in zip(x, y))


def test_held_out_shifts_are_what_they_say():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    grey = np.full((60, 80, 3), 200, np.uint8)
    assert SHIFTS["dark"](grey)[0, 0, 0] == round(255 * ((200 / 255) ** 2.2 * 2**-1.5) ** (1 / 2.2))
    assert SHIFTS["haze"](np.zeros_like(img))[0, 0, 0] == 110  # 55 % of a grey airlight of 200
    assert SHIFTS["blur"](img).std() < img.std() and SHIFTS["lowres"](img).std() < img.std()
    warm = SHIFTS["warm"](grey)
    assert warm[0, 0, 0] > 200 and warm[0, 0, 1] == 200 and warm[0, 0, 2] < 200
    assert np.array_equal(SHIFTS["noise"](img), SHIFTS["noise"](img))  # seeded by the image: repeatable
    for name, fn in SHIFTS.items():
        out = fn(img)
        assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img), name


class _RedRule(torch.nn.Module):
    """A per-pixel model: class 1 where the red channel is above half, else class 0 (inputs normalised 0.5 / 0.5)."""

    def forward(self, x):
        red = x[:, :1] * 0.5 + 0.5  # back to [0, 1]
        return torch.cat([torch.zeros_like(red), (red - 0.5) * 100], 1)


def test_shifted_evaluation_scores_a_known_perturbation(tmp_path):
    """A rule model whose clean answer is exact: each shift's score is the rule's own on the shifted images."""
    from types import SimpleNamespace

    from contract.metrics import score
    from training.data import load_dataset
    from training.evaluate import evaluate, evaluate_shifted

    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    images = []
    for i in range(3):
        img = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
        Image.fromarray(img).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray((img[..., 0] > 127).astype(np.uint8)).save(tmp_path / "masks" / f"{i}.png")
        images.append(img)
    (tmp_path / "codes.txt").write_text("background\nred\n")
    ds = load_dataset(tmp_path)
    learn = SimpleNamespace(model=_RedRule())
    clean, _ = evaluate(learn, ds, [0, 1, 2], (32, 48), [0.5] * 3, [0.5] * 3)
    assert clean["dice_fg"] == 1.0
    summary, examples = evaluate_shifted(learn, ds, [0, 1, 2], (32, 48), [0.5] * 3, [0.5] * 3, clean)
    truths = [(img[..., 0] > 127).astype(np.uint8) for img in images]
    for name, fn in SHIFTS.items():
        want = score([(fn(img)[..., 0] / 255.0 > 0.5).astype(np.uint8) for img in images], truths, ds.codes)
        assert summary["shifts"][name]["dice_fg"] == pytest.approx(want["dice_fg"], abs=0.02), name
    assert summary["shifts"]["dark"]["dice_fg"] < 0.9 and summary["metric"] == "dice_fg"
    assert summary["ratio"] == pytest.approx(summary["shifted_mean"]) and len(examples) == len(SHIFTS)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--field-p", "0"], "--field-p 0.0: use a share in (0, 1]"),
        (["--field-p", "1.5"], "--field-p 1.5: use a share in (0, 1]"),
        (["--augment", "storm"], "invalid choice: 'storm'"),
    ],
)
def test_bad_field_options_are_one_line_errors(tmp_path, tiny_dataset, args, needle):
    r = subprocess.run(
        [sys.executable, "-m", "training", "fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), *args],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and needle in lines[-1] and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


def test_the_demo_has_its_own_recipe_and_fit_keeps_its_defaults():
    """`training demo` trains with DEMO_DEFAULTS (more steps, camera shifts on a tenth of the images) unless an option
    says otherwise; `training fit` keeps fit's defaults."""
    from training.__main__ import _parser
    from training.config import TrainConfig
    from training.demo import DEMO_DEFAULTS
    from training.options import fit_config
    from training.plan import DEFAULT_MINUTES

    def config(*argv):
        return fit_config(_parser().parse_args(list(argv)), Path("."), Path("."))

    demo = config("demo")
    assert {k: getattr(demo, k) for k in DEMO_DEFAULTS} == DEMO_DEFAULTS
    assert (demo.steps, demo.augment, demo.field_p) == (600, "field", 0.1)
    given = config("demo", "--augment", "flip", "--field-p", "0.3", "--steps", "100")
    assert (given.steps, given.augment, given.field_p) == (100, "flip", 0.3)
    fit, plain = config("fit", "--data", "d", "--out", "o"), TrainConfig(data=Path("d"), out=Path("o"))
    assert all(getattr(fit, k) == getattr(plain, k) != v for k, v in DEMO_DEFAULTS.items() if k != "minutes")
    assert fit.minutes == DEFAULT_MINUTES and demo.minutes is None  # fit plans by default, the demo keeps its recipe
