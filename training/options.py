"""The command line's options for `fit` (and `demo`, which takes the same) and `export`, grouped by what they set;
`fit_config` turns the parsed options into the TrainConfig `fit` runs with (its defaults are TrainConfig's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .config import AUGMENT, CLASS_WEIGHTS, LOSSES, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig, parse_hw
from .errors import TrainingError
from .losses import IMBALANCE_RATIO
from .model import DECODER_NORMS, INPUT_NORMS

TTA_SCALES = (0.5, 2.0)  # the test-time scales export takes: beyond them the work (scale squared) or the detail lost


def add_fit_args(p: argparse.ArgumentParser) -> None:
    """Every option of `fit`, defaults from TrainConfig (the budget's: training.plan.DEFAULT_MINUTES)."""
    d = TrainConfig(data=Path("."), out=Path("."))
    for group in (_plan_args, _encoder_args, _data_args, _loss_args, _schedule_args, _speed_args):
        group(p, d)


def _plan_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The time budget the recipe is planned for (training.plan)."""
    from .plan import DEFAULT_MINUTES

    p.add_argument(
        "--minutes",
        type=float,
        default=DEFAULT_MINUTES,
        metavar="N",
        help=f"plan the recipe from the data and this budget on this machine, the whole fit ending within it "
        f"(default {DEFAULT_MINUTES:g}); every other option given overrides its part of the plan",
    )
    p.add_argument(
        "--no-plan", dest="minutes", action="store_const", const=None, help="no plan: the fixed recipe, options as set"
    )


def given_options(argv: list[str], parser: argparse.ArgumentParser | None = None) -> set[str]:
    """The fit options (their destinations) given on the command line `argv` to `parser` (a command's own, default
    fit's options alone): argparse's own matching (abbreviations included) into a namespace that holds a marker for
    each (argparse sets a default only where none is held)."""
    fit = argparse.ArgumentParser(add_help=False)
    add_fit_args(fit)
    p = parser or fit
    unset = object()
    ns = argparse.Namespace(**{dest: unset for dest in vars(p.parse_known_args(argv)[0])})
    p.parse_known_args(argv, namespace=ns)
    given = {dest for dest, value in vars(ns).items() if value is not unset}
    return given & set(vars(fit.parse_known_args([])[0]))


def _encoder_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The network: the encoder and its weights, the decoder's normalisation, the input's."""
    p.add_argument(
        "--encoder",
        default=d.encoder,
        help="efficientnet_lite0 (default), efficientnet_lite1, efficientnet_lite2 "
        "(ImageNet weights offline, larger and slower), resnet18, resnet34",
    )
    p.add_argument(
        "--no-pretrained", dest="pretrained", action="store_false", help="random init instead of ImageNet weights"
    )
    p.add_argument(
        "--allow-random", action="store_true", help="fall back to random init when pretrained weights cannot be loaded"
    )
    p.add_argument("--weights", type=Path, help="encoder state_dict to start from instead of ImageNet weights")
    p.add_argument(
        "--decoder-norm",
        choices=DECODER_NORMS,
        default=d.decoder_norm,
        help="batch (default): BatchNorm after each "
        "convolution of the U-Net's decoder but the final classifier; batch-all: the classifier too (fastai's "
        "norm_type=NormType.Batch); none: fastai's U-Net decoder, without it",
    )
    p.add_argument(
        "--bn-momentum",
        type=float,
        default=d.bn_momentum,
        help="every BatchNorm layer's running-statistics momentum "
        "(default: each layer's own, 0.01 in EfficientNet-Lite0's encoder)",
    )
    p.add_argument(
        "--input-norm",
        choices=INPUT_NORMS,
        default=d.input_norm,
        help="encoder (default): each image standardised per channel inside the model before the encoder (exposure, "
        "contrast and white balance leave its input unchanged); image: for the head too; dataset: fixed mean/std only",
    )


def _data_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """What the network sees: the training scale, crops, the validation set."""
    p.add_argument(
        "--size",
        nargs="+",
        metavar="H [W]",
        help="training scale: H W, HxW or one number for a square "
        "(default 128x128; CamVid-layout data keep their aspect at 128 px high)",
    )
    p.add_argument(
        "--crop",
        nargs="+",
        metavar="H [W]",
        help="train on random crops of this size taken at the --size scale (validation and serving see whole images)",
    )
    p.add_argument(
        "--class-crops",
        type=float,
        default=d.class_crops,
        metavar="SHARE",
        help="with --crop: the share of training "
        "crops centred on a pixel of a class drawn evenly from those in the image (nnU-Net's foreground oversampling; "
        "default: every crop placed at random)",
    )
    p.add_argument(
        "--zoom",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="with --crop: each training crop from a region zoomed by a factor drawn in [LO, HI] (scale jitter; 1 = "
        "the training scale)",
    )
    p.add_argument(
        "--progressive", action="store_true", help="progressive resizing: the frozen phase at half size, then full size"
    )
    p.add_argument(
        "--valid",
        type=Path,
        metavar="DIR",
        help="validation images from this folder (any layout fit reads; a SegNet folder: its val/) instead of a "
        "random --valid-pct share; a SegNet --data folder uses its own val/ (its test/ is never read)",
    )
    p.add_argument(
        "--valid-pct", type=float, default=d.valid_pct, help="the share held out at random when there is no --valid"
    )
    p.add_argument("--seed", type=int, default=d.seed)


def _loss_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The loss, the class weights and the augmentations."""
    p.add_argument(
        "--class-weights",
        choices=CLASS_WEIGHTS,
        default=d.class_weights,
        help="median-frequency weighted loss for rare classes (auto: when the class frequencies differ more than "
        f"{IMBALANCE_RATIO:g}x; "
        "sqrt: their square roots)",
    )
    p.add_argument(
        "--loss",
        choices=LOSSES,
        default=d.loss,
        help="auto (default): ce+dice with --crop, ce on whole images; ce: (weighted) "
        "cross-entropy; ce+dice: plus a soft Dice term over the classes, Void left out; ce+lovasz: plus the "
        "Lovasz-softmax (IoU) loss",
    )
    p.add_argument(
        "--augment",
        choices=AUGMENT,
        default=d.augment,
        help="field (default): flips + camera shifts (--field-kinds of haze, blur, low resolution, exposure, colour "
        "cast, noise, JPEG); flip: random flips; affine: flips + rotation, zoom, warp and lighting (fastai's "
        "aug_transforms); none; auto: same as flip (kept for older commands)",
    )
    p.add_argument(
        "--field-kinds",
        type=lambda v: tuple(v.split(",")),
        default=d.field_kinds,
        metavar="K,K",
        help=f"with --augment field: the shifts drawn, comma-separated (default: {','.join(d.field_kinds)})",
    )
    p.add_argument(
        "--field-p",
        type=float,
        default=d.field_p,
        metavar="P",
        help=f"with --augment field: the share of training images shifted as a camera would (default {d.field_p:g}; "
        "planned: 0.15)",
    )
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="same as --augment none")


def _schedule_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """The schedule: batch, steps or epochs, learning rates, optimiser."""
    p.add_argument("--bs", type=int, default=None, help="batch size (default: 4 with --crop, 8 on whole images)")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps in all; epochs follow the data set's size, a fifth frozen "
        "(default: 3600 images' worth, 450 steps of 8 or 900 of 4)",
    )
    p.add_argument("--frozen-epochs", type=int, help="epochs with the encoder frozen (head only); overrides --steps")
    p.add_argument("--unfrozen-epochs", type=int, help="epochs after unfreezing, discriminative lrs; overrides --steps")
    p.add_argument(
        "--last-epoch",
        dest="keep_best",
        action="store_false",
        help="keep the last epoch instead of the best validation Dice",
    )
    p.add_argument(
        "--valid-last",
        type=int,
        default=d.valid_last,
        metavar="N",
        help="validate only in the last N epochs (the frozen phase: its last; default 0: every epoch; planned: a fifth "
        "of the unfrozen epochs, at least 2): the time of the others goes to training",
    )
    p.add_argument(
        "--schedule",
        dest="schedule_shape",
        choices=SCHEDULES,
        default=d.schedule_shape,
        help="each phase's schedule: "
        "one-cycle (fastai's fit_one_cycle), fine-tune (the shape of fastai's fine_tune: frozen warm-up over 99 %%, "
        "unfrozen from lr/5 over 30 %%) or flat-cos (fastai's fit_flat_cos: flat for 75 %%, then cosine down)",
    )
    p.add_argument(
        "--opt",
        choices=OPTIMIZERS,
        default=d.opt,
        help="adam (fastai's default) or ranger (RAdam + Lookahead, fastai's)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of the frozen phase")
    p.add_argument(
        "--lr-unfrozen",
        type=float,
        nargs=2,
        default=d.lr_unfrozen,
        metavar=("LO", "HI"),
        help="slice(LO, HI) after unfreezing",
    )
    p.add_argument("--lr-find", action="store_true", help="run fastai's lr_find first and write lr_find.png")


def _speed_args(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    """How fast a step runs: precision, memory format, threads."""
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="auto (default): bf16 autocast where the device computes "
        "bf16 natively (CPUs with AMX or AVX-512 BF16, bf16 GPUs), else fp32; fp32; bf16 (emulated, slow, elsewhere)",
    )
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="train in the contiguous memory format (default: channels-last, oneDNN's fast layout)",
    )
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")


def fit_config(a: argparse.Namespace, data: Path, out: Path):
    """The TrainConfig of the parsed fit arguments: every field the parser has (same names), sizes parsed."""
    from dataclasses import fields

    given = {
        f.name: getattr(a, f.name) for f in fields(TrainConfig) if hasattr(a, f.name) and f.name not in ("data", "out")
    }
    given.update(size=size_arg(a.size, "--size"), crop=size_arg(a.crop, "--crop"), lr_unfrozen=tuple(a.lr_unfrozen))
    fixed = getattr(a, "given", set())  # training.__main__.parse
    return TrainConfig(data=data, out=out, **{**given, "fixed": tuple(sorted(fixed - {"minutes"}))})


def size_arg(values: list[str] | None, flag: str) -> tuple[int, int] | None:
    """["360", "480"], ["360x480"] or ["128"] -> (H, W) (training.config.parse_hw); a one-line TrainingError
    otherwise."""
    try:
        return parse_hw(values or None)
    except ValueError:
        raise TrainingError(f"{flag} {' '.join(values)}: give H W, HxW or one number, e.g. {flag} 360 480") from None


def add_export_args(p: argparse.ArgumentParser, store: bool = False) -> None:
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write model.int8.onnx (static QDQ, CPU) if it keeps >= 99%% of fp32's accuracy on the held-out "
        "images",
    )
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (GPU)")
    p.add_argument("--no-probs", dest="probs", action="store_false", help="leave out the float32 `probs` output")
    p.add_argument("--exporter", choices=("auto", "dynamo", "legacy"), default="auto")
    p.add_argument(
        "--tta",
        choices=("none", "flip"),
        default="none",
        help="flip: test-time augmentation inside the graph, each image and its mirror image averaged (twice the "
        "model's work per image)",
    )
    p.add_argument(
        "--tta-scales",
        type=float,
        nargs="+",
        default=[1.0],
        metavar="S",
        help="test-time scales inside the graph, e.g. 1 1.5: the image also resized by each, the scores resized "
        "back and averaged (with --tta flip, each scale flipped too); the work grows with the sum of S squared "
        "(default: 1 alone)",
    )
    if store:
        p.add_argument(
            "--bentoml",
            metavar="NAME",
            nargs="?",
            const="segmentation",
            help="also register the export in BentoML's model store under NAME (default segmentation): `bentoml "
            "models list` shows it",
        )
    p.add_argument(
        "--fixed-size",
        dest="dynamic_hw",
        action="store_false",
        help="fix H and W at the training size (squished uploads, as older exports) instead of any size",
    )


def tta_of(a: argparse.Namespace):
    """The export's test-time augmentation (a graph.Tta) from --tta and --tta-scales (repeats dropped); a one-line
    TrainingError for a scale outside TTA_SCALES."""
    from .export.graph import Tta

    scales = tuple(dict.fromkeys(a.tta_scales))
    bad = [s for s in scales if not TTA_SCALES[0] <= s <= TTA_SCALES[1]]
    if bad:
        raise TrainingError(
            f"--tta-scales {' '.join(f'{s:g}' for s in bad)}: give scales between {TTA_SCALES[0]:g} and "
            f"{TTA_SCALES[1]:g}, e.g. --tta-scales 1 1.5"
        )
    return Tta(flip=a.tta == "flip", scales=scales)
