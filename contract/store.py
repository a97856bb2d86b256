"""BentoML's model store for exported models: register a folder under a tag, resolve a tag to a folder.

    python -m contract.store exported_models/default [--name segmentation]   # prints segmentation:<version>
    bentoml models list                                                      # shows it, with its classes
    SEG_MODEL=segmentation:latest bentoml serve serving.service:SegmentationService

A stored model is the export folder as it is (model.onnx, variants, export.json, samples/), with the
classes, the metrics, the parity figures and the variants in the store's metadata. Inside a bento
(`bentoml build` with `models: [segmentation:latest]` in bentofile.yaml) the same tag resolves to the
copy packed in the bento.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .metadata import VARIANT_FILES, ContractError, ModelMeta, check_model_dir


def is_tag(model: str | Path) -> bool:
    """A BentoML tag ("name" or "name:version") rather than a folder: it is not a path that exists, and
    has no path separators."""
    text = str(model)
    return not Path(text).exists() and "/" not in text and "\\" not in text and bool(text.strip())


def resolve(model: str | Path) -> Path:
    """A folder, or the folder of a BentoML model tag; ContractError in one line when neither."""
    if not is_tag(model):
        return Path(model)
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return Path(bentoml.models.get(str(model)).path)
    except BentoMLException as exc:
        raise ContractError(
            f"{model}: no such model folder, and not a model in BentoML's store ({str(exc).splitlines()[0][:160]}); "
            "register one with `python -m contract.store FOLDER` or pass a folder"
        ) from None


def register(folder: str | Path, name: str = "segmentation") -> str:
    """Copy an export folder into BentoML's model store; returns its tag ("name:version")."""
    import bentoml

    folder = check_model_dir(folder)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx"), load_external_data=False).metadata_props}
    meta = ModelMeta.from_props(props, str(folder / "model.onnx"))
    info = json.loads((folder / "export.json").read_text()) if (folder / "export.json").is_file() else {}
    metadata = {
        "classes": list(meta.classes),
        "input_size": list(meta.input_size),
        "dynamic_hw": meta.dynamic_hw,
        "variants": [v for v, f in VARIANT_FILES.items() if (folder / f).is_file()],
        "metrics": {k: v for k, v in meta.metrics.items() if k in ("dice_fg", "iou_fg", "pixel_acc")},
        "parity_identical": bool((info.get("parity") or {}).get("identical", False)),
        "int8_agreement": (info.get("int8") or {}).get("agreement"),
        "encoder": meta.encoder,
        "source": str(folder.resolve()),
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}  # the store takes basic types only
    with bentoml.models.create(
        name, labels={"task": "semantic-segmentation", "format": "onnx"}, metadata=metadata, module="contract.store"
    ) as model:
        for item in folder.iterdir():
            target = Path(model.path) / item.name
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    return str(model.tag)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m contract.store", description="register an exported model folder in BentoML's model store"
    )
    p.add_argument("folder", type=Path)
    p.add_argument("--name", default="segmentation")
    a = p.parse_args(argv)
    try:
        print(register(a.folder, a.name))
    except ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
