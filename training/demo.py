"""`python -m training demo`: synth -> fit -> export. What `make serve` runs when exported_models/ is empty.

`--quick`: a first model in about a minute (QUICK_STEPS optimiser steps, fp32 only), so that `make serve` answers
soon after its install; `--replace`: the full demo built beside `--out` and moved into its place when done, where a
running service with SEG_RELOAD_S set picks it up without a restart (`make serve` runs both: docs/training.md)."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from .config import TrainConfig
from .errors import TrainingError

QUICK_STEPS = 60  # the quick first model: 2 epochs of the demo's 240 training images, one of them frozen
# The demo's own recipe where it differs from fit's defaults, chosen over 5 seeds (benchmarks.demo_seeds; the README's
# "How accurate"): fit's 450 steps left it still learning (held-out Dice 0.951 on seed 4), and camera shifts on a tenth
# of the training images hold JPEG, noise and low resolution (shifted / clean 0.948 -> 0.97), each image standardised
# for the head as well (measured so; fit's street-scene default standardises the encoder's input only). `python -m
# training demo` takes these as its defaults; any fit option given overrides them.
DEMO_DEFAULTS = {
    "minutes": None,
    "steps": 600,
    "field_kinds": ("noise", "jpeg", "lowres"),
    "field_p": 0.1,
    "input_norm": "image",
}
DEMO_RECIPE = "--no-plan " + " ".join(
    f"--{k.replace('_', '-')} {','.join(v) if isinstance(v, tuple) else v}"
    for k, v in DEMO_DEFAULTS.items()
    if k != "minutes"
)


def demo(out: Path, work: Path, n: int = 300, base: TrainConfig | None = None, exporter: str = "auto",
         quick: bool = False, replace: bool = False) -> Path:  # fmt: skip
    """Build the default model into `out` (must not exist, unless `replace`); the data set and run go under `work`.

    `base` holds the training settings (its `data` and `out` are replaced here); fit's defaults with DEMO_DEFAULTS
    otherwise. `quick`: a first model in QUICK_STEPS steps, fp32 only. `replace`: built beside `out`, then moved into
    its place."""
    if replace:
        return _replace(Path(out), lambda tmp: demo(tmp, work, n, base, exporter, quick))
    from .export import export_run
    from .fit import fit
    from .synth import SynthConfig, synth

    out, work = Path(out), Path(work)
    base = base or TrainConfig(data=Path("."), out=Path("."), **DEMO_DEFAULTS)
    if quick:
        base = dataclasses.replace(base, steps=QUICK_STEPS)
    if out.exists():
        raise TrainingError(f"{out}: already exists; remove it or pass another --out")
    side = base.size[0] if base.size else 128
    data = work / f"synth-n{n}-s{side}"
    t0 = time.perf_counter()
    if not (data / "codes.txt").is_file():
        print(f"== demo 1/3: writing {n} synthetic {side} px scenes to {data}", flush=True)
        synth(SynthConfig(out=data, n=n, size=side, seed=0))
    else:
        print(f"== demo 1/3: reusing the synthetic data in {data}", flush=True)
    run = work / time.strftime("run-%Y%m%d-%H%M%S") if not quick else work / time.strftime("quick-%Y%m%d-%H%M%S")
    print(f"== demo 2/3: training into {run}", flush=True)
    report = fit(dataclasses.replace(base, data=data, out=run))
    print(f"== demo 3/3: exporting to {out}", flush=True)
    # the demo makes both variants, int8 for CPUs and fp16 for GPUs; the quick first model neither, and takes the
    # legacy exporter (seconds, not the dynamo exporter's ~15 s), parity-gated like any other export
    exporter = "legacy" if quick and exporter == "auto" else exporter
    export_run(run, out, int8=not quick, fp16=not quick, probs=True, exporter=exporter)
    print(
        f"== demo done in {(time.perf_counter() - t0) / 60:.1f} min: foreground Dice "
        f"{report['metrics']['dice_fg']:.3f}; serve it with `make serve`",
        flush=True,
    )
    return out


def _replace(out: Path, build) -> Path:
    """`build(tmp)` into a new folder beside `out`, then swapped into `out`'s place (two renames; a service polling
    the folder sees the old model, for a moment no model, then the new one, and serves throughout)."""
    tmp = out.with_name(f".{out.name}.building")
    old = out.with_name(f".{out.name}.replaced")
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    build(tmp)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)
    print(f"== demo: {out} replaced by the full demo model", flush=True)
    return out
