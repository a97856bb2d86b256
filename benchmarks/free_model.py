"""The near-zero-cost model: an export's contract and metadata with next to no work inside.

    from benchmarks.free_model import build; build(SOURCE_DIR, OUT_DIR)   # what server_cost and profile_service do

What a GPU leaves of the real model's cost at these sizes is close to nothing; what remains is the
server's own work per request. This graph keeps the export's inputs, outputs and metadata (so every
server serves it exactly as the real model: same resize, same batching, same upsampling) and computes:
cast, /255, NHWC -> NCHW, a 15x15 box blur (so its masks are as smooth as a real model's, with as few
class boundaries), a 1x1 convolution to the export's classes, softmax and argmax. No weights are learnt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BLUR = 15


def build(source: Path, out: Path) -> Path:
    """Write `out`/model.onnx with the metadata of `source`/model.onnx (any export); returns the folder."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    src = onnx.load(str(Path(source) / "model.onnx"), load_external_data=False)
    props = {p.key: p.value for p in src.metadata_props}
    n = len(json.loads(props["classes"]))
    h, w = json.loads(props["input_size"])
    dynamic = props.get("dynamic_hw", "false").lower() == "true"
    hw = ["H", "W"] if dynamic else [h, w]
    rng = np.random.default_rng(0)
    mix = rng.normal(0, 8, (n, 3, 1, 1)).astype(np.float32)  # class logits from the colours: varied masks
    mix -= mix.mean(axis=1, keepdims=True)  # grey scores the same for every class: colour decides
    half = BLUR // 2
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Div", ["f", "c255"], ["x"]),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        # the blur as a separable average (two 1-D pools): a fraction of a millisecond per image
        helper.make_node(
            "AveragePool", ["nchw"], ["rows"], kernel_shape=[1, BLUR], pads=[0, half, 0, half], count_include_pad=0
        ),
        helper.make_node(
            "AveragePool", ["rows"], ["smooth"], kernel_shape=[BLUR, 1], pads=[half, 0, half, 0], count_include_pad=0
        ),
        helper.make_node("Conv", ["smooth", "mix"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0),
        helper.make_node("Cast", ["idx"], ["mask"], to=TensorProto.UINT8),
    ]
    graph = helper.make_graph(
        nodes,
        "near_zero_cost",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", *hw, 3])],
        [
            helper.make_tensor_value_info("mask", TensorProto.UINT8, ["N", *hw]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", n, *hw]),
        ],
        initializer=[helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]), numpy_helper.from_array(mix, "mix")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    helper.set_model_props(model, {**props, "variant": "fp32", "encoder": "near-zero-cost (benchmarks.free_model)"})
    onnx.checker.check_model(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out / "model.onnx"))
    return out
