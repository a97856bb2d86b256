"""The model folder's names and defaults, and what an exported model says about itself (its ONNX metadata).

The keys are documented in exported_models/README.md; the export writes them (training/export/graph.py) and
`ModelMeta.from_props` reads them back, for the service, the Python API and the model store alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_MODEL_DIR = Path("exported_models/default")  # what `make serve`, predict, the demo and the image use
DEFAULT_BATCH_SIZE = 8  # model inputs per ONNX Runtime call: the service, predict, the Python API
VARIANT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}
REQUIRED_KEYS = ("classes", "colours", "input_size")
# the image files training reads and predict looks for in a folder (the formats the service decodes)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

# One colour per class for plots, palette PNGs and the exported metadata (background black).
PALETTE = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]  # fmt: skip


def class_colours(n: int) -> list[list[int]]:
    """`n` distinct RGB colours, background first; beyond the palette, deterministic pseudo-random ones."""
    rng = np.random.default_rng(12345)
    return [list(PALETTE[i]) if i < len(PALETTE) else rng.integers(0, 256, 3).tolist() for i in range(n)]


class ContractError(RuntimeError):
    """The model (or the device asked for) cannot be served; the message is one line saying what to fix."""


@dataclass(frozen=True)
class ModelMeta:
    """What the exported model says about itself (ONNX metadata_props)."""

    classes: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...]
    input_size: tuple[int, int]  # (H, W)
    dynamic_hw: bool = False
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resize: str = "squish-bilinear"
    encoder: str = ""
    exporter: str = ""
    variant: str = "fp32"
    versions: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)

    @classmethod
    def from_props(cls, props: dict, source: str = "model") -> "ModelMeta":
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise ContractError(
                f"{source}: metadata lacks {', '.join(missing)}; export it with `python -m training export` or add "
                "them (see exported_models/README.md)"
            )

        def j(key, default=None):
            if key not in props:
                return default
            try:
                return json.loads(props[key])
            except json.JSONDecodeError:
                raise ContractError(f"{source}: metadata {key!r} is not JSON ({props[key][:40]!r})") from None

        classes, colours, size = j("classes"), j("colours"), j("input_size")
        if not isinstance(classes, list) or not classes:
            raise ContractError(f"{source}: metadata 'classes' must be a non-empty JSON list of names")
        if not isinstance(colours, list) or len(colours) != len(classes) or not all(len(c) == 3 for c in colours):
            raise ContractError(f"{source}: metadata 'colours' must hold one [r, g, b] per class ({len(classes)})")
        dynamic = props.get("dynamic_hw", "false").lower() == "true"
        if (
            not isinstance(size, list)
            or len(size) != 2
            or any(int(s) < 1 for s in size)
            or (not dynamic and any(int(s) % 32 for s in size))
        ):
            raise ContractError(
                f"{source}: metadata 'input_size' must be [H, W] (multiples of 32 unless dynamic_hw is true)"
            )
        return cls(
            classes=tuple(str(c) for c in classes),
            colours=tuple(tuple(int(v) for v in c) for c in colours),
            input_size=(int(size[0]), int(size[1])),
            dynamic_hw=dynamic,
            mean=tuple(j("mean", [])),
            std=tuple(j("std", [])),
            resize=props.get("resize", "squish-bilinear"),
            encoder=props.get("encoder", ""),
            exporter=props.get("exporter", ""),
            variant=props.get("variant", "fp32"),
            versions=j("versions", {}) or {},
            metrics=j("metrics", {}) or {},
            raw=dict(props),
        )

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        """JSON-friendly view for /model."""
        d = {k: v for k, v in self.raw.items()}
        keys = ("classes", "colours", "input_size", "mean", "std", "versions", "metrics", "parity", "int8", "crop")
        for key in (*keys, "confidence_reference"):
            if key in d:
                try:
                    d[key] = json.loads(d[key])
                except (json.JSONDecodeError, TypeError):
                    pass
        return d


def check_model_dir(model_dir: Path | str) -> Path:
    """The folder exists and holds model.onnx, or a one-line ContractError says what to do."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ContractError(
            f"{model_dir}: model folder not found; set SEG_MODEL_DIR or build one with `python -m training demo`"
        )
    if not (model_dir / "model.onnx").is_file():
        raise ContractError(
            f"{model_dir}: no model.onnx inside; set SEG_MODEL_DIR to a folder written by `python -m training export`"
        )
    return model_dir
