"""`python -m training demo`: synth -> fit -> export. What `make serve` runs when exported_models/ is empty."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from .config import TrainConfig
from .errors import TrainingError


def demo(out: Path, work: Path, n: int = 300, base: TrainConfig | None = None, exporter: str = "auto") -> Path:
    """Build the default model into `out` (must not exist); the data set and run go under `work`.

    `base` holds the training settings (its `data` and `out` are replaced here); defaults otherwise."""
    from .export import export_run
    from .fit import fit
    from .synth import SynthConfig, synth

    out, work = Path(out), Path(work)
    if out.exists():
        raise TrainingError(f"{out}: already exists; remove it or pass another --out")
    base = base or TrainConfig(data=Path("."), out=Path("."))
    side = base.size[0] if base.size else 128
    data = work / f"synth-n{n}-s{side}"
    t0 = time.perf_counter()
    if not (data / "codes.txt").is_file():
        print(f"== demo 1/3: writing {n} synthetic {side} px scenes to {data}", flush=True)
        synth(SynthConfig(out=data, n=n, size=side, seed=0))
    else:
        print(f"== demo 1/3: reusing the synthetic data in {data}", flush=True)
    run = work / time.strftime("run-%Y%m%d-%H%M%S")
    print(f"== demo 2/3: training into {run}", flush=True)
    report = fit(dataclasses.replace(base, data=data, out=run))
    print(f"== demo 3/3: exporting to {out}", flush=True)
    # the demo always makes both variants: int8 for CPUs, fp16 for GPUs
    export_run(run, out, int8=True, fp16=True, probs=True, exporter=exporter)
    print(
        f"== demo done in {(time.perf_counter() - t0) / 60:.1f} min: foreground Dice "
        f"{report['metrics']['dice_fg']:.3f}; serve it with `make serve`",
        flush=True,
    )
    return out
