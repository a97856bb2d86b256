"""Export a trained run to a self-describing ONNX model (the contract in exported_models/README.md).

The graph takes `image` uint8 (N, H, W, 3) RGB and returns `mask` uint8 (N, H, W) and, optionally,
`probs` float32 (N, C, H, W): cast, /255, normalisation with the training stats, NHWC -> NCHW, the
U-Net and argmax all live inside it, so serving does no tensor math. Nothing lands in `--out` until
the export passed its gates: onnx checker, then ONNX Runtime against fastai's own `get_preds` on
held-out images at batch sizes other than the traced one (100 % identical masks).
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

    net = copy.deepcopy(unet).eval()
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


def _export_graph(module, size: tuple[int, int], path: Path, probs: bool, exporter: str) -> str:
    """Write the ONNX graph with a dynamic batch; returns the exporter that made it ("dynamo" or "legacy")."""
    import torch

    dummy = torch.randint(0, 256, (TRACE_BATCH, size[0], size[1], 3), dtype=torch.uint8)
    outputs = ["mask", "probs"] if probs else ["mask"]
    errors = []
    if exporter in ("auto", "dynamo"):
        try:
            batch = torch.export.Dim("N", min=1, max=1024)
            with torch.no_grad():
                prog = torch.onnx.export(module, (dummy,), dynamo=True, opset_version=OPSET, input_names=["image"],
                                         output_names=outputs, dynamic_shapes={"image": {0: batch}}, external_data=False,
                                         verbose=False)
            prog.save(str(path), external_data=False)
            return "dynamo"
        except Exception as exc:  # the legacy exporter is the documented fallback
            errors.append(f"dynamo: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
            if exporter == "dynamo":
                raise ExportError(f"dynamo export failed ({errors[0]}); try --exporter legacy") from None
            print(f"      dynamo exporter failed ({errors[0]}); falling back to the legacy exporter", flush=True)
    axes = {"image": {0: "N"}, "mask": {0: "N"}}
    if probs:
        axes["probs"] = {0: "N"}
    with torch.no_grad():
        torch.onnx.export(module, (dummy,), str(path), dynamo=False, opset_version=OPSET, input_names=["image"],
                          output_names=outputs, dynamic_axes=axes)
    return "legacy"


def _set_metadata(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()})
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
    ref = _fastai_probs(learn, paths)
    ref_mask = ref.argmax(1).astype(np.uint8)
    ties = tie_pixels(ref)
    images = load_images(paths, size)
    sess = _session(onnx_path)
    result = {"images": len(paths), "batch_sizes": list(PARITY_BATCHES), "traced_batch": TRACE_BATCH, "tie_tolerance": TIE_TOL}
    ok = True
    for b in PARITY_BATCHES:
        mask, probs = _run(sess, images, b)
        differ = mask != ref_mask
        result[f"agreement_b{b}"] = float(1.0 - differ.mean())
        result[f"tie_flips_b{b}"] = int((differ & ties).sum())
        ok &= not (differ & ~ties).any()
        if probs is not None:
            result["max_prob_diff"] = max(result.get("max_prob_diff", 0.0), float(np.abs(probs - ref).max()))
    result["identical"] = bool(ok)
    return result


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


def make_int8(fp32: Path, out: Path, calib_images: np.ndarray, check_images: np.ndarray) -> dict:
    """Static QDQ per-channel int8 copy of `fp32`, calibrated on `calib_images`; kept only if it agrees >= 99.5 %."""
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
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    ref, _ = _run(_session(fp32), check_images, 8)
    got, _ = _run(_session(out), check_images, 8)
    agreement = float((ref == got).mean())
    speed_fp32 = _throughput(fp32, check_images)
    speed_int8 = _throughput(out, check_images)
    kept = agreement >= INT8_MIN_AGREEMENT
    return {"agreement": agreement, "kept": kept, "fp32_img_s": speed_fp32, "int8_img_s": speed_int8,
            "speedup": speed_int8 / speed_fp32, "calibration_images": len(calib_images), "threshold": INT8_MIN_AGREEMENT}


def make_fp16(fp32: Path, out: Path, check_images: np.ndarray) -> dict:
    """fp16 copy for GPUs (inputs/outputs keep their types). Checked with onnx and, where ORT can, run on CPU."""
    import onnx
    from onnxconverter_common import float16

    # Cast stays fp32-typed: converted, our uint8 -> float Cast keeps a float32 output type that no longer
    # matches and ONNX Runtime refuses the file ("Type (tensor(float16)) of output arg ... does not match").
    block = list(float16.DEFAULT_OP_BLOCK_LIST) + ["Cast"]
    model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True, op_block_list=block)
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


def export_run(run_dir: Path, out: Path, *, int8: bool = False, fp16: bool = False, probs: bool = True, exporter: str = "auto") -> ExportReport:
    """Export the run in `run_dir` into the new folder `out` (model.onnx [+ model.int8.onnx, model.fp16.onnx])."""
    import onnx
    import onnxruntime

    from .train import load_run, versions

    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists; pass a new --out (or remove it) so no model is overwritten")
    print(f"[1/4] loading the trained learner from {run_dir}", flush=True)
    learn, meta, ds = load_run(run_dir)
    size = (meta["config"]["size"], meta["config"]["size"])
    valid = [Path(p) for p in meta["valid_images"]] or [p for p, _ in ds.pairs[:4]]
    train = [Path(p) for p in meta["train_images"]] or [p for p, _ in ds.pairs]
    report = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        fp32 = tmp / "model.onnx"
        print(f"[2/4] exporting to ONNX (opset {OPSET}, input uint8 (N, {size[0]}, {size[1]}, 3))", flush=True)
        module = _wrap(learn.model, meta["mean"], meta["std"], probs)
        used = _export_graph(module, size, fp32, probs, exporter)
        onnx.checker.check_model(str(fp32))
        print(f"[3/4] parity: ONNX Runtime vs fastai get_preds on {len(valid)} held-out images, batch sizes {PARITY_BATCHES}", flush=True)
        parity = check_parity(learn, fp32, valid, size)
        if not parity["identical"]:
            worst = min(parity[f"agreement_b{b}"] for b in PARITY_BATCHES)
            raise ExportError(f"parity failed: ONNX masks match fastai on {worst:.4%} of pixels, and not only on numerical ties (need 100 %); nothing written to {out}")
        flips = sum(parity[f"tie_flips_b{b}"] for b in PARITY_BATCHES)
        print("      masks identical on 100 % of pixels" + (f" but {flips} numerical tie(s) (top-2 gap < {TIE_TOL:g})" if flips else "")
              + f"; largest probability difference {parity.get('max_prob_diff', 0):.2e}", flush=True)
        metadata = {
            "contract": "seg-onnx/1",
            "classes": meta["codes"],
            "colours": meta["colours"],
            "input_size": list(size),
            "dynamic_hw": "false",
            "mean": meta["mean"],
            "std": meta["std"],
            "resize": "squish-bilinear",
            "encoder": meta["config"]["encoder"],
            "pretrained": "true" if meta["config"].get("pretrained") or meta["config"].get("weights") else "false",
            "exporter": used,
            "opset": str(OPSET),
            "variant": "fp32",
            "versions": {**versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
            "metrics": {k: v for k, v in report.get("metrics", {}).items() if k in ("dice_fg", "iou_fg", "pixel_acc", "dice", "iou")},
            "parity": parity,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _set_metadata(fp32, metadata)
        result = ExportReport(out=out, exporter=used, parity=parity)
        print("[4/4] variants" + (": int8" if int8 else "") + (" fp16" if fp16 else "") + ("" if int8 or fp16 else ": none asked"), flush=True)
        check = load_images(valid, size)
        if int8:
            calib = load_images(train[:32], size)
            result.int8 = make_int8(fp32, tmp / "model.int8.onnx", calib, check)
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
        (tmp / "export.json").write_text(json.dumps({"exporter": used, "parity": parity, "int8": result.int8, "fp16": result.fp16,
                                                     "run": str(run_dir)}, indent=2, default=str))
        # everything passed: move into place in one rename
        tmp.rename(out)
        # TemporaryDirectory's cleanup must not fail on the moved folder
        tmp.mkdir()
    print(f"exported {out}/model.onnx ({used} exporter)", flush=True)
    return result
