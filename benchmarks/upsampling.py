"""The cost of masks at the image's own size: class scores upsampled before the argmax, against nearest
neighbour on class ids, at 0.3, 2 and 12 Mpx outputs.

    python -m benchmarks.upsampling [--classes 7] [--from 352 480] [--classes 3 --from 128 128]

Four ways from a model output (C class probabilities at the model's scale) to the full-size mask:
- nearest on ids: the argmax at model scale, resized with PIL nearest (the previous service);
- scores, runtime (ours): serving.imaging.upsample_scores, bilinear only where the 4 source pixels
  disagree on the class, exact;
- scores, in the graph: an ONNX graph (Resize linear half-pixel + ArgMax) run by ONNX Runtime, as if
  the upsampling were exported inside the model;
- scores, full numpy/PIL: every class channel resized by PIL (mode F, bilinear), then argmax.
The probabilities are smooth random fields with class boundaries like a real model's. Median of
repeats, ms; prints a table and writes benchmarks/results/upsampling-<date>.md/.json. Default: two
sources, the CamVid-layout model's (7 classes at 352x480) and the demo model's (3 classes at 128x128).
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
from PIL import Image

from benchmarks import write_report

SIZES = {"0.3 Mpx (640x480)": (640, 480), "2 Mpx (1632x1224)": (1632, 1224), "12 Mpx (4000x3000)": (4000, 3000)}


def _probs(c: int, h: int, w: int) -> np.ndarray:
    import torch

    g = torch.Generator().manual_seed(0)
    logits = torch.nn.functional.interpolate(
        torch.randn(1, c, max(2, h // 24), max(2, w // 24), generator=g), size=(h, w), mode="bilinear"
    )
    return torch.softmax(logits * 4, 1)[0].numpy()


def _graph(c: int):
    """ONNX Runtime session: probs (1, C, h, w) + sizes (4,) int64 -> (H, W) uint8 argmax of the bilinear resize."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node(
            "Resize", ["probs", "", "", "sizes"], ["up"], mode="linear", coordinate_transformation_mode="half_pixel"
        ),
        helper.make_node("ArgMax", ["up"], ["idx"], axis=1, keepdims=0),
        helper.make_node("Cast", ["idx"], ["mask"], to=TensorProto.UINT8),
    ]
    g = helper.make_graph(
        nodes,
        "upsample",
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, c, "h", "w"]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        ],
        [helper.make_tensor_value_info("mask", TensorProto.UINT8, [1, "H", "W"])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def measure(
    classes: int = 7, source_hw: tuple[int, int] = (352, 480), repeats: int = 3, sizes: dict | None = None
) -> dict:
    """{size label: {method: ms}} and the share of pixels where the methods' masks differ from nearest."""
    from serving.imaging import resize_mask, upsample_scores

    h, w = source_hw
    probs = _probs(classes, h, w)
    ids = probs.argmax(0).astype(np.uint8)
    sess = _graph(classes)
    rows = {}
    for label, (W, H) in (sizes or SIZES).items():
        sizes = np.array([1, classes, H, W], np.int64)
        methods = {
            "nearest on ids": lambda: resize_mask(ids, (W, H)),
            "scores, runtime (ours)": lambda: upsample_scores(probs, (W, H), ids),
            "scores, in the graph (ORT Resize + ArgMax)": lambda: sess.run(
                ["mask"], {"probs": probs[None], "sizes": sizes}
            )[0][0],
            "scores, full numpy/PIL": lambda: np.stack(
                [np.asarray(Image.fromarray(p, "F").resize((W, H), Image.BILINEAR)) for p in probs]
            ).argmax(0),
        }
        n = 1 if W * H > 5e6 else repeats
        rows[label] = {name: _time(fn, n) for name, fn in methods.items()}
        sharp, near = upsample_scores(probs, (W, H), ids), resize_mask(ids, (W, H))
        graph = sess.run(["mask"], {"probs": probs[None], "sizes": sizes})[0][0]
        rows[label]["pixels differing from nearest"] = float((sharp != near).mean())
        rows[label]["ours vs in-graph agreement"] = float((sharp == graph).mean())
    return {"classes": classes, "source_hw": list(source_hw), "rows": rows}


def to_markdown(r: dict) -> str:
    methods = [k for k in next(iter(r["rows"].values())) if not k.startswith(("pixels", "ours vs"))]
    L = [
        f"From {r['classes']} class probabilities at {r['source_hw'][0]}x{r['source_hw'][1]} (one CPU thread, median ms):",
        "",
        "| output | " + " | ".join(methods) + " | pixels differing from nearest | ours = in-graph |",
        "|---|" + "---|" * (len(methods) + 2),
    ]
    for label, row in r["rows"].items():
        L.append(
            f"| {label} | "
            + " | ".join(f"{row[m]:.1f}" for m in methods)
            + f" | {row['pixels differing from nearest']:.2%} | {row['ours vs in-graph agreement']:.4%} |"
        )
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--classes", type=int, action="append", help="number of classes (repeat with --from for several sources)"
    )
    p.add_argument("--from", dest="source", type=int, nargs=2, action="append", metavar=("H", "W"))
    a = p.parse_args(argv)
    classes, sources = a.classes or [7, 3], a.source or [[352, 480], [128, 128]]
    if len(classes) != len(sources):
        p.error("give as many --classes as --from")
    results, md = (
        [],
        [
            f"# Masks at the image's own size: the cost ({dt.datetime.now():%Y-%m-%d %H:%M})",
            "",
            "`python -m benchmarks.upsampling`: nearest neighbour on class ids (the previous service) against class "
            "scores upsampled bilinearly before the argmax, three ways (see the script's docstring).",
            "",
        ],
    )
    for c, hw in zip(classes, sources):
        results.append(measure(c, tuple(hw)))
        md.append(to_markdown(results[-1]))
    write_report("upsampling", "\n".join(md), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
