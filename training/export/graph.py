"""The graph: fastai's U-Net wrapped with the image contract (uint8 NHWC in, mask and probabilities out) and
written as ONNX by the dynamo exporter (the legacy one as fallback), and the metadata that makes it self-describing."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExportError

TRACE_BATCH = 2  # the batch size the graph is traced with; parity runs at others
OPSET = 18


@dataclass(frozen=True)
class Tta:
    """Test-time augmentation inside the graph: each image at every scale of `scales` (resized bilinear, its scores
    resized back) and, with `flip`, its mirror image too (flipped back); the class probabilities of all passes
    averaged. Tta() is none: one pass at scale 1."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __bool__(self) -> bool:
        return self.flip or tuple(self.scales) != (1.0,)

    def __str__(self) -> str:
        """The metadata's `tta`: "none", "flip", "scales 1 1.5" or "flip, scales 1 1.5"."""
        parts = ["flip"] if self.flip else []
        if tuple(self.scales) != (1.0,):
            parts.append("scales " + " ".join(f"{s:g}" for s in self.scales))
        return ", ".join(parts) or "none"

    @property
    def work(self) -> float:
        """The model's work per image against no augmentation (pixels run through the network)."""
        return sum(s * s for s in self.scales) * (2 if self.flip else 1)


def as_tta(tta) -> Tta:
    """A Tta from what callers pass: a Tta, or a bool or None (True: flips, as `export_run(tta=True)` always
    meant)."""
    return tta if isinstance(tta, Tta) else Tta(flip=bool(tta))


def tta_probs(net, x, tta: Tta):
    """(N, C, H, W) class probabilities of `net` on the normalised batch `x`, averaged over `tta`'s passes; the
    graph and the parity gate's PyTorch reference both compute them here."""
    import torch
    import torch.nn.functional as F

    n, hw, total = x.shape[0], x.shape[2:], 0
    for s in tta.scales:
        xs = x if s == 1 else F.interpolate(x, scale_factor=float(s), mode="bilinear", align_corners=False)
        if tta.flip:
            both = torch.softmax(net(torch.cat([xs, xs.flip(3)])), dim=1)
            p = both[:n] + both[n:].flip(3)
        else:
            p = torch.softmax(net(xs), dim=1)
        total = total + (p if s == 1 else F.interpolate(p, size=hw, mode="bilinear", align_corners=False))
    return total / (len(tta.scales) * (2 if tta.flip else 1))


def inference_module(unet, mean, std, probs: bool, trace_hw: tuple[int, int] | None = None, tta=None):
    """nn.Module: uint8 NHWC image -> (uint8 mask, float32 probs). `tta`: test-time augmentation (a Tta; True for
    flips), the class probabilities of its passes averaged (tta_probs); flips run in one batch of 2N.
    fastai's ToTensorBase is replaced by Identity:
    it breaks the dynamo exporter ("Creating a new Tensor subclass TensorBase ... FakeTensor"). When the graph
    will be traced at `trace_hw` of at least 64 px a side, PixelShuffle becomes the same shuffle as two
    transposes (training.model.TransposedPixelShuffle: faster in ONNX Runtime); below that the deepest feature
    maps are 1 px at the trace, torch.export fixes their size, and the graph would fail at other sizes."""
    import torch
    from fastai.layers import ToTensorBase
    from torch import nn

    from ..model import any_size, transposed_pixel_shuffles

    tta = as_tta(tta)
    net = any_size(copy.deepcopy(unet).eval())
    if trace_hw is not None and min(trace_hw) >= 64:
        transposed_pixel_shuffles(net)
    for name, child in list(net.named_children()):
        if isinstance(child, ToTensorBase):
            setattr(net, name, nn.Identity())
    if hasattr(net, "layers"):
        net.layers = nn.ModuleList([nn.Identity() if isinstance(m, ToTensorBase) else m for m in net.layers])

    class ImageToMask(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

        def forward(self, image):
            x = image.permute(0, 3, 1, 2).to(torch.float32)
            x = (x - self.mean) / self.std  # == (x/255 - mean) / std
            scores = tta_probs(self.net, x, tta) if tta else self.net(x)
            mask = scores.argmax(dim=1).to(torch.uint8)
            if probs:
                return mask, scores if tta else torch.softmax(scores, dim=1)
            return mask

    return ImageToMask().eval()


def export_graph(module, size: tuple[int, int], path: Path, probs: bool, exporter: str, dynamic_hw: bool = True) -> str:
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
                prog = torch.onnx.export(
                    module,
                    (dummy,),
                    dynamo=True,
                    opset_version=OPSET,
                    input_names=["image"],
                    output_names=outputs,
                    dynamic_shapes={"image": dims},
                    external_data=False,
                    verbose=False,
                )
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
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=axes,
        )
    return "legacy"


def set_metadata(path: Path, meta: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(
        model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if v is not None}
    )
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict:
    """The model's metadata_props as a dict of strings (JSON values left as strings)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
