"""Field augmentation: what another camera does to a photo, drawn at random for each training image.

`FieldShifts` is a fastai batch transform (training batches only, after fastai's lighting transforms and before
Normalize): a share `p` of the images of a batch is shifted, the rest left as they are; a shifted image gets each of
a haze, a blur, a lower resolution, another exposure, a colour cast, sensor noise and JPEG compression with
probability KIND_P (at least one of them), in the order a camera applies them (scene, optics, sensor, processing).
Masks are untouched: none of these moves a pixel. It runs on the batch tensor with torch (JPEG with Pillow's codec),
on whatever device the batch is on.

The ranges cover and exceed the strengths of the held-out shifts (contract.shifts) in both directions (brighter as
well as darker, cold casts as well as warm); the blur's sigma is given at 480 px wide and scaled with the training
width. (No `from __future__ import annotations` here: fastai dispatches `encodes` on its real annotation.)
"""

import math

import torch
import torch.nn.functional as F
from fastai.torch_core import TensorImage
from fastai.vision.augment import RandTransform

from .config import FIELD_KINDS as KINDS  # the order a camera applies them: scene, optics, sensor, processing

GAMMA = 2.2
RANGES = {
    "haze": (0.15, 0.6),  # share of an airlight blended in
    "airlight": (0.55, 0.9),
    "blur": (0.4, 2.2),  # Gaussian sigma, px at 480 px wide
    "lowres": (1.5, 5.0),  # downscale factor
    "exposure": (-2.0, 1.0),  # EV, in linear light
    "cast": (-0.4, 0.4),  # log gain per channel, in linear light
    "noise": (2.0, 18.0),  # Gaussian sigma, of 255
    "jpeg": (10, 70),  # quality
}
KIND_P = 0.35  # each kind's probability on a shifted image (at least one)
OPTICS = ("blur", "lowres", "noise", "jpeg")  # what a per-image standardised input (--input-norm image) cannot undo


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(3, H, W) -> the same, Gaussian-blurred (separable, reflected borders)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    y = F.pad(x[None], (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    return F.conv2d(y, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]


def _lowres(x: torch.Tensor, factor: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x[None], size=(max(1, round(h / factor)), max(1, round(w / factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """(3, H, W) -> the same through Pillow's JPEG codec at `quality` (libjpeg; torchvision's codec is deprecated)."""
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()).save(
        buf, "JPEG", quality=quality
    )
    out = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"))).permute(2, 0, 1)
    return out.to(x.device, x.dtype) / 255.0


def draw_kinds(n: int, p: float, device=None, kinds=KINDS) -> dict[str, torch.Tensor]:
    """Which of `kinds` each of `n` images gets: a share `p` of the images is shifted, each kind with probability
    KIND_P on those (at least one, drawn evenly when none was); {kind: (n,) bool} over all KINDS."""
    shifted = torch.rand(n, device=device) < p
    on = torch.rand(n, len(kinds), device=device) < KIND_P
    none = shifted & ~on.any(1)
    on[none, torch.randint(len(kinds), (int(none.sum()),), device=device)] = True
    on &= shifted.view(-1, 1)
    drawn = {k: on[:, i] for i, k in enumerate(kinds)}
    return {k: drawn.get(k, torch.zeros(n, dtype=torch.bool, device=device)) for k in KINDS}


def field_shifts(x: torch.Tensor, p: float, scale: float = 1.0, kinds=KINDS) -> torch.Tensor:
    """(N, 3, H, W) float in [0, 1] -> the same, a share `p` of the images shifted at random by `kinds` (see the
    module's docstring). `scale`: the training width over 480 (the blur's sigma scales with it)."""
    n, dev = x.shape[0], x.device
    on = draw_kinds(n, p, dev, kinds)
    x = x.clone()
    if on["haze"].any():
        t = _uniform(n, *RANGES["haze"], dev) * on["haze"]
        air = _uniform(n, *RANGES["airlight"], dev)
        x = x * (1 - t).view(-1, 1, 1, 1) + (air * t).view(-1, 1, 1, 1)
    for i in torch.nonzero(on["blur"]).flatten().tolist():
        x[i] = _blur(x[i], float(_uniform(1, *RANGES["blur"], dev)) * scale)
    for i in torch.nonzero(on["lowres"]).flatten().tolist():
        x[i] = _lowres(x[i], float(_uniform(1, *RANGES["lowres"], dev)))
    if on["exposure"].any() or on["cast"].any():
        gain = torch.exp2(_uniform(n, *RANGES["exposure"], dev) * on["exposure"]).view(-1, 1, 1, 1)
        cast = torch.exp(torch.empty(n, 3, device=dev).uniform_(*RANGES["cast"]) * on["cast"].view(-1, 1))
        x = (x.clamp(0, 1) ** GAMMA * gain * cast.view(n, 3, 1, 1)).clamp(0, 1) ** (1 / GAMMA)
    if on["noise"].any():
        sigma = _uniform(n, *RANGES["noise"], dev) * on["noise"] / 255.0
        x = x + torch.randn_like(x) * sigma.view(-1, 1, 1, 1)
    for i in torch.nonzero(on["jpeg"]).flatten().tolist():
        x[i] = _jpeg(x[i], int(torch.randint(RANGES["jpeg"][0], RANGES["jpeg"][1] + 1, (1,))))
    return x.clamp(0, 1)


class FieldShifts(RandTransform):
    """fastai batch transform: `field_shifts` on the images of training batches (masks untouched)."""

    split_idx, order = 0, 45  # training only; after fastai's lighting (40), before Normalize (99)

    def __init__(self, p: float = 0.5, scale: float = 1.0, kinds=KINDS):
        super().__init__(p=1.0)
        self.shift_p, self.scale, self.kinds = p, scale, tuple(kinds)

    def encodes(self, x: TensorImage):
        return TensorImage(field_shifts(x, self.shift_p, self.scale, self.kinds))
