"""The loss of a fit: (weighted) cross-entropy with Void ignored, optionally a soft Dice or a Lovasz term, and
the median-frequency class weights that balance rare classes."""

from __future__ import annotations

import numpy as np

from .config import TrainConfig
from .data import Dataset, class_frequencies, median_frequency_weights

IMBALANCE_RATIO = 10.0  # class_weights="auto" turns median-frequency weights on above this max/min class frequency


class SegmentationLoss:
    """fastai's CrossEntropyLossFlat (class `weights`, Void ignored), plus with `dice` a soft Dice term:
    1 - the mean over the classes but Void of 2|P.T| / (|P| + |T|) over the batch's non-Void pixels (P the
    softmax, T the one-hot truth), which weighs a thin class by its overlap rather than by its pixel count.
    (fastai's DiceLoss has no ignore index for Void and sums per image and class, an absent class counting
    as much as a present one.) Module-level so that fastai can pickle a Learner that uses it; activation and decodes
    are the
    cross-entropy's (softmax, argmax), so fastai's get_preds and show_results behave as with the default loss."""

    def __init__(
        self, weights=None, void: int | None = None, *, dice: bool = False, lovasz: bool = False, smooth: float = 1.0
    ):
        import torch
        from fastai.losses import CrossEntropyLossFlat

        w = None if weights is None else torch.tensor(np.asarray(weights), dtype=torch.float32)
        self.ce = CrossEntropyLossFlat(axis=1, weight=w, ignore_index=-100 if void is None else void)
        self.void, self.dice, self.lovasz, self.smooth = void, dice, lovasz, smooth

    def __call__(self, pred, targ):
        loss = self.ce(pred, targ)
        if self.dice:
            loss = loss + self.dice_loss(pred, targ)
        if self.lovasz:
            loss = loss + self.lovasz_loss(pred, targ)
        return loss

    def lovasz_loss(self, pred, targ):
        """The Lovasz-softmax loss (Berman et al., CVPR 2018: a convex surrogate of 1 - IoU), averaged over the
        classes present in the batch, Void pixels left out; the reference implementation's flat form."""
        import torch

        pred, targ = pred.as_subclass(torch.Tensor).float(), targ.as_subclass(torch.Tensor).long()
        n = pred.shape[1]
        p, t = pred.softmax(1).permute(0, 2, 3, 1).reshape(-1, n), targ.reshape(-1)
        if self.void is not None:
            p, t = p[t != self.void], t[t != self.void]
        losses = []
        for c in range(n):
            fg = (t == c).float()
            if fg.sum() == 0:  # absent from the batch (Void's pixels were dropped above)
                continue
            errors, perm = (fg - p[:, c]).abs().sort(descending=True)
            fg = fg[perm]
            inter, union = fg.sum() - fg.cumsum(0), fg.sum() + (1 - fg).cumsum(0)
            jaccard = 1 - inter / union
            grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
            losses.append(errors @ grad)
        return torch.stack(losses).mean() if losses else pred.sum() * 0

    def dice_loss(self, pred, targ):
        import torch
        import torch.nn.functional as F

        pred, targ = pred.as_subclass(torch.Tensor).float(), targ.as_subclass(torch.Tensor).long()
        n = pred.shape[1]
        p, t = pred.softmax(1), F.one_hot(targ.clamp(0, n - 1), n).permute(0, 3, 1, 2).float()
        keep = list(range(n))
        if self.void is not None:
            valid = (targ != self.void).unsqueeze(1).float()
            p, t, keep = p * valid, t * valid, [c for c in keep if c != self.void]
        inter, total = (p * t).sum((0, 2, 3)), (p + t).sum((0, 2, 3))
        dice = (2 * inter + self.smooth) / (total + self.smooth)
        return 1 - dice[keep].mean()

    def activation(self, x):
        return self.ce.activation(x)

    def decodes(self, x):
        return self.ce.decodes(x)


def class_balance(config: TrainConfig, ds: Dataset, train_idx) -> tuple[np.ndarray | None, dict]:
    """The loss's class weights (None: plain loss) and what the report says about them."""
    freq = class_frequencies(ds, train_idx)
    present = [f for i, f in enumerate(freq) if i != ds.void and f > 0]
    ratio = float(max(present) / min(present)) if present else 1.0
    on = config.class_weights in ("on", "sqrt") or (config.class_weights == "auto" and ratio > IMBALANCE_RATIO)
    weights = median_frequency_weights(freq, ds.void) if on else None
    if on and config.class_weights == "sqrt":  # softer: rare classes still count more, thin ones come out less fat
        weights = np.sqrt(weights)
    info = {
        "mode": config.class_weights,
        "used": bool(on),
        "imbalance_ratio": ratio,
        "threshold": IMBALANCE_RATIO,
        "frequencies": dict(zip(ds.codes, map(float, freq))),
        "weights": dict(zip(ds.codes, map(float, weights))) if on else None,
        "void": ds.codes[ds.void] if ds.void is not None else None,
    }
    return weights, info
