"""CamVid-layout street scenes: `fit` against the plain fastai recipe, one factor at a time, at one budget.

    python -m benchmarks.camvid [--work runs/camvid] [--n 150] [--draw 0] [--epochs 2 6] [--only P D ... A] [--seeds 42 7 3]
                                [--screen] [--tag NAME] [--no-load]

Writes `--n` synthetic 360x480 street scenes (training.synth, CamVid layout: Sky, Building, Road, Tree,
Car, thin Poles, Void; `--draw`: the generator's seed, another draw of the same kind of scenes), then trains each row at the same budget (2 frozen + 6 unfrozen epochs), exports
it with `python -m training export --int8` (the commands people run) and scores the held-out scenes at
360x480 (Void excluded) through the served data path (serving.Segmenter: resized to the training scale
keeping the aspect, padded to 32, scores upsampled bilinearly), fp32 and, where the export kept it, int8:

- P: the plain fastai recipe (benchmarks.camvid_plain: RandomCrop + Flip, weighted loss clipped at 50,
  last epoch);
- D: `fit` before this change (--augment affine: flips, rotation, zoom, warp, lighting);
- F: D with flips only (the plain recipe's augmentation);
- W: D with the class weights clipped at 50 (as the plain recipe): the same loss when no weight exceeds 50;
- L: D keeping the last epoch instead of the best validation Dice: the same model when the best was the last;
- S: D at batch size 4 (twice the optimiser steps in the same epochs);
- H: F with both learning rates doubled;
- G: F with a soft Dice term added to the loss (`--loss ce+dice`);
- U: G without the class weights (the Dice term already weighs each class by its overlap);
- K: G with the square roots of the class weights (poles came out fat under a weight of 31);
- T: G with the shape of fastai's `fine_tune` schedule (frozen warm-up over 99 %, unfrozen from lr/5 over 30 %);
- R: G with both learning rates halved (H doubled them and lost);
- V: G with the Lovasz-softmax loss (a surrogate of 1 - IoU, the score itself) in place of the Dice term;
- N: G run again with another seed (its own 80/20 split and initialisation): how far one recipe moves from run to run;
- M: G with every BatchNorm layer's momentum at 0.1 (EfficientNet-Lite0's encoder keeps 0.01: its running
  statistics, used at inference, move 1 % per step, so after 120 steps they still hold 30 % of ImageNet's);
- B: G at twice the budget (2 frozen + 14 unfrozen epochs; its own arguments override --epochs): not a
  candidate for the 8-epoch aim, a measure of how far the budget binds;
- Q: G at batch size 4 (S asked the same of D, under its affine augmentation);
- C: G with a third of the training crops centred on a pixel of a class drawn evenly from those in the scene
  (`--class-crops 0.33`, nnU-Net's foreground oversampling): cars and poles fill more of the crops;
- Y: G at batch size 2;
- O: C without the class weights (oversampling in place of weighting, not on top of it);
- Z: Q run again with seed 7 (as N is G's second run);
- E: G with the encoder's learning rate tripled after unfreezing (slice(6e-4, 2e-3): fastai's U-Net over this
  encoder has two parameter groups, so the slice's ends are the encoder's and the decoder's rates);
- J: G in fp32 and the contiguous memory format (`--precision fp32 --no-channels-last`): what bf16 autocast and
  channels-last, fit's defaults where the CPU computes bf16 natively, change in accuracy and time;
- X: G with fastai's `fit_flat_cos` in both phases (no warm-up: the rate flat for 75 % of each phase, then cosine down);
- I: X with fastai's `ranger` optimiser (RAdam + Lookahead), the pairing fastai's short-schedule records used;
- I2: I with both learning rates doubled (Lookahead moves the weights half-way to where RAdam's k steps led);
- QE: G with both Q's batch size 4 and E's encoder rate (the two that gained over 5 seeds, together);
- L2: G over the larger EfficientNet-Lite2 encoder (`--encoder efficientnet_lite2`): a model factor, not a recipe one;
- DB: Q with BatchNorm after each convolution of the U-Net's decoder but the final 1x1 classifier (`--decoder-norm
  batch`; fastai's DynamicUnet has none there by default, only on the skip connections);
- DA: Q with fastai's own `norm_type=NormType.Batch`, which puts BatchNorm on the classifier's logits as well;
- A: `fit` after, its defaults (`--size 360 480 --crop 192 256`): the same run as F, G, Q or QE when the defaults resolve alike.

Then the last trained row's export is served by a real `bentoml serve` (default settings) and loaded with
480x360 PNG uploads of the held-out scenes at concurrency 16 (throughput, p50/p99, masks equal to the
Python API's). Resumable: a row whose run or export exists is not trained again. Prints a table,
writes benchmarks/results/camvid-[<tag>-]<date>.md/.json and a PNG of example masks.

`--seeds`: every row is trained once per seed (each seed its own 80/20 split, initialisation and crops, the
same for every row) and the table averages over them, with the spread: one run of a recipe moves mean IoU by
several hundredths at this budget, so rows are ranked over seeds. `--screen`: rows are scored by fit's own
held-out evaluation (training.train.evaluate, the served data path in PyTorch) without exporting them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import cpu_features

ROOT = Path(__file__).resolve().parents[1]
SIZE_CROP = ["--size", "360", "480", "--crop", "192", "256"]
# the rows from before fit's defaults changed keep what they measured: a batch of 8 (before crops defaulted to 4) and
# fastai's decoder without norm (before --decoder-norm batch)
SCALE = [*SIZE_CROP, "--bs", "8", "--decoder-norm", "none"]
G_ARGS = [*SCALE, "--augment", "flip", "--loss", "ce+dice"]  # row G; most rows are one factor on top of it

# name -> fit arguments (None: the plain recipe), what changed
RECIPES = {
    "P": (None, "plain fastai recipe (RandomCrop + Flip, weights clipped at 50, last epoch)"),
    "D": (
        [*SCALE, "--augment", "affine", "--loss", "ce"],
        "`fit` before: crops, flips + rotation/zoom/warp/lighting, weights, best epoch",
    ),
    "F": ([*SCALE, "--augment", "flip", "--loss", "ce"], "D, flips only"),
    "W": (None, "D, class weights clipped at 50"),
    "L": ([*SCALE, "--augment", "affine", "--loss", "ce", "--last-epoch"], "D, last epoch kept"),
    "S": (
        [*SCALE, "--augment", "affine", "--loss", "ce", "--bs", "4"],
        "D, batch size 4 (twice the optimiser steps in the same 8 epochs)",
    ),
    "H": (
        [*SCALE, "--augment", "flip", "--loss", "ce", "--lr", "8e-3", "--lr-unfrozen", "4e-4", "4e-3"],
        "F, learning rates doubled (8e-3, then slice(4e-4, 4e-3))",
    ),
    "G": (G_ARGS, "F, cross-entropy + soft Dice loss"),
    "U": ([*G_ARGS, "--class-weights", "off"], "G, no class weights"),
    "K": ([*G_ARGS, "--class-weights", "sqrt"], "G, class weights softened (square roots)"),
    "T": (
        [*G_ARGS, "--schedule", "fine-tune"],
        "G, fastai fine_tune's schedule shape (frozen warm-up 99 %, unfrozen from lr/5)",
    ),
    "R": (
        [*G_ARGS, "--lr", "2e-3", "--lr-unfrozen", "1e-4", "1e-3"],
        "G, learning rates halved (2e-3, then slice(1e-4, 1e-3))",
    ),
    "V": (
        [*SCALE, "--augment", "flip", "--loss", "ce+lovasz"],
        "G, the Lovasz-softmax (IoU) loss instead of the Dice term",
    ),
    "N": (
        [*G_ARGS, "--seed", "7"],
        "G again with another seed (7: its own split and initialisation), the run-to-run noise",
    ),
    "M": (
        [*G_ARGS, "--bn-momentum", "0.1"],
        "G, BatchNorm momentum 0.1 in the encoder (EfficientNet-Lite0's own is 0.01)",
    ),
    "B": (
        [*G_ARGS, "--frozen-epochs", "2", "--unfrozen-epochs", "14"],
        "G at twice the budget (2 frozen + 14 unfrozen epochs), outside the aim's 8: what more steps buy",
    ),
    "Q": ([*G_ARGS, "--bs", "4"], "G, batch size 4 (twice the optimiser steps in the same 8 epochs)"),
    "C": (
        [*G_ARGS, "--class-crops", "0.33"],
        "G, a third of the crops centred on a class drawn evenly from those in the scene (nnU-Net's oversampling)",
    ),
    "Y": ([*G_ARGS, "--bs", "2"], "G, batch size 2 (four times the optimiser steps in the same 8 epochs)"),
    "O": (
        [*G_ARGS, "--class-crops", "0.33", "--class-weights", "off"],
        "C without class weights (oversampling in place of weighting)",
    ),
    "Z": ([*G_ARGS, "--bs", "4", "--seed", "7"], "Q again with another seed (7, as N is G's)"),
    "E": (
        [*G_ARGS, "--lr-unfrozen", "6e-4", "2e-3"],
        "G, the encoder's unfrozen learning rate tripled (slice(6e-4, 2e-3): the decoder's unchanged)",
    ),
    "J": (
        [*G_ARGS, "--precision", "fp32", "--no-channels-last"],
        "G in fp32 and the contiguous memory format (fit's numerics before bf16 autocast)",
    ),
    "X": (
        [*G_ARGS, "--schedule", "flat-cos"],
        "G, fastai's fit_flat_cos in each phase (the rate flat for 75 %, then cosine down)",
    ),
    "I": (
        [*G_ARGS, "--opt", "ranger", "--schedule", "flat-cos"],
        "G, fastai's ranger (RAdam + Lookahead) with fit_flat_cos",
    ),
    "I2": (
        [*G_ARGS, "--opt", "ranger", "--schedule", "flat-cos", "--lr", "8e-3", "--lr-unfrozen", "4e-4", "4e-3"],
        "I with both learning rates doubled (Lookahead's alpha 0.5 halves each step's reach)",
    ),
    "QE": (
        [*G_ARGS, "--bs", "4", "--lr-unfrozen", "6e-4", "2e-3"],
        "G, batch size 4 and the encoder's unfrozen learning rate tripled (Q and E together)",
    ),
    "L2": (
        [*G_ARGS, "--encoder", "efficientnet_lite2"],
        "G over EfficientNet-Lite2 (ImageNet top-1 77.6 % against Lite0's 75.1 %; U-Net 12.0 M parameters against 9.3 M)",
    ),
    "DB": (
        [*G_ARGS, "--bs", "4", "--decoder-norm", "batch"],
        "Q, BatchNorm after each convolution of the decoder but the final classifier",
    ),
    "DA": (
        [*G_ARGS, "--bs", "4", "--decoder-norm", "batch-all"],
        "Q, BatchNorm after each convolution of the decoder, the classifier's logits too (fastai's NormType.Batch)",
    ),
    "A": (SIZE_CROP, "`fit` after: its defaults"),
}


def _run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed with exit code {r.returncode}")


def iou_table(cm: np.ndarray, codes, void: int) -> dict:
    from contract.metrics import metrics_from_confusion

    m = metrics_from_confusion(cm, list(codes), void)
    return {**{c: v for c, v in m["iou"].items() if c != codes[void]}, "mean": m["iou_fg"]}


def score(export: Path, valid: list[tuple[Path, Path]], codes, void: int, variant: str = "fp32") -> tuple[dict, list]:
    """IoU per class on the held-out scenes at their own size, through the served data path (serving.Segmenter)."""
    from contract.metrics import confusion
    from serving import Segmenter

    seg = Segmenter.load(export, "cpu", variant)
    n = len(codes)
    cm = np.zeros((n, n), np.int64)
    shown = []
    for image_path, mask_path in valid:
        with Image.open(image_path) as im:
            img = im.convert("RGB")
        truth = np.asarray(Image.open(mask_path))
        pred = seg.predict(img)
        cm += confusion(pred, truth, n, void)
        if len(shown) < 3:
            shown.append((np.asarray(img), truth, pred))
    return iou_table(cm, codes, void), shown


def _same_as(name: str, work: Path) -> str | None:
    """The row whose model `name` would be identical to (no run needed), or None. W: D's weights all <= 50;
    L: D kept its last epoch; A: the first row whose arguments `fit` resolves to the same configuration as its defaults."""
    d = work / "run-D" / "report.json"
    if name in ("W", "L") and d.is_file():
        r = json.loads(d.read_text())
        if name == "W" and max((r["class_balance"]["weights"] or {"": 0}).values()) <= 50:
            return "D"
        if name == "L" and r["schedule"]["kept_epoch"] == r["history"][-1]["epoch"]:
            return "D"
    if name == "A":
        want = _resolved(RECIPES["A"][0])
        return next(
            (row for row, (args, _) in RECIPES.items() if row != "A" and args is not None and _resolved(args) == want),
            None,
        )
    return None


def _resolved(args: list[str]) -> dict:
    """The configuration `python -m training fit` runs with these arguments (its own parser and defaults),
    augmentation and loss resolved, the data and run folders left out."""
    from training.__main__ import _add_fit_args, _fit_config

    p = argparse.ArgumentParser()
    _add_fit_args(p)
    c = _fit_config(p.parse_args(args), Path("."), Path("."))
    return {**c.to_json(), "data": None, "out": None, "augment": c.resolved_augment(), "loss": c.resolved_loss()}


DEFAULT_SEED = 42  # fit's; a row's other seeds get their own run folders (run-G-s7)


def _folder(work: Path, kind: str, name: str, seed: int) -> Path:
    return work / f"{kind}-{name}" if seed == DEFAULT_SEED else work / f"{kind}-{name}-s{seed}"


def _seeds(name: str, seeds: list[int]) -> list[int]:
    """The seeds row `name` runs with: its own when its arguments carry one (N, Z), else `seeds`."""
    args = RECIPES[name][0] or []
    return [int(args[args.index("--seed") + 1])] if "--seed" in args else seeds


def _train(name: str, data: Path, work: Path, epochs, seed: int = DEFAULT_SEED, export: bool = True) -> Path:
    """Train row `name` with `seed` and, with `export`, export it (with --int8) unless done; returns its run folder."""
    py = sys.executable
    args = RECIPES[name][0]
    run, out = _folder(work, "run", name, seed), _folder(work, "export", name, seed)
    seed_args = [] if args and "--seed" in args else ["--seed", str(seed)]
    if not (run / "report.json").is_file():
        if args is None:
            _run(
                [
                    py,
                    "-m",
                    "benchmarks.camvid_plain",
                    "--data",
                    str(data),
                    "--out",
                    str(run),
                    "--epochs",
                    *map(str, epochs),
                    *seed_args,
                ]
            )
        else:
            _run(
                [
                    py,
                    "-m",
                    "training",
                    "fit",
                    "--data",
                    str(data),
                    "--out",
                    str(run),
                    "--frozen-epochs",
                    str(epochs[0]),
                    "--unfrozen-epochs",
                    str(epochs[1]),
                    *args,
                    *seed_args,
                ]
            )
    if export and not (out / "model.onnx").is_file():
        _run([py, "-m", "training", "export", "--model", str(run), "--out", str(out), "--int8"])
    return run


def score_run(run: Path) -> tuple[dict, list]:
    """IoU per class on the run's held-out scenes, by fit's own evaluation (training.train.evaluate: the served data
    path in PyTorch, which the export's parity gate ties to the ONNX graph); no export needed."""
    from training.evaluate import evaluate
    from training.model import ENCODERS
    from training.run import load_run

    learn, meta, ds = load_run(run)
    valid = {str(p) for p in meta["valid_images"]}
    idx = [i for i, (image, _) in enumerate(ds.pairs) if str(image) in valid]
    spec = ENCODERS[meta["config"]["encoder"]]
    metrics, shown = evaluate(learn, ds, idx, tuple(meta["size"]), spec.mean, spec.std)
    iou = {c: v for c, v in metrics["iou"].items() if c != meta["codes"][meta["void"]]}
    return {**iou, "mean": metrics["iou_fg"]}, [s[:3] for s in shown[:3]]


def aggregate(per_seed: list[dict]) -> dict:
    """Per-class means over a row's seeds, the mean IoU's mean, min and max, and how many seeds."""
    classes = [c for c in per_seed[0] if c != "mean"]
    means = [r["mean"] for r in per_seed]
    return {
        **{c: float(np.mean([r[c] for r in per_seed])) for c in classes},
        "mean": float(np.mean(means)),
        "min": float(min(means)),
        "max": float(max(means)),
        "n": len(per_seed),
    }


def _score_row(name: str, data: Path, work: Path, a) -> tuple[dict, list]:
    """Train (and export, unless --screen) row `name` for each of its seeds and score it; the row's aggregate."""
    per_seed, shown, minutes = {"fp32": [], "int8": []}, [], []
    for seed in _seeds(name, a.seeds):
        run = _train(name, data, work, a.epochs, seed, export=not a.screen)
        report = json.loads((run / "report.json").read_text())
        minutes.append(report["timings"]["train_s"] / 60)
        if a.screen:
            scores, seen = score_run(run)
            per_seed["fp32"].append({**scores, "seed": seed})
        else:
            export = _folder(work, "export", name, seed)
            codes, void = report["codes"], report["void"]
            valid = [(Path(pth), data / "labels" / f"{Path(pth).stem}_P.png") for pth in report["valid_images"]]
            scores, seen = score(export, valid, codes, void)
            per_seed["fp32"].append({**scores, "seed": seed})
            if (export / "model.int8.onnx").is_file():
                per_seed["int8"].append({**score(export, valid, codes, void, "int8")[0], "seed": seed})
        shown = shown or seen
        print(
            f"{name} seed {seed}: mean IoU {scores['mean']:.3f}, Pole {scores['Pole']:.3f}, Car {scores['Car']:.3f}",
            flush=True,
        )
    row = {
        "label": RECIPES[name][1],
        "train_min": float(np.mean(minutes)),
        "seeds": [r["seed"] for r in per_seed["fp32"]],
        "per_seed": per_seed,
        "fp32": aggregate([{k: v for k, v in r.items() if k != "seed"} for r in per_seed["fp32"]]),
    }
    if per_seed["int8"] and len(per_seed["int8"]) == len(per_seed["fp32"]):
        row["int8"] = aggregate([{k: v for k, v in r.items() if k != "seed"} for r in per_seed["int8"]])
    return row, shown


def table_lines(rows: dict) -> list[str]:
    """The markdown table: one line per row and variant, class IoUs and mean IoU averaged over the row's seeds."""
    classes = [c for c in next(iter(rows.values()))[0]["fp32"] if c not in ("mean", "min", "max", "n")]
    L = [
        "| row | change | seeds | " + " | ".join(classes) + " | mean IoU | min-max over seeds | train min |",
        "|---|---|---|" + "---|" * (len(classes) + 3),
    ]
    for name, (row, _) in rows.items():
        for variant in ("fp32", "int8"):
            if variant in row:
                r = row[variant]
                same = f" (same model as {row['same_as']})" if row.get("same_as") else ""
                spread = f"{r['min']:.3f}-{r['max']:.3f}" if r["n"] > 1 else ""
                L.append(
                    f"| {name}{' int8' if variant == 'int8' else ''} | {row['label']}{same} | {r['n']} | "
                    + " | ".join(f"{r[c]:.3f}" for c in classes)
                    + f" | **{r['mean']:.3f}** | {spread} | {row['train_min']:.1f} |"
                )
    return L


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "camvid")
    p.add_argument("--n", type=int, default=150)
    p.add_argument(
        "--draw", type=int, default=0, help="the scene generator's seed (another draw of the same kind of scenes)"
    )
    p.add_argument("--epochs", type=int, nargs=2, default=[2, 6], metavar=("FROZEN", "UNFROZEN"))
    p.add_argument("--only", nargs="+", choices=list(RECIPES), help="rows to run (default: all)")
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[DEFAULT_SEED],
        help="fit seeds per row (each its own split, initialisation and crops); the table averages over them",
    )
    p.add_argument(
        "--screen",
        action="store_true",
        help="score by fit's own held-out evaluation (the served path in PyTorch), "
        "without exporting: no int8 rows, no load test",
    )
    p.add_argument("--tag", help="report name: camvid-<tag>-<date>")
    p.add_argument("--no-load", dest="load", action="store_false", help="skip the bentoml serve load test")
    a = p.parse_args(argv)
    data = a.work / (f"scenes-n{a.n}" + (f"-draw{a.draw}" if a.draw else ""))
    if not (data / "codes.txt").is_file():
        _run(
            [
                sys.executable,
                "-m",
                "training",
                "synth",
                "--layout",
                "camvid",
                "--out",
                str(data),
                "--n",
                str(a.n),
                "--size",
                "360",
                "480",
                "--seed",
                str(a.draw),
            ]
        )
    rows, trained = {}, []
    for name in a.only or list(RECIPES):
        same = _same_as(name, a.work)
        if same is not None:  # the same model as an earlier row: its scores, under this row's label
            if same in rows:
                rows[name] = ({**rows[same][0], "label": RECIPES[name][1], "same_as": same}, rows[same][1])
            continue
        if RECIPES[name][0] is None and name != "P":
            continue
        rows[name] = _score_row(name, data, a.work, a)
        trained.append(name)
        row = rows[name][0]
        print(
            f"{name}: {row['label']}: mean IoU {row['fp32']['mean']:.3f} over {row['fp32']['n']} seeds, Pole {row['fp32']['Pole']:.3f}",
            flush=True,
        )
    last = _folder(a.work, "export", trained[-1], DEFAULT_SEED) if trained else None
    served_load = (
        serve_load(
            last,
            [
                Path(p)
                for p in json.loads((_folder(a.work, "run", trained[-1], DEFAULT_SEED) / "report.json").read_text())[
                    "valid_images"
                ]
            ],
        )
        if a.load and not a.screen and last and last.is_dir()
        else None
    )
    tag = (
        (f"{a.tag}-" if a.tag else "")
        + (f"draw{a.draw}-" if a.draw else "")
        + ("" if a.epochs == [2, 6] else f"e{a.epochs[0]}+{a.epochs[1]}-")
    )
    out = ROOT / "benchmarks" / "results" / f"camvid-{tag}{dt.date.today().isoformat()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    scored = (
        "fit's own held-out evaluation (the served data path in PyTorch, no export)"
        if a.screen
        else "the served data path (exported ONNX, serving.Segmenter)"
    )
    L = [
        f"# CamVid-layout scenes: `fit` against the plain fastai recipe ({dt.datetime.now():%Y-%m-%d %H:%M})",
        "",
        f"{a.n} synthetic 360x480 street scenes (`python -m training synth --layout camvid --seed {a.draw}`); each seed of a row has its own "
        f"80/20 split, initialisation and crops, the same for every row; held-out scenes scored at 360x480 by {scored}, Void excluded; "
        f"{a.epochs[0]} frozen + {a.epochs[1]} unfrozen epochs each at 192x256 random crops; batch 8, fastai's decoder (no norm), lr 4e-3 then slice(2e-4, 2e-3) where the row does not say otherwise; "
        f"`python -m benchmarks.camvid {' '.join(argv if argv is not None else sys.argv[1:])}` on {cpu_features()}. A row differs from "
        "another by one factor; class IoUs and mean IoU are averaged over the row's seeds.",
        "",
    ] + table_lines(rows)
    if served_load:
        sl = served_load
        L += [
            "",
            f"Served ({trained[-1]}, `bentoml serve` defaults: {sl['workers']} workers, {sl['variant']}), 480x360 PNG uploads at concurrency "
            f"16: {sl['rps']:.1f} req/s, p50 {sl['p50']:.0f} ms, p99 {sl['p99']:.0f} ms, {sl['errors']} errors, "
            f"{sl['same']} of {sl['requests']} masks equal to the Python API's.",
        ]
    md = "\n".join(L) + f"\n\n![examples]({out.name}.png)\n"
    _figure({k: v for k, v in rows.items() if not v[0].get("same_as")}, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(
        json.dumps({**{k: v[0] for k, v in rows.items()}, "served_load": served_load}, indent=2, default=float)
    )
    print(md)
    return 0


def serve_load(export: Path, images: list[Path], concurrency: int = 16, n: int = 400) -> dict:
    """A real `bentoml serve` of `export` loaded with the held-out scenes as 480x360 PNGs."""
    import io

    import requests

    from loadtest import client
    from loadtest.server import served
    from serving import Segmenter

    payloads = []
    for p in images[:8]:
        b = io.BytesIO()
        Image.open(p).convert("RGB").resize((480, 360)).save(b, "PNG", compress_level=1)
        payloads.append(b.getvalue())
    seg = Segmenter.load(export, "cpu")
    expected = [seg.predict(data) for data in payloads]

    def same(i, r):
        return np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[i % len(payloads)])

    with served(export) as proc:
        info = requests.get(proc.url + "/model", timeout=10).json()
        results, wall = client.run(proc.url, payloads, concurrency=concurrency, n=n, check=same, warmup=concurrency)
    s = client.summary(results, wall)
    return {
        **s,
        "same": sum(r.ok for r in results),
        "workers": info["workers"],
        "variant": info["variant"],
        "concurrency": concurrency,
    }


def _figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from contract.metadata import class_colours

    pal = np.array(class_colours(8), np.uint8)
    names = list(rows)
    image, truth, _ = rows[names[0]][1][0]
    fig, axes = plt.subplots(1, 2 + len(names), figsize=(3.2 * (2 + len(names)), 2.8))
    axes[0].imshow(image), axes[0].set_title("image")
    axes[1].imshow(pal[truth]), axes[1].set_title("truth")
    for ax, name in zip(axes[2:], names):
        ax.imshow(pal[rows[name][1][0][2]]), ax.set_title(name)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
