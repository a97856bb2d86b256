"""`python -m training {synth,masks,fit,export,evaluate,demo}`: argument parsing only; the work is in importable
functions. `evaluate` is serving's (serving.evaluate: it scores the served data path), offered here too."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .demo import DEMO_DEFAULTS, DEMO_RECIPE
from .errors import DataError, TrainingError
from .options import add_export_args, add_fit_args, fit_config, given_options, size_arg, tta_of


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for commands in (_data_commands, _model_commands, _demo_command):
        commands(sub)
    parser.set_defaults(commands=sub.choices)  # each command's own parser: the options given (main)
    return parser


def _data_commands(sub) -> None:
    """synth and masks: data sets to train on."""
    p = sub.add_parser(
        "synth",
        help="write a synthetic data set: butterflies and leaves (generic layout) or street scenes (CamVid layout)",
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", nargs="+", metavar="H [W]", help="image size (default 128; camvid: 360 480)")
    p.add_argument(
        "--layout",
        choices=("generic", "camvid", "leeds", "thin"),
        default="generic",
        help="generic: butterflies and leaves; camvid: street scenes with thin poles; leeds: hard butterflies (0/255 "
        "masks); thin: greyscale photos crossed by structures 2-4 px wide (512 px)",
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


def _model_commands(sub) -> None:
    """fit, export and evaluate: a model from a data set, its export, its score."""
    p = sub.add_parser("fit", help="train a fastai U-Net on a labelled folder")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder (must be new)")
    add_fit_args(p)

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
    add_export_args(p, store=True)

    from serving.evaluate import add_args

    add_args(sub.add_parser("evaluate", help="score an exported model on a labelled data set, the field's way (mean "
                            "IoU, per class, optionally under camera shifts); a SegNet folder: its test/"))  # fmt: skip


def _demo_command(sub) -> None:
    """demo: synth -> fit -> export with the demo's recipe."""
    from contract import DEFAULT_MODEL_DIR

    p = sub.add_parser("demo", help="synth -> fit -> export: the default model `make serve` serves",
                       description=f"fit's options; the demo's own defaults: {DEMO_RECIPE}")  # fmt: skip
    p.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--work", type=Path, default=Path("runs/demo"), help="where the data set and the run go")
    p.add_argument("--n", type=int, default=300, help="synthetic scenes (80 %% train, 20 %% held out)")
    p.add_argument("--quick", action="store_true", help="a first model in about a minute (fewer steps, fp32 only)")
    p.add_argument("--replace", action="store_true", help="build beside --out, then move it into --out's place "
                   "(a service with SEG_RELOAD_S picks it up)")  # fmt: skip
    add_fit_args(p)
    p.set_defaults(**DEMO_DEFAULTS)
    add_export_args(p)


def _synth(a: argparse.Namespace) -> None:
    from .synth import SynthConfig, synth

    size = size_arg(a.size, "--size") or {"camvid": (360, 480), "thin": (512, 512)}.get(a.layout, (128, 128))
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

    fit(fit_config(a, a.data, a.out))


def _export(a: argparse.Namespace) -> None:
    from .export import export_learner, export_run, load_learner_pickle

    opts = dict(int8=a.int8, fp16=a.fp16, probs=a.probs, exporter=a.exporter, dynamic_hw=a.dynamic_hw)
    opts["tta"] = tta_of(a)
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


def _evaluate(a: argparse.Namespace) -> int:
    from serving.evaluate import run

    return run(a)


def _demo(a: argparse.Namespace) -> None:
    from .demo import demo

    base = fit_config(a, Path("."), Path("."))
    demo(out=a.out, work=a.work, n=a.n, base=base, exporter=a.exporter, quick=a.quick, replace=a.replace)


COMMANDS = {"synth": _synth, "masks": _masks, "fit": _fit, "export": _export, "evaluate": _evaluate, "demo": _demo}


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed command line, with `given`: the fit options it gave (matched by its command's own parser), which
    fit's plan keeps as given."""
    a = _parser().parse_args(argv)
    a.given = given_options(argv[argv.index(a.cmd) + 1 :], a.commands[a.cmd])
    return a


def main(argv: list[str] | None = None) -> int:
    # Library deprecation chatter (torch.jit, fastai, onnxscript) is not for users of this command.
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
    argv = sys.argv[1:] if argv is None else list(argv)
    a = parse(argv)
    try:
        code = COMMANDS[a.cmd](a)
    except (TrainingError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
