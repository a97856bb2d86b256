"""The model folder: what training writes and serving reads, the one crossing between them.

`python -m training export` writes `exported_models/<name>/` (model.onnx, variants, check/, samples/,
export.json; the contract in exported_models/README.md); the service, the Python API and the benchmarks
read it. What both sides need to agree on lives here and nowhere else:

- `metadata`: the defaults (model folder, batch size, image formats), the variant files, the metadata
  keys and `ModelMeta`, the class colours;
- `metrics`: accuracy against ground truth (Dice, IoU), the int8 accuracy rule and the bundled check,
  and the confidence figures of an answer;
- `geometry`: the training scale, padding to a multiple of 32;
- `session`: the ONNX Runtime options a serving worker opens a model with;
- `store`: BentoML's model store (a tag for a folder, a folder for a tag);
- `datasets`: labelled data sets on disk (layouts, SegNet's CamVid split), what `fit` trains on and `evaluate` scores;
- `shifts`: the camera shifts a field camera gives images, for scoring models under them.

Nothing here imports torch, fastai, BentoML's service or the `training`/`serving` packages.
"""

from .metadata import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MODEL_DIR,
    IMAGE_EXTENSIONS,
    VARIANT_FILES,
    ContractError,
    ModelMeta,
    class_colours,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_MODEL_DIR",
    "IMAGE_EXTENSIONS",
    "VARIANT_FILES",
    "ContractError",
    "ModelMeta",
    "class_colours",
]
