"""The run folder a fit writes and export reads: config.json and model.pth (a state_dict, no pickle) to rebuild
the learner, report.json, results.png and curves.png for people to look at."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np

from contract.metadata import class_colours

from .config import TrainConfig
from .errors import TrainingError
from .evaluate import evaluate, evaluate_shifted
from .learner import learner_for
from .model import ENCODERS
from .plots import save_curves_png, save_results_png, save_shifts_png


def versions() -> dict:
    import fastai
    import torch

    return {
        "fastai": fastai.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def write_run(
    learn, config: TrainConfig, ds, split, size, history, schedule: dict, balance: dict, timings: dict, plan=None
) -> dict:
    """Evaluate at native resolution, clean and under the camera shifts (contract.shifts), and write the run folder
    (model.pth, config.json, results.png, curves.png, shifts.png, and plan.json for a planned fit); returns the
    report."""
    import torch

    out, (train_idx, valid_idx) = config.out, split
    spec = ENCODERS[config.encoder]
    print(f"[4/4] evaluating on {len(valid_idx)} held-out images at their own resolution (epoch "
          f"{schedule['kept_epoch']} kept) and writing {out}", flush=True)  # fmt: skip
    metrics, shown = evaluate(learn, ds, valid_idx, size, spec.mean, spec.std)
    shifted, examples = _shifted(learn, ds, valid_idx, size, spec, metrics, plan)
    colours = class_colours(ds.n_classes)
    run_meta = {"config": config.to_json(), "size": list(size), "codes": list(ds.codes), "colours": colours,
                "layout": ds.layout, "mean": list(spec.mean), "std": list(spec.std), "void": ds.void,
                "train_images": [str(ds.pairs[i][0]) for i in train_idx],
                "valid_images": [str(ds.pairs[i][0]) for i in valid_idx]}  # fmt: skip
    torch.save(learn.model.state_dict(), out / "model.pth")
    (out / "config.json").write_text(json.dumps(run_meta, indent=2))
    save_results_png(shown, out / "results.png", config.n_show, colours)
    save_curves_png(history, out / "curves.png")
    save_shifts_png(shifted, examples, out / "shifts.png", colours)
    if plan is not None:
        (out / "plan.json").write_text(json.dumps(plan.to_json(), indent=2))
    return {"plan": plan.to_json() if plan is not None else None, "metrics": metrics, "shifted": shifted,
            "history": history, "schedule": schedule, "class_balance": balance, "timings": timings,
            "loss": config.resolved_loss(), "augment": config.resolved_augment(), "versions": versions(),
            **run_meta}  # fmt: skip


def _shifted(learn, ds, valid_idx, size, spec, metrics: dict, plan) -> tuple[dict, list]:
    """The held-out images under the camera shifts: all of them, or for a planned fit (its budget) an even sample
    of SHIFT_IMAGES, with their clean figures scored again on the same sample."""
    idx = valid_idx
    if plan is not None:
        from .plan import SHIFT_IMAGES

        idx = valid_idx[:: max(1, len(valid_idx) // SHIFT_IMAGES)][:SHIFT_IMAGES]
    clean = metrics if idx == valid_idx else evaluate(learn, ds, idx, size, spec.mean, spec.std)[0]
    shifted, examples = evaluate_shifted(learn, ds, idx, size, spec.mean, spec.std, clean)
    shifted["images"] = len(idx)
    return shifted, examples


def load_run(run_dir: Path):
    """Rebuild the trained learner of a run folder: returns (learn, run_meta, dataset)."""
    import torch

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.pth"
    if not cfg_path.is_file() or not weights.is_file():
        raise TrainingError(
            f"{run_dir}: not a training run (needs config.json and model.pth); train one with `python -m training fit`"
        )
    meta = json.loads(cfg_path.read_text())
    meta["config"].setdefault("decoder_norm", "none")  # run folders from before the option: fastai's decoder, no norm
    meta["config"].setdefault("input_norm", "dataset")  # and from before --input-norm: the fixed normalisation only
    c = dict(meta["config"])
    c.pop("extra", None)
    c["pretrained"] = False  # the trained weights are loaded below; no need for ImageNet ones
    c["weights"] = None
    config = TrainConfig(**{k: v for k, v in c.items() if k in TrainConfig.__dataclass_fields__})
    learn, ds = learner_for(config, augment="none")
    learn.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    learn.model.eval()
    return learn, meta, ds
