"""The plain fastai recipe for CamVid-layout scenes, as a reference for `fit` (issue 17's 40-line script).

    python -m benchmarks.camvid_plain --data runs/camvid/scenes-n150 --out runs/camvid/run-P

A `DataBlock` with `RandomCrop` as the item transform on the images at their own size (no resize),
`Flip()` and the encoder's `Normalize` as batch transforms, batch size 8; `unet_learner` over the
project's encoder; `CrossEntropyLossFlat(weight=w, axis=1)` with w = median class frequency / class
frequency over the training masks, clipped at 50, Void's weight 0; `fit_one_cycle(frozen, 4e-3)`, then
`fit_one_cycle(unfrozen, slice(2e-4, 2e-3))` unfrozen, the last epoch kept. The same held-out split as
`fit` (training.data.split_pairs). The run folder is written in `fit`'s format (config.json describing
the same network, model.pth, report.json), so `python -m training export` exports it and the benchmark
scores it through the served path like every other row.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np

WEIGHT_CLIP = 50.0


def main(argv=None) -> int:
    import torch
    from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (imported before seeding, as fit does)
    from fastai.data.block import DataBlock
    from fastai.data.transforms import IndexSplitter, Normalize
    from fastai.losses import CrossEntropyLossFlat
    from fastai.vision.augment import Flip, RandomCrop
    from fastai.vision.core import PILMask
    from fastai.vision.data import ImageBlock, MaskBlock

    from contract.metadata import class_colours
    from training.config import WHOLE_BS, TrainConfig
    from training.data import class_frequencies, load_dataset, median_frequency_weights, read_mask, split_pairs
    from training.evaluate import evaluate, evaluate_shifted
    from training.model import ENCODERS, build_learner

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--crop", type=int, nargs=2, default=[192, 256])
    p.add_argument("--epochs", type=int, nargs=2, default=[2, 6], metavar=("FROZEN", "UNFROZEN"))
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args(argv)
    random.seed(a.seed), torch.manual_seed(a.seed), np.random.seed(a.seed)
    ds = load_dataset(a.data)
    train_idx, valid_idx = split_pairs(ds, 0.2, a.seed)
    w = median_frequency_weights(class_frequencies(ds, train_idx), ds.void).clip(max=WEIGHT_CLIP)
    masks = dict(ds.pairs)
    spec = ENCODERS["efficientnet_lite0"]
    block = DataBlock(blocks=(ImageBlock, MaskBlock(list(ds.codes))), get_items=lambda _: [p for p, _ in ds.pairs],
                      get_y=lambda x: PILMask.create(read_mask(masks[Path(x)])), splitter=IndexSplitter(valid_idx),
                      item_tfms=RandomCrop(tuple(a.crop)),
                      batch_tfms=[Flip(), Normalize.from_stats(list(spec.mean), list(spec.std))])  # fmt: skip
    dls = block.dataloaders(ds.root, bs=WHOLE_BS, num_workers=0)  # fastai course notebooks: 8
    loss = CrossEntropyLossFlat(weight=torch.tensor(w, dtype=torch.float32), axis=1)
    learn = build_learner(dls, n_out=ds.n_classes, encoder=spec.name, pretrained=True, loss_func=loss)
    t = time.perf_counter()
    learn.freeze()
    learn.fit_one_cycle(a.epochs[0], 4e-3)
    learn.unfreeze()
    learn.fit_one_cycle(a.epochs[1], slice(2e-4, 2e-3))
    train_s = time.perf_counter() - t
    h, wd = ds.image_size()
    # the network as `fit` would rebuild it for export: fastai's decoder, the fixed normalisation only
    config = TrainConfig(data=a.data, out=a.out, size=(h, wd), crop=tuple(a.crop), frozen_epochs=a.epochs[0],
                         unfrozen_epochs=a.epochs[1], class_weights="on", keep_best=False, seed=a.seed,
                         decoder_norm="none", input_norm="dataset", augment="flip")  # fmt: skip
    meta = {"config": config.to_json(), "size": [h, wd], "codes": list(ds.codes), "layout": ds.layout,
            "colours": class_colours(ds.n_classes), "mean": list(spec.mean), "std": list(spec.std), "void": ds.void,
            "train_images": [str(ds.pairs[i][0]) for i in train_idx],
            "valid_images": [str(ds.pairs[i][0]) for i in valid_idx]}  # fmt: skip
    metrics = evaluate(learn, ds, valid_idx, (h, wd), spec.mean, spec.std)[0]
    a.out.mkdir(parents=True, exist_ok=True)
    torch.save(learn.model.state_dict(), a.out / "model.pth")
    (a.out / "config.json").write_text(json.dumps(meta, indent=2))
    shifted = evaluate_shifted(learn, ds, valid_idx, (h, wd), spec.mean, spec.std, metrics)[0]
    report = {**meta, "recipe": "plain fastai (benchmarks.camvid_plain)", "weights": dict(zip(ds.codes, map(float, w))),
              "timings": {"train_s": train_s},
              "schedule": {"frozen_epochs": a.epochs[0], "unfrozen_epochs": a.epochs[1]},
              "metrics": metrics, "shifted": shifted}  # fmt: skip
    (a.out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"plain recipe: {train_s / 60:.1f} min, written {a.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
