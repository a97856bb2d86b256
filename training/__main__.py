"""`python -m training {synth,masks,fit,export,demo}`: argument parsing only; the work is in importable functions."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .demo import DEMO_DEFAULTS, DEMO_RECIPE
from .errors import TrainingError


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    from .config import AUGMENT, CLASS_WEIGHTS, LOSSES, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig
    from .losses import IMBALANCE_RATIO
    from .model import DECODER_NORMS, INPUT_NORMS

    d = TrainConfig(data=Path("."), out=Path("."))
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
        "--progressive", action="store_true", help="progressive resizing: the frozen phase at half size, then full size"
    )
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
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of the frozen phase")
    p.add_argument(
        "--lr-unfrozen",
        type=float,
        nargs=2,
        default=d.lr_unfrozen,
        metavar=("LO", "HI"),
        help="slice(LO, HI) after unfreezing",
    )
    p.add_argument("--valid-pct", type=float, default=d.valid_pct)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--augment",
        choices=AUGMENT,
        default=d.augment,
        help="field (default): flips + camera shifts (--field-kinds of haze, blur, low resolution, exposure, colour "
        "cast, noise, JPEG); flip: random flips; affine: flips + rotation, zoom, warp and lighting (fastai's "
        "aug_transforms); none; auto: same as flip (kept for older commands)",
    )
    p.add_argument(
        "--input-norm",
        choices=INPUT_NORMS,
        default=d.input_norm,
        help="encoder (default): each image standardised per channel inside the model before the encoder (exposure, "
        "contrast and white balance leave its input unchanged); image: for the head too; dataset: fixed mean/std only",
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
        help=f"with --augment field: the share of training images shifted as a camera would (default {d.field_p:g})",
    )
    p.add_argument("--no-augment", dest="augment", action="store_const", const="none", help="same as --augment none")
    p.add_argument("--lr-find", action="store_true", help="run fastai's lr_find first and write lr_find.png")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")


def _fit_config(a: argparse.Namespace, data: Path, out: Path):
    """The TrainConfig of the parsed fit arguments: every field the parser has (same names), sizes parsed."""
    from dataclasses import fields

    from .config import TrainConfig

    given = {
        f.name: getattr(a, f.name) for f in fields(TrainConfig) if hasattr(a, f.name) and f.name not in ("data", "out")
    }
    given.update(size=_size_arg(a.size, "--size"), crop=_size_arg(a.crop, "--crop"), lr_unfrozen=tuple(a.lr_unfrozen))
    return TrainConfig(data=data, out=out, **given)


def _size_arg(values: list[str] | None, flag: str) -> tuple[int, int] | None:
    """["360", "480"], ["360x480"] or ["128"] -> (H, W) (training.config.parse_hw); a one-line TrainingError
    otherwise."""
    from .config import parse_hw

    try:
        return parse_hw(values or None)
    except ValueError:
        raise TrainingError(f"{flag} {' '.join(values)}: give H W, HxW or one number, e.g. {flag} 360 480") from None


def _add_export_args(p: argparse.ArgumentParser, store: bool = False) -> None:
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write model.int8.onnx (static QDQ, CPU) if it keeps >= 99%% of fp32's accuracy on the held-out "
        "images",
    )
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (GPU)")
    p.add_argument("--no-probs", dest="probs", action="store_false", help="leave out the float32 `probs` output")
    p.add_argument("--exporter", choices=("auto", "dynamo", "legacy"), default="auto")
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


def _parser() -> argparse.ArgumentParser:
    from contract import DEFAULT_MODEL_DIR

    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser(
        "synth",
        help="write a synthetic data set: butterflies and leaves (generic layout) or street scenes (CamVid layout)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", nargs="+", metavar="H [W]", help="image size (default 128; camvid: 360 480)")
    p.add_argument(
        "--layout",
        choices=("generic", "camvid", "leeds"),
        default="generic",
        help="generic: butterflies and leaves; camvid: street scenes with thin poles; leeds: hard butterflies (0/255 "
        "masks)",
    )
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "masks",
        help="masks for fit: 0/255 or RGB colour masks -> index masks, or COCO / LabelMe annotations -> a data set",
    )
    p.add_argument("src", type=Path, nargs="?", help="folder of mask PNGs (binary 0/255, or RGB with --palette)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for the index masks (codes.txt goes beside it); with --coco/--labelme the data set",
    )
    p.add_argument("--palette", type=Path, help="`name r g b` per line, for RGB colour masks")
    p.add_argument("--coco", type=Path, help="COCO instances JSON (polygons or RLE; CVAT and Label Studio export it)")
    p.add_argument("--images", type=Path, help="with --coco: the folder holding its images")
    p.add_argument("--labelme", type=Path, help="folder of LabelMe JSON files (images beside them or embedded)")

    p = sub.add_parser("fit", help="train a fastai U-Net on a labelled folder")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder (must be new)")
    _add_fit_args(p)

    p = sub.add_parser(
        "export", help="export a run, or a Learner saved with learn.export(), to ONNX (parity-checked against fastai)"
    )
    p.add_argument("--model", type=Path, help="run folder written by `fit`")
    p.add_argument(
        "--learner", type=Path, help="a .pkl written by fastai's learn.export() (needs --trust-pickle and --images)"
    )
    p.add_argument(
        "--trust-pickle", action="store_true", help="allow loading --learner: unpickling runs code stored in the file"
    )
    p.add_argument(
        "--images", type=Path, help="with --learner: a folder of a few images like its validation set (parity, int8)"
    )
    p.add_argument("--out", type=Path, required=True, help="exported_models/NAME (must not exist)")
    _add_export_args(p, store=True)

    p = sub.add_parser("demo", help="synth -> fit -> export: the default model `make serve` serves",
                       description=f"fit's options; the demo's own defaults: {DEMO_RECIPE}")  # fmt: skip
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--work", type=Path, default=Path("runs/demo"), help="where the data set and the run go")
    p.add_argument("--n", type=int, default=300, help="synthetic scenes (80 %% train, 20 %% held out)")
    p.add_argument("--quick", action="store_true", help="a first model in about a minute (fewer steps, fp32 only)")
    p.add_argument("--replace", action="store_true", help="build beside --out, then move it into --out's place "
                   "(a service with SEG_RELOAD_S picks it up)")  # fmt: skip
    _add_fit_args(p)
    p.set_defaults(**DEMO_DEFAULTS)
    _add_export_args(p)
    return parser


def _synth(a: argparse.Namespace) -> None:
    from .synth import SynthConfig, synth

    size = _size_arg(a.size, "--size") or ((360, 480) if a.layout == "camvid" else (128, 128))
    if a.layout != "camvid" and size[0] != size[1]:
        raise TrainingError(
            f"--size {size[0]} {size[1]}: {a.layout} scenes are square; give one number (or use --layout camvid)"
        )
    out = synth(SynthConfig(out=a.out, n=a.n, size=size, seed=a.seed, layout=a.layout))
    print(f"wrote {a.n} {a.layout} scenes of {size[0]}x{size[1]} to {out}")


def _masks(a: argparse.Namespace) -> None:
    if a.coco or a.labelme:
        from .annotations import coco_to_masks, labelme_to_masks

        if a.coco and not a.images:
            raise TrainingError("--coco needs --images, the folder holding the annotated images")
        n, codes = coco_to_masks(a.coco, a.images, a.out) if a.coco else labelme_to_masks(a.labelme, a.out)
        print(
            f"wrote {n} images and masks ({len(codes)} classes: {', '.join(codes)}) to {a.out}; train with "
            f"`python -m training fit --data {a.out} --out runs/NAME`"
        )
        return
    from .masks import convert_masks

    if a.src is None:
        raise TrainingError("masks: pass a folder of mask PNGs, or --coco FILE --images DIR, or --labelme DIR")
    print(f"converted {convert_masks(a.src, a.out, a.palette)} masks into {a.out}")


def _fit(a: argparse.Namespace) -> None:
    from .fit import fit

    fit(_fit_config(a, a.data, a.out))


def _export(a: argparse.Namespace) -> None:
    from .export import export_learner, export_run, load_learner_pickle

    opts = dict(int8=a.int8, fp16=a.fp16, probs=a.probs, exporter=a.exporter, dynamic_hw=a.dynamic_hw)
    if (a.model is None) == (a.learner is None):
        raise TrainingError(
            "export: pass either --model RUN_DIR (from `fit`) or --learner FILE.pkl (from learn.export())"
        )
    if a.model is not None:
        export_run(a.model, a.out, **opts)
    else:
        from .data import list_images

        learn = load_learner_pickle(a.learner, a.trust_pickle)
        if a.images is None or not a.images.is_dir():
            raise TrainingError(
                "--learner needs --images DIR: a folder with a few images like the Learner's validation set (got "
                f"{a.images})"
            )
        images = list_images(a.images)
        if not images:
            raise TrainingError(f"{a.images}: no images inside")
        export_learner(learn, a.out, images=images[:32], **opts)
    if a.bentoml:
        from contract.store import register

        print(
            f"registered in BentoML's model store as {register(a.out, a.bentoml)}; serve it with "
            f"SEG_MODEL={a.bentoml}:latest bentoml serve serving.service:SegmentationService",
            flush=True,
        )


def _demo(a: argparse.Namespace) -> None:
    from .demo import demo

    base = _fit_config(a, Path("."), Path("."))
    demo(out=a.out, work=a.work, n=a.n, base=base, exporter=a.exporter, quick=a.quick, replace=a.replace)


COMMANDS = {"synth": _synth, "masks": _masks, "fit": _fit, "export": _export, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    # Library deprecation chatter (torch.jit, fastai, onnxscript) is not for users of this command.
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    a = _parser().parse_args(argv)
    try:
        COMMANDS[a.cmd](a)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
