"""What a fit costs on this machine, measured before a planned fit (training.plan): a few real training steps of each
candidate encoder at the planned crop and batch (encoder frozen, then unfrozen; bf16 autocast and channels-last as
the fit will run), one prediction at the images' own size, and drawing a batch of real data."""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from .config import TrainConfig
from .evaluate import predict_native
from .model import ENCODERS
from .plan import StepTimes, timed


def probe(config: TrainConfig, ds, encoders, size, crop, bs: int, precision: str) -> StepTimes:
    """Seconds per training step (frozen, unfrozen) and per full-size prediction (the held-out evaluation's own
    path, training.evaluate.predict_native) for each of `encoders`, and per batch of data; prints one line per
    encoder."""
    from .learner import learner_for

    frozen, unfrozen, predict, data_s = {}, {}, {}, 0.0
    for enc in encoders:
        cfg = dataclasses.replace(config, encoder=enc, size=size, crop=crop, bs=bs, zoom=None, class_crops=0.0)
        learn, _ = learner_for(cfg, ds, augment="flip")
        if not data_s:
            it = iter(learn.dls.train)
            data_s = timed(lambda: next(it), n=3)
        frozen[enc], unfrozen[enc] = _steps(learn, crop or size, bs, ds.n_classes, precision, cfg.channels_last)
        image = np.asarray(Image.open(ds.pairs[0][0]).convert("RGB"))
        h, w = image.shape[:2]
        spec, model = ENCODERS[enc], learn.model.eval()
        predict[enc] = timed(lambda: predict_native(model, image, size, spec.mean, spec.std), n=2)
        at = "x".join(map(str, crop or size))
        print(f"      probe {enc}: step {frozen[enc]:.2f} s frozen, {unfrozen[enc]:.2f} s unfrozen (batch of {bs} "
              f"at {at}), prediction {predict[enc]:.2f} s at {h}x{w}", flush=True)  # fmt: skip
    return StepTimes(frozen, unfrozen, predict, data_s)


def _steps(learn, hw, bs: int, n_classes: int, precision: str, channels_last: bool) -> tuple[float, float]:
    """Median seconds of a training step (forward, loss, backward, Adam) with the encoder frozen, then unfrozen."""
    import torch

    model = learn.model.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    x = torch.randn(bs, 3, *hw).contiguous(memory_format=fmt)
    y = torch.randint(0, n_classes, (bs, *hw))
    out = []
    for freeze in (True, False):
        learn.freeze() if freeze else learn.unfreeze()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            opt.zero_grad()

        out.append(timed(step, n=3))
    model.to(memory_format=torch.contiguous_format)
    return out[0], out[1]
