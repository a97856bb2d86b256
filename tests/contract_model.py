"""A tiny ONNX model that follows the exported-model contract, built with onnx.helper.

Per pixel, logits = (0.5, R, G) with R, G in 0..1: class 0 where both R and G are below half, otherwise
class 1 (red wins ties) or 2. `expected_mask` computes the same in numpy, so tests know every pixel.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASSES = ["background", "red", "green"]
COLOURS = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def expected_mask(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) uint8, the model's rule in numpy."""
    x = images.astype(np.float32) / np.float32(255.0)
    logits = np.stack([np.full(x.shape[:-1], 0.5, np.float32), x[..., 0], x[..., 1]], axis=1)
    return logits.argmax(axis=1).astype(np.uint8)


def make_contract_model(
    path: Path,
    size: int = 32,
    *,
    metadata: dict | None = None,
    input_type: int | None = None,
    probs: bool = True,
    drop_keys: tuple[str, ...] = (),
    background: float = 0.5,
) -> Path:
    """Write the model to `path` (a .onnx file); `metadata`, `input_type`, `drop_keys` let tests break the contract;
    `background` other than 0.5 makes a model that disagrees with `expected_mask` (a worse "variant")."""
    import onnx
    from onnx import TensorProto, helper

    in_type = TensorProto.UINT8 if input_type is None else input_type
    w = np.zeros((3, 3, 1, 1), np.float32)
    w[1, 0], w[2, 1] = 1.0, 1.0
    b = np.array([background, 0.0, 0.0], np.float32)
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "c255"], ["x"]),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "W", "B"], ["logits"]),
        helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
        helper.make_node("Cast", ["idx"], ["mask"], to=TensorProto.UINT8),
    ]
    outputs = [helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", size, size])]
    if probs:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
        outputs.append(helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3, size, size]))
    graph = helper.make_graph(
        nodes,
        "contract_model",
        [helper.make_tensor_value_info("image", in_type, ["N", size, size, 3])],
        outputs,
        initializer=[
            helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]),
            onnx.numpy_helper.from_array(w, "W"),
            onnx.numpy_helper.from_array(b, "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "contract": "seg-onnx/1",
        "classes": json.dumps(CLASSES),
        "colours": json.dumps(COLOURS),
        "input_size": json.dumps([size, size]),
        "dynamic_hw": "false",
        "mean": json.dumps([0, 0, 0]),
        "std": json.dumps([1, 1, 1]),
        "resize": "squish-bilinear",
        "encoder": "rule",
        "exporter": "onnx.helper",
        "variant": "fp32",
        "versions": "{}",
        "metrics": "{}",
        "created": "2026-01-01T00:00:00+00:00",
    }
    meta.update(metadata or {})
    for k in drop_keys:
        meta.pop(k, None)
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_int8_folder(folder: Path, background: float, exported: dict | None = None) -> Path:
    """A model folder with fp32 = the rule model, int8 = the rule model with its background bias at `background`
    (0.5: the same masks; higher: fewer foreground pixels, a worse "int8"), and a bundled held-out check whose
    truth is the rule itself (contract.metrics); `exported`: the scores the export host measured on it."""
    from contract.metrics import write_check

    folder = Path(folder)
    make_contract_model(folder / "model.onnx")
    make_contract_model(folder / "model.int8.onnx", metadata={"variant": "int8"}, background=background)
    images = np.random.default_rng(9).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    write_check(folder, images, expected_mask(images), CLASSES, None, "dice_fg", exported)
    return folder


def png_bytes(arr_or_im, fmt: str = "PNG", **kw) -> bytes:
    """An array or PIL image encoded as `fmt` bytes (for uploads in tests)."""
    import io

    from PIL import Image

    im = arr_or_im if isinstance(arr_or_im, Image.Image) else Image.fromarray(arr_or_im)
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def served_mask(im) -> np.ndarray:
    """What the service answers for a PIL image with the 32 px rule model: squished to 32 px (PIL
    bilinear), the rule's class probabilities upsampled bilinearly to the image's size, argmax."""
    from PIL import Image

    from serving.imaging import upsample_scores

    small = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR))[None]
    x = small.astype(np.float32) / np.float32(255.0)
    logits = np.stack([np.full(x.shape[:-1], 0.5, np.float32), x[..., 0], x[..., 1]], axis=1)[0]
    e = np.exp(logits - logits.max(axis=0))
    return upsample_scores(e / e.sum(axis=0), im.size, expected_mask(small)[0])
