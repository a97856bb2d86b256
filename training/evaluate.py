"""Held-out evaluation through the served data path: each validation image at its own resolution, resized to
the training scale keeping its aspect, padded to 32, run in PyTorch, scores upsampled, scored against its
mask. The export's parity gate ties this path to the ONNX graph the service runs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from contract.geometry import ceil32, pad_reflect, scaled_hw
from contract.metrics import confusion, metrics_from_confusion, task_metric

from .data import Dataset, read_mask


def predict_native(model, image: np.ndarray, size: tuple[int, int], mean, std) -> np.ndarray:
    """The served path in PyTorch: (H, W, 3) uint8 at its own resolution -> (H, W) class ids. Resized to
    the training scale keeping the aspect (short side to the training short side, PIL bilinear), padded
    to a multiple of 32 by reflection, run, cropped, probabilities upsampled bilinearly, argmax."""
    import torch
    import torch.nn.functional as F

    H, W = image.shape[:2]
    h, w = scaled_hw(size, (W, H))
    x = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    x = pad_reflect(x, ceil32(h), ceil32(w))
    t = torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float() / 255.0
    t = (t - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        probs = torch.softmax(model(t).float(), dim=1)[:, :, :h, :w]
        return (
            F.interpolate(probs, size=(H, W), mode="bilinear", align_corners=False)[0]
            .argmax(0)
            .numpy()
            .astype(np.uint8)
        )


def evaluate(learn, ds: Dataset, valid_idx, size: tuple[int, int], mean, std, shift=None) -> tuple[dict, list]:
    """Metrics on the held-out images at their own resolution, through `predict_native`; returns the
    metrics and (image, truth, prediction) for the first few. `shift`: a function applied to each image first
    (contract.shifts), its mask unchanged."""
    model = learn.model.eval()
    cm = np.zeros((ds.n_classes, ds.n_classes), np.int64)
    shown = []
    for i in valid_idx:
        image_path, mask_path = ds.pairs[i]
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        if shift is not None:
            image = shift(image)
        truth = read_mask(mask_path, ds.binary_255)
        pred = predict_native(model, image, size, mean, std)
        cm += confusion(pred, truth, ds.n_classes, ds.void)
        if len(shown) < 8:
            shown.append((image, truth, pred))
    return metrics_from_confusion(cm, ds.codes, ds.void), shown


def evaluate_shifted(learn, ds: Dataset, valid_idx, size: tuple[int, int], mean, std, clean: dict) -> tuple[dict, list]:
    """The held-out images under each of contract.shifts.SHIFTS: ({"shifts": {name: metrics}, "metric", "clean",
    "shifted_mean", "ratio"}, [(name, image, prediction)] for the first image). `clean`: the unshifted metrics."""
    from contract.shifts import SHIFTS

    metric = task_metric(ds.layout)
    rows, examples = {}, []
    for name, fn in SHIFTS.items():
        m, shown = evaluate(learn, ds, valid_idx, size, mean, std, shift=fn)
        rows[name] = {k: m[k] for k in ("dice_fg", "iou_fg", "pixel_acc", "dice", "iou")}
        examples.append((name, shown[0][0], shown[0][2]))
    mean_shifted = float(np.mean([r[metric] for r in rows.values()]))
    summary = {"metric": metric, "clean": clean[metric], "shifted_mean": mean_shifted, "shifts": rows,
               "ratio": mean_shifted / clean[metric] if clean[metric] else 0.0}  # fmt: skip
    return summary, examples
