"""`python -m serving predict INPUT_DIR OUTPUT_DIR ...`: segment a folder without a server;
`python -m serving evaluate --model DIR --data DIR`: score a model on a labelled set (serving.evaluate)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract.metadata import DEFAULT_BATCH_SIZE, DEFAULT_MODEL_DIR, ContractError

from . import evaluate
from .predict import PredictConfig, PredictError, predict_folder
from .ray_predict import RayError
from .runtime import DEVICES, VARIANTS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving")
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("predict", help="segment every image of a folder (batched, resumable)")
    q.add_argument("input_dir", type=Path)
    q.add_argument("output_dir", type=Path)
    q.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    q.add_argument("--device", choices=DEVICES, default="auto")
    q.add_argument("--variant", choices=VARIANTS, default="auto")
    q.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    q.add_argument("--overlays", action="store_true", help="also write <stem>.overlay.png")
    q.add_argument("--csv", action="store_true", help="also write classes.csv with class fractions per image")
    q.add_argument("--tile", action="store_true", help="segment by overlapping tiles at full resolution")
    q.add_argument(
        "--ray", metavar="ADDRESS", help="run the batches on a Ray cluster: local, auto or HOST:PORT / ray://HOST:10001"
    )
    q.add_argument("--ray-actors", type=int, default=2, help="model replicas on the cluster (default 2)")
    q.add_argument("--ray-gpus", type=float, default=0.0, help="GPUs per replica (e.g. 1, or 0.5 to share one)")
    evaluate.add_args(sub.add_parser("evaluate", help="score a model on a labelled data set (mean IoU, per class)"))
    a = p.parse_args(argv)
    if a.cmd == "evaluate":
        return evaluate.run(a)
    try:
        counts = predict_folder(
            PredictConfig(
                a.input_dir,
                a.output_dir,
                a.model,
                a.device,
                a.variant,
                a.batch_size,
                a.overlays,
                a.csv,
                a.tile,
                ray=a.ray,
                ray_actors=a.ray_actors,
                ray_gpus=a.ray_gpus,
            )
        )
    except (PredictError, RayError, ContractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{counts['done']} segmented, {counts['skipped']} already done, {counts['failed']} failed -> {a.output_dir}")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
