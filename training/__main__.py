"""`python -m training {synth,masks,fit,export,demo}`: argument parsing only; the work is in importable functions."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .errors import TrainingError


def _add_fit_args(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    d = TrainConfig(data=Path("."), out=Path("."))
    p.add_argument("--encoder", default=d.encoder, help="efficientnet_lite0 (default, ImageNet weights offline), resnet18, resnet34")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", help="random init instead of ImageNet weights")
    p.add_argument("--allow-random", action="store_true", help="fall back to random init when pretrained weights cannot be loaded")
    p.add_argument("--weights", type=Path, help="encoder state_dict to start from instead of ImageNet weights")
    p.add_argument("--size", type=int, default=d.size, help="training/model input size, a multiple of 32")
    p.add_argument("--bs", type=int, default=d.bs)
    p.add_argument("--frozen-epochs", type=int, default=d.frozen_epochs, help="epochs with the encoder frozen (head only)")
    p.add_argument("--unfrozen-epochs", type=int, default=d.unfrozen_epochs, help="epochs after unfreezing, discriminative lrs")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of the frozen phase")
    p.add_argument("--lr-unfrozen", type=float, nargs=2, default=d.lr_unfrozen, metavar=("LO", "HI"), help="slice(LO, HI) after unfreezing")
    p.add_argument("--valid-pct", type=float, default=d.valid_pct)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--lr-find", action="store_true", help="run fastai's lr_find first and write lr_find.png")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")


def _fit_config(a: argparse.Namespace, data: Path, out: Path):
    from .train import TrainConfig

    return TrainConfig(data=data, out=out, encoder=a.encoder, pretrained=a.pretrained, weights=a.weights, allow_random=a.allow_random,
                       size=a.size, bs=a.bs, frozen_epochs=a.frozen_epochs, unfrozen_epochs=a.unfrozen_epochs, lr=a.lr,
                       lr_unfrozen=tuple(a.lr_unfrozen), valid_pct=a.valid_pct, seed=a.seed, augment=a.augment, lr_find=a.lr_find,
                       threads=a.threads)


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ, CPU) if it agrees >= 99.5%%")
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (GPU)")
    p.add_argument("--no-probs", dest="probs", action="store_false", help="leave out the float32 `probs` output")
    p.add_argument("--exporter", choices=("auto", "dynamo", "legacy"), default="auto")


def main(argv: list[str] | None = None) -> int:
    # Library deprecation chatter (torch.jit, fastai, onnxscript) is not for users of this command.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("synth", help="write the embedded synthetic data set (generic layout)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("masks", help="binary 0/255 or RGB colour masks -> index masks (+ codes.txt)")
    p.add_argument("src", type=Path, help="folder of mask PNGs")
    p.add_argument("--out", type=Path, required=True, help="folder for the index masks (codes.txt goes beside it)")
    p.add_argument("--palette", type=Path, help="`name r g b` per line, for RGB colour masks")

    p = sub.add_parser("fit", help="train a fastai U-Net on a labelled folder")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder (must be new)")
    _add_fit_args(p)

    p = sub.add_parser("export", help="export a run to ONNX (parity-checked against fastai)")
    p.add_argument("--model", type=Path, required=True, help="run folder written by `fit`")
    p.add_argument("--out", type=Path, required=True, help="exported_models/NAME (must not exist)")
    _add_export_args(p)

    p = sub.add_parser("demo", help="synth -> fit -> export: the default model `make serve` serves")
    p.add_argument("--out", type=Path, default=Path("exported_models/default"))
    p.add_argument("--work", type=Path, default=Path("runs/demo"), help="where the data set and the run go")
    p.add_argument("--n", type=int, default=300, help="synthetic scenes (80 %% train, 20 %% held out)")
    _add_fit_args(p)
    _add_export_args(p)

    a = parser.parse_args(argv)
    try:
        if a.cmd == "synth":
            from .synth import SynthConfig, synth

            if a.size % 32:
                raise TrainingError(f"--size {a.size} is not a multiple of 32")
            out = synth(SynthConfig(out=a.out, n=a.n, size=a.size, seed=a.seed))
            print(f"wrote {a.n} scenes to {out}")
        elif a.cmd == "masks":
            from .masks import convert_masks

            n = convert_masks(a.src, a.out, a.palette)
            print(f"converted {n} masks into {a.out}")
        elif a.cmd == "fit":
            from .train import fit

            fit(_fit_config(a, a.data, a.out))
        elif a.cmd == "export":
            from .export import export_run

            export_run(a.model, a.out, int8=a.int8, fp16=a.fp16, probs=a.probs, exporter=a.exporter)
        elif a.cmd == "demo":
            from .demo import demo

            demo(out=a.out, work=a.work, n=a.n, base=_fit_config(a, Path("."), Path(".")), exporter=a.exporter)
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
