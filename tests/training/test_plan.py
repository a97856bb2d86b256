"""The planner on fingerprints alone (no training): scale, crops, encoder and epochs from the data and the budget,
the options given kept, the unfrozen phase re-sized to the time left; the fingerprint read off real masks; and
the command line's given options."""

from __future__ import annotations

import numpy as np
import pytest

from training.errors import TrainingError
from training.plan import (
    ALL_KINDS,
    ENCODER_MIN_STEPS,
    FIELD_P,
    MARGIN,
    Fingerprint,
    StepTimes,
    choose,
    fingerprint,
    structure_width,
    training_scale,
)

CAMVID = ("Sky", "Building", "Pole", "Road", "Car", "Void")


def _fp(size=(360, 480), thin=4.0, n_train=367, n_valid=101, share=None, grey=False) -> Fingerprint:
    classes = CAMVID if not grey else ("background", "vessel")
    share = share or ({"Sky": 0.2, "Building": 0.3, "Pole": 0.01, "Road": 0.4, "Car": 0.09} if not grey
                      else {"background": 0.9, "vessel": 0.1})  # fmt: skip
    width = {c: (thin if c in ("Pole", "vessel") else 60.0) for c in share}
    return Fingerprint(n_train, n_valid, size, (size, size), grey, classes, 5 if not grey else None, share, width)


def _times(lite0=1.0, lite2=2.0, predict=0.2, data=0.05) -> StepTimes:
    return StepTimes(
        frozen={"efficientnet_lite0": lite0 / 2, "efficientnet_lite2": lite2 / 2},
        unfrozen={"efficientnet_lite0": lite0, "efficientnet_lite2": lite2},
        predict={"efficientnet_lite0": predict, "efficientnet_lite2": predict * 1.6},
        batch_data=data,
    )


def test_street_scenes_train_at_their_own_size_on_crops_within_the_budget():
    plan = choose(_fp(), 20, _times(), setup_s=40, bf16=True, fixed={})
    c, e = plan.choices, plan.estimate
    assert c["size"] == (360, 480) and c["crop"] == (192, 256) and c["bs"] == 4 and "zoom" not in c
    assert c["loss"] == "ce+dice" and c["class_weights"] == "sqrt" and c["precision"] == "bf16"
    assert c["augment"] == "field" and set(c["field_kinds"]) == set(ALL_KINDS) and c["field_p"] == FIELD_P
    assert c["frozen_epochs"] >= 1 and c["unfrozen_epochs"] > c["frozen_epochs"]
    assert e["total_s"] <= 20 * 60 * (1 - MARGIN) + 1e-6
    assert e["total_s"] + e["epoch_s"] + e["valid_s"] > 20 * 60 * (1 - MARGIN)  # no whole epoch left unused
    assert "Pole" in plan.reasons["size"] and any(line.startswith("  crop") for line in plan.lines())


def test_more_minutes_buy_more_epochs_then_the_larger_encoder():
    small, big = (choose(_fp(), m, _times(), setup_s=40, bf16=True, fixed={}) for m in (20, 60))
    assert small.choices["encoder"] == "efficientnet_lite0"
    steps_60 = (60 * 60 * (1 - MARGIN) - 40 - big.estimate["final_s"]) / 2.05
    assert big.choices["encoder"] == ("efficientnet_lite2" if steps_60 >= ENCODER_MIN_STEPS["efficientnet_lite2"]
                                      else "efficientnet_lite0")  # fmt: skip
    fast = choose(_fp(), 60, _times(lite0=0.3, lite2=0.6), setup_s=40, bf16=False, fixed={})
    assert fast.choices["encoder"] == "efficientnet_lite2" and fast.choices["precision"] == "fp32"
    lite0 = choose(_fp(), 60, _times(lite0=0.3, lite2=0.6), setup_s=40, bf16=False,
                   fixed={"encoder": "efficientnet_lite0"})  # fmt: skip
    assert lite0.estimate["epochs"] > fast.estimate["epochs"]  # the same minutes, a cheaper step: more epochs


def test_on_the_step_times_measured_on_real_camvid_an_hour_buys_lite2_twenty_minutes_lite0():
    """The probe's figures on the 2-core AVX-512 host (bf16, batch 4 at 192x256): 60 min chose lite2 there."""
    here = StepTimes(frozen={"efficientnet_lite0": 0.63, "efficientnet_lite2": 0.82},
                     unfrozen={"efficientnet_lite0": 0.81, "efficientnet_lite2": 0.96},
                     predict={"efficientnet_lite0": 0.30, "efficientnet_lite2": 0.39}, batch_data=0.047)  # fmt: skip
    hour, twenty = (choose(_fp(), m, here, setup_s=20, bf16=True, fixed={}) for m in (60, 20))
    assert hour.choices["encoder"] == "efficientnet_lite2" and twenty.choices["encoder"] == "efficientnet_lite0"
    assert hour.estimate["epochs"] >= 20 and hour.estimate["total_s"] <= 60 * 60 * (1 - MARGIN) + 1e-6
    assert "3000" in hour.reasons["encoder"]


def test_thin_structures_keep_the_full_resolution_large_images_are_scaled():
    grey = choose(_fp(size=(512, 512), thin=3.0, n_train=20, n_valid=4, grey=True), 20, _times(), setup_s=30,
                  bf16=True, fixed={})  # fmt: skip
    assert grey.choices["size"] == (512, 512) and grey.choices["crop"] == (224, 224)  # full-resolution crops
    assert training_scale(_fp(size=(3000, 4000), thin=40.0))[0] == (768, 1024)  # long side 1024: 10 px left
    (h, w), why = training_scale(_fp(size=(3000, 4000), thin=6.0))  # 1024 would leave 1.5 px: only down to 3 px
    assert (h, w) == (1500, 2000) and "Pole" in why
    small = choose(_fp(size=(128, 128)), 20, _times(), setup_s=30, bf16=True, fixed={})
    assert small.choices["crop"] is None and small.choices["bs"] == 8 and small.choices["loss"] == "ce"


def test_options_given_override_their_part_of_the_plan():
    fixed = {"size": (256, 320), "encoder": "efficientnet_lite2", "bs": 2, "loss": "ce", "class_weights": "off"}
    plan = choose(_fp(), 20, _times(), setup_s=40, bf16=True, fixed=fixed)
    for k, v in fixed.items():
        assert plan.choices[k] == v and plan.reasons[k] == "given"
    assert plan.choices["crop"] == (192, 256)  # planned from the given size
    given = choose(_fp(), 20, _times(), setup_s=40, bf16=True, fixed={"unfrozen_epochs": 3, "frozen_epochs": 1})
    assert "unfrozen_epochs" not in given.choices and given.estimate["epochs"] == 4  # estimated, not planned
    assert given.choices["encoder"] == "efficientnet_lite0"


def test_unfrozen_phase_resized_to_the_time_left():
    plan = choose(_fp(), 20, _times(), setup_s=40, bf16=True, fixed={})
    e, last = plan.estimate, plan.choices["valid_last"]
    per = e["steps_per_epoch"] * (e["unfrozen_step_s"] - e["frozen_step_s"])
    left = 20 * 60 * (1 - MARGIN) - 300 - e["final_s"]
    n = plan.unfrozen_epochs(elapsed=300, frozen_epoch_s=50, valid_s=10)
    assert n * (50 + per) + min(last, n) * 10 <= left < (n + 1) * (50 + per) + min(last, n + 1) * 10
    assert plan.unfrozen_epochs(elapsed=600, frozen_epoch_s=50) < plan.unfrozen_epochs(elapsed=300, frozen_epoch_s=50)
    assert plan.unfrozen_epochs(elapsed=300, frozen_epoch_s=50, valid_s=60) < n  # slower validations: fewer epochs
    assert plan.unfrozen_epochs(elapsed=20 * 60, frozen_epoch_s=50) == 1  # over budget already: one epoch


def test_the_plan_validates_the_last_fifth_and_trains_in_the_time_saved():
    """On the probe's figures of real CamVid (lite2 at 60 min: a validation of 101 images ~40 s against ~92 s of
    training per epoch) validating every epoch costs a quarter of the budget: the plan validates the last fifth of
    the unfrozen epochs (at least 2) and the frozen phase's last, and buys more epochs; --valid-last 0 (given)
    validates every epoch, as the fixed recipe does."""
    here = StepTimes(frozen={"efficientnet_lite0": 0.63, "efficientnet_lite2": 0.82},
                     unfrozen={"efficientnet_lite0": 0.81, "efficientnet_lite2": 0.96},
                     predict={"efficientnet_lite0": 0.30, "efficientnet_lite2": 0.39}, batch_data=0.047)  # fmt: skip
    plan = choose(_fp(), 60, here, setup_s=20, bf16=True, fixed={})
    every = choose(_fp(), 60, here, setup_s=20, bf16=True, fixed={"valid_last": 0})
    c, e = plan.choices, plan.estimate
    assert c["valid_last"] == max(2, -(-c["unfrozen_epochs"] // 5)) and e["validations"] == 1 + c["valid_last"]
    assert every.choices["valid_last"] == 0 and every.reasons["valid_last"] == "given"
    assert every.estimate["validations"] == every.estimate["epochs"]
    assert e["epochs"] >= every.estimate["epochs"] + 5  # the time of ~20 validations trains instead
    for p in (plan, every):
        assert p.estimate["total_s"] <= 60 * 60 * (1 - MARGIN) + 1e-6
    assert any("validations of" in line for line in plan.lines())
    short = choose(_fp(), 8, here, setup_s=20, bf16=True, fixed={})  # a handful of epochs: at least two validated
    assert short.choices["valid_last"] == min(2, short.choices["unfrozen_epochs"])
    with pytest.raises(
        TrainingError, match=r"--minutes 2: too short for this data here: .* give --minutes \d+ or more"
    ):
        choose(_fp(), 2, here, setup_s=20, bf16=True, fixed={})


def test_valid_last_skips_early_validations_in_a_real_fit(tmp_path, capsys):
    """fastai's loop with ValidateLast: only the frozen phase's last epoch and the last 2 unfrozen ones are
    validated; the others print '-' and hold None; the kept epoch is one validated; a negative count is refused."""
    from training.config import TrainConfig
    from training.data import fit_dataset
    from training.fit import _train
    from training.learner import learner_for
    from training.plan import fit_validations
    from training.synth import SynthConfig, synth

    d = synth(SynthConfig(out=tmp_path / "s", n=8, size=64, seed=3))
    config = TrainConfig(data=d, out=tmp_path / "run", size=(64, 64), bs=4, pretrained=False, allow_random=True,
                         valid_last=2, precision="fp32")  # fmt: skip
    ds = fit_dataset(d)
    learn, _ = learner_for(config, ds)
    learn.path, learn.model_dir = tmp_path, "."
    history, _, kept, unfrozen = _train(learn, config, ds, 2, 4, "fp32")
    validated = [h["epoch"] for h in history if h["dice_fg"] is not None]
    assert validated == [1, 4, 5] == sorted(validated) and len(validated) == fit_validations(2, 4, 2)
    assert all(h["valid_loss"] is None for h in history if h["epoch"] not in validated)
    assert kept in (4, 5) and unfrozen == 4
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["0"]]
    assert len(rows) == 2 and all(r[2] == "-" for r in rows)  # each phase's first: epoch, train loss, then "-"
    with pytest.raises(TrainingError, match="--valid-last -1: give a number of epochs >= 0"):
        TrainConfig(data=d, out=tmp_path / "r2", valid_last=-1)


def test_structure_widths_read_off_masks(tmp_path):
    mask = np.zeros((120, 160), np.uint8)
    mask[:, 40:43] = 1  # a 3 px pole
    mask[60:, 80:] = 2  # a 60x80 block
    pixels, skeleton = structure_width(mask, 1)
    assert 2.5 <= pixels / skeleton <= 3.5
    pixels, skeleton = structure_width(mask, 2)
    assert pixels / skeleton > 20


def test_fingerprint_of_a_greyscale_set_with_a_thin_class(tmp_path):
    """`synth --layout thin` (greyscale photos crossed by 2-4 px structures), read by the fingerprint."""
    from contract.datasets import load_dataset
    from training.synth import SynthConfig, synth

    ds = load_dataset(synth(SynthConfig(out=tmp_path / "thin", n=6, size=160, layout="thin", seed=3)))
    assert ds.codes == ("background", "thin")
    fp = fingerprint(ds, list(range(5)), [5])
    assert fp.grey and fp.size == (160, 160) and fp.n_train == 5 and fp.n_valid == 1
    assert fp.thinnest[0] == "thin" and 1.5 <= fp.thinnest[1] <= 4.5 and fp.share["thin"] < 0.1 and fp.imbalance > 10


@pytest.mark.parametrize(
    "argv,want",
    [
        (["fit", "--data", "d", "--out", "o"], set()),
        (["fit", "--data", "d", "--out", "o", "--bs", "2", "--zoom", "1", "2", "--no-aug"], {"bs", "zoom", "augment"}),
        (["fit", "--data", "d", "--out", "o", "--enc", "resnet18", "--no-plan"], {"encoder", "minutes"}),
    ],
)
def test_given_options(argv, want):
    from training.options import given_options

    assert given_options(argv) == want


def test_given_options_of_another_command_keep_only_fits():
    """demo's own options (--n, --work) sit beside fit's: no ambiguity with fit's --no-* flags, and only fit's
    options count as given."""
    from training.__main__ import _parser
    from training.options import given_options

    demo = _parser().parse_args(["demo", "--out", "o"]).commands["demo"]
    assert given_options(["--out", "o", "--n", "8", "--bs", "4", "--work", "w"], demo) == {"bs"}


def test_the_command_line_plans_by_default_and_keeps_what_was_given():
    from training.__main__ import parse
    from training.options import fit_config
    from training.plan import DEFAULT_MINUTES

    def config(*argv):
        a = parse(["fit", "--data", "d", "--out", "o", *argv])
        return fit_config(a, a.data, a.out)

    assert config().minutes == DEFAULT_MINUTES and config().fixed == ()
    assert config("--no-plan").minutes is None
    c = config("--minutes", "60", "--crop", "128", "128", "--lr", "0.01")
    assert c.minutes == 60 and c.fixed == ("crop", "lr")
