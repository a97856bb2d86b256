"""FLOPs of an ONNX graph from its Conv/ConvTranspose/MatMul/Gemm shapes (multiply-add = 2 FLOPs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def count_flops(path: Path, batch: int = 1, hw: tuple[int, int] | None = None) -> int:
    """FLOPs of one forward pass at `batch`, from shape inference. The input's H and W: the graph's own
    (fixed-size models), or `hw` for an any-size graph (required then: its image is (N, H, W, 3))."""
    import onnx
    from onnx import shape_inference

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if not dims[0].dim_value:
        dims[0].dim_value = batch
    for i, d in enumerate(dims[1:3], start=1):
        if not d.dim_value:
            if hw is None:
                raise ValueError(f"{path}: the input's H and W are dynamic; pass hw=(H, W)")
            d.dim_value = hw[i - 1]
    model = shape_inference.infer_shapes(model)
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose"):
            w = inits.get(node.input[1]) or shapes.get(node.input[1])
            out = shapes.get(node.output[0])
            if not w or not out or 0 in out:
                continue
            if node.op_type == "Conv":  # out: N, Cout, H, W ; w: Cout, Cin/g, kh, kw
                total += 2 * int(np.prod(out)) * int(np.prod(w[1:]))
            else:  # ConvTranspose w: Cin, Cout/g, kh, kw, counted on the input
                x = shapes.get(node.input[0])
                total += 2 * int(np.prod(x)) * int(np.prod(w[1:])) if x else 0
        elif node.op_type in ("MatMul", "Gemm"):
            a, out = shapes.get(node.input[0]), shapes.get(node.output[0])
            if a and out:
                total += 2 * int(np.prod(out)) * a[-1]
    return total
