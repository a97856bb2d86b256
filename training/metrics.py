"""The metrics fastai shows in its progress table while a model trains (pixel accuracy and foreground Dice, Void
left out), computed with the served metrics' definitions (contract.metrics)."""

from __future__ import annotations

from contract.metrics import metrics_from_confusion


def progress_metrics(codes, void: int | None = None):
    """Metrics shown in fastai's progress table: pixel accuracy and Dice over the scored classes (Void left out)."""
    import torch
    from fastai.learner import Metric

    n_classes = len(codes)

    def pairs(learn):
        pred, y = learn.pred.argmax(dim=1).flatten().cpu(), learn.y.flatten().long().cpu()
        if void is not None:
            keep = y != void
            pred, y = pred[keep], y[keep]
        return pred, y

    class PixelAccuracy(Metric):
        name = "pixel_acc"

        def reset(self):
            self.hit, self.total = 0, 0

        def accumulate(self, learn):
            pred, y = pairs(learn)
            self.hit += int((pred == y).sum())
            self.total += y.numel()

        @property
        def value(self):
            return self.hit / max(self.total, 1)

    class ForegroundDice(Metric):
        name = "dice_fg"

        def reset(self):
            self.cm = torch.zeros(n_classes, n_classes, dtype=torch.long)

        def accumulate(self, learn):
            pred, y = pairs(learn)
            self.cm += torch.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(
                n_classes, n_classes
            )

        @property
        def value(self):
            return metrics_from_confusion(self.cm.numpy(), list(codes), void)["dice_fg"]

    return [PixelAccuracy(), ForegroundDice()]
