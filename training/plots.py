"""The pictures of a run: results.png (image, truth, prediction), curves.png (loss and Dice per epoch) and shifts.png
(the held-out metric clean and under each camera shift, with an example of each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_results_png(shown: list, path: Path, n: int, colours) -> None:
    """image | truth | prediction for `n` validation images, at their own resolution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(shown))
    pal = np.array(colours, dtype=np.uint8)
    h, w = shown[0][0].shape[:2]
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n * h / w + 0.3), squeeze=False)
    for i in range(n):
        image, truth, pred = shown[i]
        for ax, arr, title in zip(axes[i], (image, pal[truth], pal[pred]), ("image", "truth", "prediction")):
            ax.imshow(arr)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_curves_png(history: list[dict], path: Path) -> None:
    """Training/validation loss and foreground Dice per epoch, both phases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ep, [h.get("train_loss") for h in history], "o-", label="train loss")
    a.plot(ep, [h.get("valid_loss") for h in history], "o-", label="valid loss")
    a.set_xlabel("epoch"), a.legend(), a.set_title("loss")
    b.plot(ep, [h.get("dice_fg") for h in history], "o-", color="C2")
    b.set_ylim(0, 1), b.set_xlabel("epoch"), b.set_title("foreground Dice (valid)")
    frozen = sum(1 for h in history if h["phase"] == "frozen")
    for ax in (a, b):
        ax.axvline(frozen - 0.5, color="grey", ls="--", lw=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def save_shifts_png(summary: dict, examples: list, path: Path, colours) -> None:
    """A bar per shift (the held-out task metric, clean first) above each shift's first image and its prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pal = np.array(colours, dtype=np.uint8)
    names = ["clean", *summary["shifts"]]
    values = [summary["clean"], *(r[summary["metric"]] for r in summary["shifts"].values())]
    fig = plt.figure(figsize=(1.6 * len(examples), 6.2))
    bars = fig.add_subplot(3, 1, 1)
    bars.bar(names, values, color=["C2"] + ["C0"] * len(examples))
    bars.set_ylim(0, 1)
    bars.set_title(
        f"held-out {summary['metric']}: clean {summary['clean']:.3f}, shifted mean {summary['shifted_mean']:.3f}"
    )
    for i, (name, image, pred) in enumerate(examples):
        for row, arr in ((1, image), (2, pal[pred])):
            ax = fig.add_subplot(3, len(examples), row * len(examples) + i + 1)
            ax.imshow(arr)
            ax.set_axis_off()
            if row == 1:
                ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
