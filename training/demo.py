"""`python -m training demo`: synth -> fit -> export. What `make serve` runs when exported_models/ is empty."""
from __future__ import annotations

import time
from pathlib import Path

from .errors import TrainingError


def demo(out: Path, work: Path, n: int = 300, config_args=None) -> Path:
    """Build the default model into `out` (must not exist); the data set and run go under `work`."""
    from .export import export_run
    from .synth import SynthConfig, synth
    from .train import TrainConfig, fit

    out, work = Path(out), Path(work)
    if out.exists():
        raise TrainingError(f"{out}: already exists; remove it or pass another --out")
    a = config_args
    size = a.size if a is not None else 128
    data = work / f"synth-n{n}-s{size}"
    t0 = time.perf_counter()
    if not (data / "codes.txt").is_file():
        print(f"== demo 1/3: writing {n} synthetic {size} px scenes to {data}", flush=True)
        synth(SynthConfig(out=data, n=n, size=size, seed=0))
    else:
        print(f"== demo 1/3: reusing the synthetic data in {data}", flush=True)
    run = work / time.strftime("run-%Y%m%d-%H%M%S")
    print(f"== demo 2/3: training into {run}", flush=True)
    if a is not None:
        from .__main__ import _fit_config

        config = _fit_config(a, data, run)
    else:
        config = TrainConfig(data=data, out=run, size=size)
    report = fit(config)
    print(f"== demo 3/3: exporting to {out}", flush=True)
    # the demo always makes both variants: int8 for CPUs, fp16 for GPUs
    export_run(run, out, int8=True, fp16=True, probs=True, exporter=a.exporter if a is not None else "auto")
    print(f"== demo done in {(time.perf_counter() - t0) / 60:.1f} min: foreground Dice {report['metrics']['dice_fg']:.3f}; serve it with `make serve`", flush=True)
    return out
