"""What one training step of fit's U-Net costs in each precision and memory format on this host.

`python -m benchmarks.precision [--encoder efficientnet_lite0] [--batch 8] [--size 192 256] [--steps 4]`

One step is what `fit` does per batch: forward, loss, backward, Adam, with `training.precision`'s callbacks'
effect (channels-last model, bf16 autocast of the forward pass and the loss, predictions back to fp32). The
table says which precision `fit --precision auto` picks here, so a host where bf16 is emulated shows it.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

from . import cpu_features, write_report


def time_steps(model, x, y, *, bf16: bool, channels_last: bool, steps: int) -> list[float]:
    """Seconds per training step (after one warm-up step) of `model` on batch (x, y)."""
    import torch
    import torch.nn.functional as F

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    out = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            pred = model(x.to(memory_format=fmt))
        loss = F.cross_entropy(pred.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            out.append(time.perf_counter() - t0)
    model.to(memory_format=torch.contiguous_format)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="efficientnet_lite0")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    a = ap.parse_args(argv)

    import torch
    from fastai.vision.learner import create_unet_model

    from training.model import build_encoder
    from training.precision import resolve_precision

    torch.manual_seed(0)
    body = build_encoder(a.encoder, pretrained=False, allow_random=True)
    model = create_unet_model(lambda *_a, **_k: body, a.classes, tuple(a.size), pretrained=False, cut=lambda m: m)
    h, w = a.size
    x = torch.randn(a.batch, 3, h, w)
    y = torch.randint(0, a.classes, (a.batch, h, w))
    picked = resolve_precision("auto", torch.device("cpu"))
    rows = []
    for name, bf16, cl in (
        ("fp32", False, False),
        ("fp32 channels-last", False, True),
        ("bf16 autocast", True, False),
        ("bf16 autocast + channels-last", True, True),
    ):
        print(f"==> {name}: {a.steps} steps", flush=True)
        t = time_steps(model, x, y, bf16=bf16, channels_last=cl, steps=a.steps)
        rows.append(
            {
                "mode": name,
                "median_s": statistics.median(t),
                "min_s": min(t),
                "max_s": max(t),
                "auto": (("bf16" if bf16 else "fp32") == picked and cl),
            }
        )
    base = rows[0]["median_s"]
    md = [
        f"# One training step of fit's U-Net per precision and memory format ({time.strftime('%Y-%m-%d %H:%M')})",
        "",
        f"`python -m benchmarks.precision --encoder {a.encoder} --batch {a.batch} --size {h} {w} --steps {a.steps}` "
        f"on {cpu_features()}, {torch.get_num_threads()} threads, torch {torch.__version__}: forward, loss, backward "
        f"and Adam on a batch of {a.batch} at {h}x{w}, {a.classes} classes; the median of {a.steps} steps after a "
        f"warm-up. `fit --precision auto` picks **{picked}** here (bf16 where the CPU has AMX-BF16 or AVX-512 BF16).",
        "",
        "| precision and memory format | s per step (median) | min-max | against fp32 | fit's default here |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['mode']} | {r['median_s']:.2f} | {r['min_s']:.2f}-{r['max_s']:.2f} | "
            f"{base / r['median_s']:.2f}x | {'yes' if r['auto'] else ''} |"
        )
    write_report(
        "precision", "\n".join(md) + "\n", {"host": cpu_features(), "picked": picked, "args": vars(a), "rows": rows}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
