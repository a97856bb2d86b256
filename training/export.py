"""Export a trained run to a self-describing ONNX model (the contract in exported_models/README.md).

The graph takes `image` uint8 (N, H, W, 3) RGB of any N, H and W, and returns `mask` uint8 (N, H, W)
and, optionally, `probs` float32 (N, C, H, W): cast, /255, normalisation with the training stats,
NHWC -> NCHW, the U-Net and argmax all live inside it, so serving does no tensor math. fastai's U-Net
is made shape-agnostic first (training.model.any_size). Nothing lands in `--out` until the export
passed its gates: onnx checker, then ONNX Runtime against fastai: its own `get_preds` at the training
size, and its model at other shapes (transposed, non-multiples of 32, larger), each at batch sizes
other than the traced one: 100 % identical masks except numerical ties.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ExportError

TRACE_BATCH = 2  # the batch size the graph is traced with; parity runs at others
PARITY_BATCHES = (1, 3)
INT8_MIN_AGREEMENT = 0.995
TIE_TOL = 1e-4  # probability gap below which PyTorch and ONNX Runtime may pick either class
OPSET = 18


@dataclass
class ExportReport:
    out: Path
    exporter: str
    parity: dict
    int8: dict | None = None
    fp16: dict | None = None


def _wrap(unet, mean, std, probs: bool):
    """nn.Module: uint8 NHWC image -> (uint8 mask, float32 probs). fastai's ToTensorBase is replaced by Identity:
    it breaks the dynamo exporter ("Creating a new Tensor subclass TensorBase ... FakeTensor")."""
    import torch
    from fastai.layers import ToTensorBase
    from torch import nn

    from .model import any_size

    net = any_size(copy.deepcopy(unet).eval())
    for name, child in list(net.named_children()):
        if isinstance(child, ToTensorBase):
            setattr(net, name, nn.Identity())
    if hasattr(net, "layers"):
        net.layers = nn.ModuleList([nn.Identity() if isinstance(m, ToTensorBase) else m for m in net.layers])

    class Segmenter(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

        def forward(self, image):
            x = image.permute(0, 3, 1, 2).to(torch.float32)
            x = (x - self.mean) / self.std  # == (x/255 - mean) / std
            logits = self.net(x)
            mask = logits.argmax(dim=1).to(torch.uint8)
            if probs:
                return mask, torch.softmax(logits, dim=1)
            return mask

    return Segmenter().eval()


def _export_graph(module, size: tuple[int, int], path: Path, probs: bool, exporter: str, dynamic_hw: bool = True) -> str:
    """Write the ONNX graph with dynamic batch, height and width (traced at `size`; with `dynamic_hw`
    False, H and W fixed at `size`, as older exports were); returns the exporter that made it ("dynamo"
    or "legacy")."""
    import torch

    dummy = torch.randint(0, 256, (TRACE_BATCH, size[0], size[1], 3), dtype=torch.uint8)
    outputs = ["mask", "probs"] if probs else ["mask"]
    errors = []
    if exporter in ("auto", "dynamo"):
        try:
            dims = {0: torch.export.Dim("N", min=1, max=1024)}
            if dynamic_hw:
                dims.update({1: torch.export.Dim("H", min=16, max=16384), 2: torch.export.Dim("W", min=16, max=16384)})
            with torch.no_grad():
                prog = torch.onnx.export(module, (dummy,), dynamo=True, opset_version=OPSET, input_names=["image"],
                                         output_names=outputs, dynamic_shapes={"image": dims}, external_data=False,
                                         verbose=False)
            prog.save(str(path), external_data=False)
            return "dynamo"
        except Exception as exc:  # the legacy exporter is the documented fallback
            errors.append(f"dynamo: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
            if exporter == "dynamo":
                raise ExportError(f"dynamo export failed ({errors[0]}); try --exporter legacy") from None
            print(f"      dynamo exporter failed ({errors[0]}); falling back to the legacy exporter", flush=True)
    hw = {1: "H", 2: "W"} if dynamic_hw else {}
    axes = {"image": {0: "N", **hw}, "mask": {0: "N", **hw}}
    if probs:
        axes["probs"] = {0: "N", **({2: "H", 3: "W"} if dynamic_hw else {})}
    with torch.no_grad():
        torch.onnx.export(module, (dummy,), str(path), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=outputs, dynamic_axes=axes)
    return "legacy"


def _square(size) -> list[int]:
    return [size, size] if isinstance(size, int) else list(size)


def _set_metadata(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if v is not None})
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict:
    """The model's metadata_props as a dict of strings (JSON values left as strings)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(sess, images: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray | None]:
    masks, probs = [], []
    names = [o.name for o in sess.get_outputs()]
    for i in range(0, len(images), batch):
        out = sess.run(None, {"image": images[i : i + batch]})
        masks.append(out[0])
        if "probs" in names:
            probs.append(out[names.index("probs")])
    return np.concatenate(masks), (np.concatenate(probs) if probs else None)


def load_images(paths, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W, 3) uint8: each image squished to `size` with PIL bilinear, as training validation and serving do."""
    out = []
    for p in paths:
        with Image.open(p) as im:
            out.append(np.asarray(im.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)))
    return np.stack(out)


def _fastai_probs(learn, paths) -> np.ndarray:
    """fastai's own output for `paths`, through its validation pipeline: (N, C, H, W) float32."""
    dl = learn.dls.test_dl([Path(p) for p in paths], bs=4)
    preds, _ = learn.get_preds(dl=dl)
    return preds.numpy()


def tie_pixels(probs: np.ndarray, tol: float = TIE_TOL) -> np.ndarray:
    """(N, C, H, W) probabilities -> (N, H, W) bool: pixels whose two best classes are within `tol`,
    where the order of float operations (PyTorch vs ONNX Runtime) may decide the argmax either way."""
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) < tol


def check_parity(learn, onnx_path: Path, paths, size) -> dict:
    """ONNX Runtime vs fastai on `paths` at batch sizes PARITY_BATCHES.

    `identical` holds when every pixel's class is the same, except numerical ties (fastai's two best
    probabilities within TIE_TOL, far below any real export error); ties that flip are counted and reported."""
    row, ok = _compare(_session(onnx_path), load_images(paths, size), _fastai_probs(learn, paths))
    return {"images": len(paths), "batch_sizes": list(PARITY_BATCHES), "traced_batch": TRACE_BATCH, "tie_tolerance": TIE_TOL,
            **row, "identical": ok}


def _compare(sess, images: np.ndarray, ref: np.ndarray) -> tuple[dict, bool]:
    """ONNX Runtime on `images` at each of PARITY_BATCHES against fastai's probabilities `ref`: agreement,
    tie flips and the largest probability difference, and whether only numerical ties differ."""
    ref_mask, ties = ref.argmax(1).astype(np.uint8), tie_pixels(ref)
    row, ok = {}, True
    for b in PARITY_BATCHES:
        mask, probs = _run(sess, images, b)
        differ = mask != ref_mask
        row[f"agreement_b{b}"] = float(1.0 - differ.mean())
        row[f"tie_flips_b{b}"] = int((differ & ties).sum())
        ok &= not (differ & ~ties).any()
        if probs is not None:
            row["max_prob_diff"] = max(row.get("max_prob_diff", 0.0), float(np.abs(probs - ref).max()))
    return row, bool(ok)


def parity_shapes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """The (H, W) the parity gate checks besides the training size: transposed (or widened, if square),
    odd and not multiples of 32, and larger."""
    h, w = size
    other = (w, h) if h != w else (h, w + 32)
    odd = (max(h * 3 // 4 + 1, 65), max(w * 5 // 4 + 3, 67))  # deep 5x5 kernels need a few pixels at 1/32 scale
    return list(dict.fromkeys([other, odd, (h + 64, w + 96)]))


def _eager_probs(learn, images: np.ndarray, mean, std) -> np.ndarray:
    """fastai's model (as trained, not patched) in PyTorch on (N, H, W, 3) uint8: (N, C, H, W) float32 probabilities."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return torch.softmax(learn.model.eval()(x).float(), dim=1).numpy()


def check_shapes(learn, onnx_path: Path, paths, shapes, mean, std) -> dict:
    """ONNX Runtime vs fastai's model at each (H, W) of `shapes`, at batch sizes PARITY_BATCHES: the images
    squished to that shape (PIL bilinear); identical masks except numerical ties, as check_parity."""
    sess = _session(onnx_path)
    rows, ok = [], True
    for shape in shapes:
        images = load_images(paths, shape)
        row, same = _compare(sess, images, _eager_probs(learn, images, mean, std))
        rows.append({"shape": list(shape), **row})
        ok &= same
    return {"shapes": rows, "identical": bool(ok)}


def _throughput(path: Path, images: np.ndarray, batch: int = 8, repeats: int = 3) -> float:
    """Images per second of ONNX Runtime CPU on `images` (median of repeats)."""
    sess = _session(path)
    _run(sess, images[:batch], batch)  # warm-up
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        _run(sess, images, batch)
        rates.append(len(images) / (time.perf_counter() - t))
    return float(np.median(rates))


@contextlib.contextmanager
def _in_dir(path: Path):
    """quant_pre_process leaves temporary files in the working directory: run it somewhere disposable."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def float_nodes(model, size: tuple[int, int]) -> tuple[list[str], list[str]]:
    """The nodes the int8 recipe keeps in float: (BatchNormalization nodes, early encoder convs).

    - BatchNormalization: the skip connections' BNs in fastai's UnetBlock follow no conv, so they cannot
      be folded; quantizing their 1-D weights per channel is what printed "Axis 1 is out-of-range for
      weight ...bn.weight". They stay float: the warning is gone at its cause.
    - The encoder's convs at 1/2 and 1/4 of the input resolution (the stem and the first blocks, before
      the first decoder upsampling): measured on the demo model, they carry most of the int8 error
      (keeping them float: 99.43 % -> 99.70 % agreement; keeping the decoder float instead: 99.48 %)."""
    from onnx import shape_inference

    model = shape_inference.infer_shapes(_fixed_hw(model, size))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in list(model.graph.value_info) + list(model.graph.output)}
    nodes = list(model.graph.node)
    first_up = next((i for i, n in enumerate(nodes) if n.op_type == "DepthToSpace"), len(nodes))
    bns = [n.name for n in nodes if n.op_type == "BatchNormalization"]
    early = []
    for n in nodes[:first_up]:
        dims = shapes.get(n.output[0], [])
        if n.op_type == "Conv" and len(dims) == 4 and dims[2] and dims[2] * 4 >= size[0]:
            early.append(n.name)
    return bns, early


def _fixed_hw(model, size: tuple[int, int]):
    """A copy of `model` whose image input has H, W fixed to `size` (for shape inference)."""
    import copy as _copy

    m = _copy.deepcopy(model)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[1].dim_value, dims[2].dim_value = 1, size[0], size[1]
    return m


def make_int8(fp32: Path, out: Path, calib_images: np.ndarray, check_images: np.ndarray) -> dict:
    """Static QDQ int8 copy of `fp32` calibrated on `calib_images`; kept only if its masks agree with fp32's
    on >= INT8_MIN_AGREEMENT of the pixels of `check_images`.

    The recipe: weights per channel with 7-bit range (`reduce_range`: on CPUs without VNNI, ONNX
    Runtime's u8s8 kernels can saturate 16-bit intermediate sums, which cost ~0.5 % agreement here),
    activations uint8 MinMax, and the nodes of `float_nodes` kept in float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"image": calib_images[i : i + 1]} for i in range(len(calib_images))])

        def get_next(self):
            return next(self.it, None)

    fp32, out = Path(fp32).resolve(), Path(out).resolve()  # we chdir below
    with tempfile.TemporaryDirectory(prefix="int8-") as tmp, _in_dir(Path(tmp)):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        bns, early = float_nodes(onnx.load(str(pre)), calib_images.shape[1:3])
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=bns + early)
    ref, _ = _run(_session(fp32), check_images, 8)
    got, _ = _run(_session(out), check_images, 8)
    agreement = float((ref == got).mean())
    speed_fp32 = _throughput(fp32, check_images)
    speed_int8 = _throughput(out, check_images)
    kept = agreement >= INT8_MIN_AGREEMENT
    return {"agreement": agreement, "kept": kept, "fp32_img_s": speed_fp32, "int8_img_s": speed_int8,
            "speedup": speed_int8 / speed_fp32, "calibration_images": len(calib_images), "threshold": INT8_MIN_AGREEMENT,
            "recipe": {"reduce_range": True, "per_channel": True, "float_nodes": {"batchnorm": len(bns), "early_encoder_convs": len(early)}}}


def make_fp16(fp32: Path, out: Path, check_images: np.ndarray) -> dict:
    """fp16 copy for GPUs (inputs/outputs keep their types). Checked with onnx and, where ORT can, run on CPU."""
    import onnx
    from onnxruntime.transformers import float16

    # ONNX Runtime's converter: onnxconverter-common's took minutes on the any-size graph (its shape
    # arithmetic around every Resize). Cast stays fp32-typed: converted, our uint8 -> float Cast keeps a
    # float32 output type that no longer matches ("Type (tensor(float16)) of output arg ... does not match").
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + ["Cast"]
    model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, op_block_list=block)
    # a tensor feeding two blocked nodes (the logits: ArgMax and Softmax) gets two identical Cast nodes
    seen, unique = set(), []
    for node in model.graph.node:
        key = (node.name, node.op_type, tuple(node.input), tuple(node.output))
        if key not in seen:
            seen.add(key)
            unique.append(node)
    del model.graph.node[:]
    model.graph.node.extend(unique)
    from onnxruntime.transformers.onnx_model import OnnxModel

    OnnxModel(model).topological_sort()  # the inserted Casts are appended out of order
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    result = {"checked": True, "gpu_speed": "unmeasured here (no GPU)"}
    try:
        ref, _ = _run(_session(fp32), check_images, 4)
        got, _ = _run(_session(out), check_images, 4)
        result["cpu_agreement"] = float((ref == got).mean())
    except Exception as exc:  # some fp16 kernels exist only on GPU providers
        result["cpu_run"] = f"ONNX Runtime CPU could not run it: {exc.__class__.__name__}"
    return result


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


SAMPLES = 4  # held-out images kept beside the model, for the service's page (GET /ui)


def export_run(run_dir: Path, out: Path, *, int8: bool = False, fp16: bool = False, probs: bool = True, exporter: str = "auto",
               dynamic_hw: bool = True) -> ExportReport:
    """Export the run in `run_dir` into the new folder `out` (model.onnx [+ model.int8.onnx, model.fp16.onnx]).
    `dynamic_hw` False: H and W fixed at the training size (squished uploads, as older exports)."""
    from .train import load_run

    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists; pass a new --out (or remove it) so no model is overwritten")
    print(f"[1/4] loading the trained learner from {run_dir}", flush=True)
    learn, meta, ds = load_run(run_dir)
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    cfg = meta["config"]
    src = Source(codes=meta["codes"], colours=meta["colours"], mean=meta["mean"], std=meta["std"],
                 size=tuple(meta.get("size") or _square(cfg["size"])),
                 valid=[Path(p) for p in meta["valid_images"]] or [p for p, _ in ds.pairs[:4]],
                 calib=([Path(p) for p in meta["train_images"]] or [p for p, _ in ds.pairs])[:32],
                 info={"encoder": cfg["encoder"], "pretrained": "true" if cfg.get("pretrained") or cfg.get("weights") else "false",
                       "crop": cfg.get("crop"), "void": meta.get("void"),
                       "metrics": {k: v for k, v in report.get("metrics", {}).items() if k in ("dice_fg", "iou_fg", "pixel_acc", "dice", "iou", "scored_classes")}},
                 run=str(run_dir))
    return export_source(learn, src, out, int8=int8, fp16=fp16, probs=probs, exporter=exporter, dynamic_hw=dynamic_hw)


def source_of(learn, images=None) -> Source:
    """A fastai segmentation Learner (live, or loaded from `learn.export()`) described from its own
    DataLoaders: classes from MaskBlock's codes (`AddMaskCodes`), normalisation from its `Normalize`,
    training size from its `Resize`; images: `images` (paths), else its validation items."""
    from fastai.data.transforms import Normalize
    from fastai.vision.augment import Resize

    from .train import class_colours

    dls = learn.dls
    norm = next((t for t in dls.after_batch.fs if isinstance(t, Normalize)), None)
    mean = [float(v) for v in norm.mean.flatten()] if norm is not None else [0.0, 0.0, 0.0]
    std = [float(v) for v in norm.std.flatten()] if norm is not None else [1.0, 1.0, 1.0]
    resize = next((t for t in dls.after_item.fs if isinstance(t, Resize)), None)
    if resize is None:
        raise ExportError("the Learner's DataLoaders have no Resize item transform, so its training size is unknown; "
                          "build them with item_tfms=Resize(...) or export a run folder from `python -m training fit`")
    size = (int(resize.size[1]), int(resize.size[0]))  # fastai keeps (W, H)
    if images is None:
        try:
            images = [Path(p) for p in dls.valid_ds.items][:16]
        except (AttributeError, TypeError, IndexError):
            images = []
    images = [Path(p) for p in images]
    if not images:
        raise ExportError("no images to check the export against: pass images= (a few of the Learner's validation images; "
                          "on the command line --images DIR)")
    from fastai.vision.core import AddMaskCodes

    n_out = int(learn.model(_dummy(size)).shape[1])
    codes_tfm = next((t for t in dls.after_item.fs if isinstance(t, AddMaskCodes) and t.codes is not None), None)
    vocab = list(codes_tfm.codes) if codes_tfm is not None else []
    codes = [str(c) for c in vocab] if len(vocab) == n_out else ["background"] + [f"class_{i}" for i in range(1, n_out)]
    return Source(codes=codes, colours=class_colours(n_out), mean=mean, std=std, size=size, valid=images[:16], calib=images[:32],
                  info={"encoder": type(learn.model[0]).__name__ if hasattr(learn.model, "__getitem__") else "", "pretrained": "unknown",
                        "metrics": {}})


def _dummy(size: tuple[int, int]):
    import torch

    return torch.zeros(1, 3, *size)


def export_learner(learn, out: Path, images=None, *, int8: bool = True, fp16: bool = False, probs: bool = True,
                   exporter: str = "auto", dynamic_hw: bool = True) -> ExportReport:
    """Export a fastai segmentation Learner from a notebook (or one loaded from `learn.export()`) through the
    same export, parity and int8/fp16 gates as a run folder: `export_learner(learn, "exported_models/mine")`.
    `images`: image paths to check it on (default: the Learner's validation items)."""
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists; pass a new --out (or remove it) so no model is overwritten")
    learn.model.eval()
    with torch_no_grad():
        src = source_of(learn, images)
    return export_source(learn, src, out, int8=int8, fp16=fp16, probs=probs, exporter=exporter, dynamic_hw=dynamic_hw)


def torch_no_grad():
    import torch

    return torch.no_grad()


def load_learner_pickle(path: Path, trust: bool):
    """fastai's `load_learner` on a `learn.export()` file. Unpickling runs code from the file, so it needs
    `trust` (the CLI's --trust-pickle); errors are one line."""
    path = Path(path)
    if not trust:
        raise ExportError(f"{path}: loading a pickled Learner runs code stored in the file; if you made it (or trust who did), "
                          "add --trust-pickle")
    if not path.is_file():
        raise ExportError(f"{path}: file not found; pass the .pkl written by learn.export()")
    from fastai.learner import load_learner

    try:
        return load_learner(path, cpu=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise ExportError(f"{path}: fastai could not load it ({exc.__class__.__name__}: {first}); it must come from learn.export() "
                          "with the same fastai version, and any custom functions it uses must be importable") from None


def export_source(learn, src: Source, out: Path, *, int8: bool = False, fp16: bool = False, probs: bool = True, exporter: str = "auto",
                  dynamic_hw: bool = True) -> ExportReport:
    """The export itself: graph, parity gate, metadata, variants and samples, written to `out` in one rename."""
    import onnx
    import onnxruntime

    from .train import versions

    out = Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists; pass a new --out (or remove it) so no model is overwritten")
    size, valid = src.size, src.valid
    if not dynamic_hw and any(v % 32 for v in size):
        raise ExportError(f"--fixed-size needs a training size in multiples of 32 (this model: {size[0]}x{size[1]}); export it any-size (the default)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "model.onnx"
        print(f"[2/4] exporting to ONNX (opset {OPSET}, input uint8 (N, H, W, 3), "
              + (f"any H and W; traced at {size[0]}x{size[1]})" if dynamic_hw else f"H, W = {size[0]}x{size[1]})"), flush=True)
        module = _wrap(learn.model, src.mean, src.std, probs)
        used = _export_graph(module, size, fp32, probs, exporter, dynamic_hw)
        onnx.checker.check_model(str(fp32))
        shapes = parity_shapes(size) if dynamic_hw else []
        print(f"[3/4] parity: ONNX Runtime vs fastai on {len(valid)} held-out images, batch sizes {PARITY_BATCHES}: get_preds at "
              f"{size[0]}x{size[1]}" + (", its model at " + ", ".join(f"{h}x{w}" for h, w in shapes) if shapes else ""), flush=True)
        parity = check_parity(learn, fp32, valid, size)
        parity["other_shapes"] = check_shapes(learn, fp32, valid, shapes, src.mean, src.std)
        rows = [parity] + parity["other_shapes"]["shapes"]
        if not (parity["identical"] and parity["other_shapes"]["identical"]):
            worst = min(r[f"agreement_b{b}"] for r in rows for b in PARITY_BATCHES)
            raise ExportError(f"parity failed: ONNX masks match fastai on {worst:.4%} of pixels, and not only on numerical ties (need 100 %); nothing written to {out}")
        flips = sum(r[f"tie_flips_b{b}"] for r in rows for b in PARITY_BATCHES)
        print("      masks identical on 100 % of pixels at every shape and batch size" + (f" but {flips} numerical tie(s) (top-2 gap < {TIE_TOL:g})" if flips else "")
              + f"; largest probability difference {max(r.get('max_prob_diff', 0) for r in rows):.2e}", flush=True)
        metadata = {
            "contract": "seg-onnx/1",
            "classes": src.codes,
            "colours": src.colours,
            "input_size": list(size),  # the training scale
            "dynamic_hw": "true" if dynamic_hw else "false",
            "mean": src.mean,
            "std": src.std,
            "resize": "keep-aspect-short-side-bilinear, pad-32-reflect, scores-bilinear" if dynamic_hw else "squish-bilinear, scores-bilinear",
            **src.info,
            "exporter": used,
            "opset": str(OPSET),
            "variant": "fp32",
            "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
            "parity": parity,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _set_metadata(fp32, metadata)
        result = ExportReport(out=out, exporter=used, parity=parity)
        print("[4/4] variants" + (": int8" if int8 else "") + (" fp16" if fp16 else "") + ("" if int8 or fp16 else ": none asked"), flush=True)
        check = load_images(valid, size)
        if int8:
            result.int8 = make_int8(fp32, tmp / "model.int8.onnx", load_images(src.calib, size), check)
            if result.int8["kept"]:
                _set_metadata(tmp / "model.int8.onnx", {**metadata, "variant": "int8", "int8": result.int8})
                print(f"      int8: {result.int8['agreement']:.2%} agreement with fp32, {result.int8['speedup']:.2f}x faster", flush=True)
            else:
                (tmp / "model.int8.onnx").unlink()
                print(f"      int8 dropped: {result.int8['agreement']:.2%} agreement < {INT8_MIN_AGREEMENT:.1%}", flush=True)
        if fp16:
            result.fp16 = make_fp16(fp32, tmp / "model.fp16.onnx", check)
            _set_metadata(tmp / "model.fp16.onnx", {**metadata, "variant": "fp16"})
            print(f"      fp16 written (GPU speed unmeasured here); CPU check: {result.fp16.get('cpu_agreement', result.fp16.get('cpu_run'))}", flush=True)
        _write_samples(valid, tmp / "samples")
        (tmp / "export.json").write_text(json.dumps({"exporter": used, "parity": parity, "int8": result.int8, "fp16": result.fp16,
                                                     "run": src.run}, indent=2, default=str))
        # everything passed: move into place in one rename
        tmp.rename(out)
        # TemporaryDirectory's cleanup must not fail on the moved folder
        tmp.mkdir()
    print(f"exported {out}/model.onnx ({used} exporter)", flush=True)
    return result


def _write_samples(paths, folder: Path, n: int = SAMPLES, side: int = 640) -> None:
    """A few held-out images beside the model (PNG, at most `side` px), for the service's page."""
    folder.mkdir()
    for i, p in enumerate(list(paths)[:n]):
        with Image.open(p) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            im.save(folder / f"sample_{i}.png")
