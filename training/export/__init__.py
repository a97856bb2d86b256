"""Export a trained run, or a fastai Learner, to a self-describing ONNX model (the contract in
exported_models/README.md).

The graph takes `image` uint8 (N, H, W, 3) RGB of any N, H and W, and returns `mask` uint8 (N, H, W)
and, optionally, `probs` float32 (N, C, H, W): cast, /255, normalisation with the training stats,
NHWC -> NCHW, the U-Net and argmax all live inside it, so serving does no tensor math. Nothing lands in
`out` until the export passed its gates. One module per concern: `graph` (the ONNX graph and its
metadata), `gates` (parity against fastai), `variants` (int8, fp16); this one packages them: sources
(a run folder or a Learner), the model folder, its samples, written in one rename.
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from contract.metrics import check_subset, write_check

from ..errors import ExportError
from .gates import PARITY_BATCHES, TIE_TOL, confidence_reference, load_images, load_truths, parity_gate, tie_pixels
from .graph import OPSET, Tta, as_tta, export_graph, inference_module, read_metadata, set_metadata
from .pickled import load_learner_pickle
from .variants import RECIPE, RECIPES, Recipe, bundled_scores, make_fp16, make_int8, quantize, write_variants

__all__ = [
    "ExportReport",
    "Source",
    "Tta",
    "export_run",
    "export_learner",
    "load_learner_pickle",
    "source_of",
    "read_metadata",
    "load_images",
    "tie_pixels",
    "make_int8",
    "make_fp16",
    "quantize",
    "Recipe",
    "RECIPE",
    "RECIPES",
    "PARITY_BATCHES",
    "TIE_TOL",
    "OPSET",
]

SAMPLES = 4  # held-out images kept beside the model, for the service's page (GET /ui)


@dataclass
class ExportReport:
    out: Path
    exporter: str
    parity: dict
    int8: dict | None = None
    fp16: dict | None = None


@dataclass
class Source:
    """What an export needs besides the model: classes, colours, normalisation, training scale (H, W),
    held-out images (parity, int8 check, samples), training images (int8 calibration), and what the
    metadata says about where the model came from."""

    codes: list
    colours: list
    mean: list
    std: list
    size: tuple[int, int]
    valid: list
    calib: list
    info: dict
    run: str = ""
    truths: list | None = None  # ground-truth masks (H, W) of `valid`, at their own size; None when unknown
    metric: str = "dice_fg"  # the task metric of the int8 accuracy rule (contract.metrics.task_metric)


def _new_folder(out) -> Path:
    """`out` as a Path, or a one-line ExportError when it exists: no model is ever overwritten."""
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists; pass a new --out (or remove it) so no model is overwritten")
    return out


def _square(size) -> list[int]:
    return [size, size] if isinstance(size, int) else list(size)


def export_run(
    run_dir: Path,
    out: Path,
    *,
    int8: bool = False,
    fp16: bool = False,
    probs: bool = True,
    exporter: str = "auto",
    dynamic_hw: bool = True,
    tta: Tta | bool = False,
) -> ExportReport:
    """Export the run in `run_dir` into the new folder `out` (model.onnx [+ model.int8.onnx, model.fp16.onnx]).
    `dynamic_hw` False: H and W fixed at the training size (squished uploads, as older exports)."""
    from contract.metrics import task_metric

    from ..data import read_mask
    from ..run import load_run

    run_dir, out = Path(run_dir), _new_folder(out)
    print(f"[1/4] loading the trained learner from {run_dir}", flush=True)
    learn, meta, ds = load_run(run_dir)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    cfg = meta["config"]
    masks = {str(p): m for p, m in ds.pairs}
    valid = [Path(p) for p in meta["valid_images"]] or [p for p, _ in ds.pairs[:4]]
    truths = [read_mask(masks[str(p)], ds.binary_255) for p in valid] if all(str(p) in masks for p in valid) else None
    src = Source(
        codes=meta["codes"],
        colours=meta["colours"],
        mean=meta["mean"],
        std=meta["std"],
        size=tuple(meta.get("size") or _square(cfg["size"])),
        valid=valid,
        truths=truths,
        metric=task_metric(meta.get("layout")),
        calib=_spread([Path(p) for p in meta["train_images"]] or [p for p, _ in ds.pairs], 32),
        info={
            "encoder": cfg["encoder"],
            "decoder_norm": cfg["decoder_norm"],
            "input_norm": cfg["input_norm"],
            "pretrained": "true" if cfg.get("pretrained") or cfg.get("weights") else "false",
            "crop": cfg.get("crop"),
            "void": meta.get("void"),
            "metrics": {
                k: v
                for k, v in report.get("metrics", {}).items()
                if k in ("dice_fg", "iou_fg", "pixel_acc", "dice", "iou", "scored_classes")
            },
        },
        run=str(run_dir),
    )
    return _export(
        learn, src, out, int8=int8, fp16=fp16, probs=probs, exporter=exporter, dynamic_hw=dynamic_hw, tta=tta
    )


def source_of(learn, images=None) -> Source:
    """A fastai segmentation Learner (live, or loaded from `learn.export()`) described from its own
    DataLoaders: classes from MaskBlock's codes (`AddMaskCodes`), normalisation from its `Normalize`,
    training size from its `Resize`; images: `images` (paths), else its validation items."""
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import Resize

    from contract.metadata import class_colours

    dls = learn.dls
    norm = next((t for t in dls.after_batch.fs if isinstance(t, Normalize)), None)
    mean = [float(v) for v in norm.mean.flatten()] if norm is not None else [0.0, 0.0, 0.0]
    std = [float(v) for v in norm.std.flatten()] if norm is not None else [1.0, 1.0, 1.0]
    resize = next((t for t in dls.after_item.fs if isinstance(t, Resize)), None)
    if resize is None:
        raise ExportError(
            "the Learner's DataLoaders have no Resize item transform, so its training size is unknown; "
            "build them with item_tfms=Resize(...) or export a run folder from `python -m training fit`"
        )
    size = (int(resize.size[1]), int(resize.size[0]))  # fastai keeps (W, H)
    if images is None:
        try:
            images = [Path(p) for p in dls.valid_ds.items][:16]
        except (AttributeError, TypeError, IndexError):
            images = []
    images = [Path(p) for p in images]
    if not images:
        raise ExportError(
            "no images to check the export against: pass images= (a few of the Learner's validation images; "
            "on the command line --images DIR)"
        )
    from fastai.vision.core import AddMaskCodes

    n_out = int(learn.model(_dummy(size)).shape[1])
    codes_tfm = next((t for t in dls.after_item.fs if isinstance(t, AddMaskCodes) and t.codes is not None), None)
    vocab = list(codes_tfm.codes) if codes_tfm is not None else []
    codes = [str(c) for c in vocab] if len(vocab) == n_out else ["background"] + [f"class_{i}" for i in range(1, n_out)]
    return Source(
        codes=codes,
        colours=class_colours(n_out),
        mean=mean,
        std=std,
        size=size,
        valid=images[:16],
        calib=images[:32],
        truths=_learner_truths(learn, images[:16]),
        info={
            "encoder": type(learn.model[0]).__name__ if hasattr(learn.model, "__getitem__") else "",
            "pretrained": "unknown",
            "metrics": {},
        },
    )


def _spread(items: list, n: int) -> list:
    """`n` of `items` spread evenly over them (video frames in order: the first 32 are one street)."""
    return [items[round(i * len(items) / n)] for i in range(n)] if len(items) > n else list(items)


def _learner_truths(learn, paths) -> list | None:
    """The ground-truth masks of `paths` through the Learner's own labelling (its DataBlock's get_y), or None
    when it cannot label them (then the int8 accuracy rule cannot be applied and int8 is not kept)."""
    import numpy as np

    try:
        labels = learn.dls.valid_ds.tls[1]
        return [np.asarray(labels.tfms(p)) for p in paths]
    except Exception:  # a get_y that does not resolve these files: no truth, said in export.json
        return None


def _dummy(size: tuple[int, int]):
    import torch

    return torch.zeros(1, 3, *size)


def export_learner(
    learn,
    out: Path,
    images=None,
    *,
    int8: bool = True,
    fp16: bool = False,
    probs: bool = True,
    exporter: str = "auto",
    dynamic_hw: bool = True,
    tta: Tta | bool = False,
) -> ExportReport:
    """Export a fastai segmentation Learner from a notebook (or one loaded from `learn.export()`) through the
    same export, parity and int8/fp16 gates as a run folder: `export_learner(learn, "exported_models/mine")`.
    `images`: image paths to check it on (default: the Learner's validation items)."""
    out = _new_folder(out)
    learn.model.eval()
    with torch_no_grad():
        src = source_of(learn, images)
    return _export(
        learn, src, out, int8=int8, fp16=fp16, probs=probs, exporter=exporter, dynamic_hw=dynamic_hw, tta=tta
    )


def torch_no_grad():
    import torch

    return torch.no_grad()


def _export(
    learn,
    src: Source,
    out: Path,
    *,
    int8: bool = False,
    fp16: bool = False,
    probs: bool = True,
    exporter: str = "auto",
    dynamic_hw: bool = True,
    tta: Tta | bool = False,
) -> ExportReport:
    """The export itself: graph, parity gate, metadata, variants and samples, written to the new folder `out` in one
    rename."""
    size = src.size
    if not dynamic_hw and any(v % 32 for v in size):
        raise ExportError(
            f"--fixed-size needs a training size in multiples of 32 (this model: {size[0]}x{size[1]}); export it "
            "any-size (the default)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        result, metadata = _graph_and_variants(learn, src, tmp, out, int8, fp16, probs, exporter, dynamic_hw, tta)
        _write_beside(src, tmp, result, metadata)
        tmp.rename(out)  # everything passed: into place in one rename
        tmp.mkdir()  # TemporaryDirectory's cleanup must not fail on the moved folder
    print(f"exported {out}/model.onnx ({result.exporter} exporter)", flush=True)
    return result


def _graph_and_variants(learn, src: Source, tmp: Path, out: Path, int8, fp16, probs, exporter, dynamic_hw, tta):
    """tmp/model.onnx through its gates (checker, parity), its metadata, and the int8 / fp16 variants asked for:
    (ExportReport, the metadata)."""
    import onnx

    size, valid = src.size, src.valid
    fp32 = tmp / "model.onnx"
    print(
        f"[2/4] exporting to ONNX (opset {OPSET}, input uint8 (N, H, W, 3), "
        + (f"any H and W; traced at {size[0]}x{size[1]})" if dynamic_hw else f"H, W = {size[0]}x{size[1]})"),
        flush=True,
    )
    used = export_graph(
        inference_module(learn.model, src.mean, src.std, probs, size, tta), size, fp32, probs, exporter, dynamic_hw
    )
    onnx.checker.check_model(str(fp32))
    parity = parity_gate(learn, fp32, valid, size, src.mean, src.std, dynamic_hw, tta)
    check = load_images(valid, size)
    truths = load_truths(src.truths, size) if src.truths is not None else None
    metadata = _metadata(src, used, parity, dynamic_hw)
    metadata["tta"] = str(as_tta(tta))
    metadata["confidence_reference"] = confidence_reference(fp32, check, truths)
    set_metadata(fp32, metadata)
    result = ExportReport(out=out, exporter=used, parity=parity)
    calib = load_images(src.calib, size) if int8 else None
    result.int8, result.fp16 = write_variants(fp32, tmp, metadata, int8=int8, fp16=fp16, check=check, calib=calib,
                                              truths=truths, codes=src.codes, void=src.info.get("void"),
                                              metric=src.metric)  # fmt: skip
    if truths is not None:  # the held-out check the service repeats on the CPU it runs on (contract.metrics)
        n = check_subset(len(check), size)
        exported = bundled_scores(tmp, check[:n], truths[:n], src) if (result.int8 or {}).get("kept") else None
        write_check(tmp, check[:n], truths[:n], src.codes, src.info.get("void"), src.metric, exported)
    return result, metadata


def _write_beside(src: Source, tmp: Path, result: ExportReport, metadata: dict) -> None:
    """The model folder's samples (for the page) and export.json (what the gates found)."""
    _write_samples(src.valid, tmp / "samples")
    report = {"exporter": result.exporter, "parity": result.parity, "int8": result.int8, "fp16": result.fp16,
              "run": src.run, "confidence_reference": metadata["confidence_reference"]}  # fmt: skip
    (tmp / "export.json").write_text(json.dumps(report, indent=2, default=str))


def _metadata(src: Source, exporter: str, parity: dict, dynamic_hw: bool) -> dict:
    """The fp32 graph's metadata_props: the contract's keys (exported_models/README.md)."""
    import onnx
    import onnxruntime

    from ..run import versions

    return {
        "contract": "seg-onnx/1",
        "classes": src.codes,
        "colours": src.colours,
        "input_size": list(src.size),  # the training scale
        "dynamic_hw": "true" if dynamic_hw else "false",
        "mean": src.mean,
        "std": src.std,
        "resize": "keep-aspect-short-side-bilinear, pad-32-reflect, scores-bilinear"
        if dynamic_hw
        else "squish-bilinear, scores-bilinear",
        **src.info,
        "exporter": exporter,
        "opset": str(OPSET),
        "variant": "fp32",
        "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "parity": parity,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _write_samples(paths, folder: Path, n: int = SAMPLES, side: int = 640) -> None:
    """A few held-out images beside the model (PNG, at most `side` px), for the service's page."""
    folder.mkdir()
    for i, p in enumerate(list(paths)[:n]):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            im.save(folder / f"sample_{i}.png")
