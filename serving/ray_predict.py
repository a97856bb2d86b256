"""Folder prediction on a Ray cluster: `python -m serving predict IN OUT --ray ADDRESS`.

Ray Data streams the image paths through a pool of actors (`map_batches` with a callable class and
an `ActorPoolStrategy`); each actor holds one Segmenter and runs the same `segment_items` as the
local path, so masks are identical. What has to be where:

- the model: read once here and shipped through Ray's object store, so workers need no copy of it;
- this package: shipped as a `py_modules` runtime environment; workers need its dependencies
  (onnxruntime or onnxruntime-gpu, Pillow, numpy), e.g. the image `bentoml build` makes;
- INPUT_DIR: read by the actors, so it must be at the same path on every node (NFS, a shared volume);
- outputs: come back to this process, which writes them, so OUTPUT_DIR only has to exist here and
  resuming works as without Ray.

ADDRESS is "local" (start a Ray instance inside this process), "auto" (the cluster `ray start` runs
on this machine) or a cluster address such as 10.0.0.5:6379 or ray://head:10001.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from contract.metadata import VARIANT_FILES, check_model_dir

from .segmenter import Result, Segmenter, read_items, segment_items

PACKAGE = Path(__file__).resolve().parent


class RayError(Exception):
    """The cluster cannot be reached or the job failed: printed as one line, exit code 2."""


class SegmentActor:
    """A Ray Data actor: writes the shipped model to a temp folder once, then segments batches of paths."""

    def __init__(self, model: list, device: str, variant: str, threads: int, opts: dict):
        import ray

        files = ray.get(model[0])
        self.dir = Path(tempfile.mkdtemp(prefix="seg-model-"))
        for name, data in files.items():
            (self.dir / name).write_bytes(data)
        self.seg = Segmenter.load(self.dir, device, variant, threads=threads)
        self.opts = opts

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items, unread = read_items(batch["path"])
        results = unread + segment_items(self.seg, items, **self.opts)
        return {
            "name": np.array([r.name for r in results], dtype=object),
            "mask_png": np.array([r.mask_png for r in results], dtype=object),
            "overlay_png": np.array([r.overlay_png for r in results], dtype=object),
            "row": np.array([json.dumps(r.row) for r in results], dtype=object),
            "error": np.array([r.error for r in results], dtype=object),
        }

    def __del__(self):
        shutil.rmtree(getattr(self, "dir", ""), ignore_errors=True)


def _model_files(model_dir: Path, variant: str) -> dict[str, bytes]:
    """The files an actor needs: the metadata and the variants it may choose (all of them for "auto")."""
    check_model_dir(model_dir)
    wanted = set(VARIANT_FILES.values()) if variant == "auto" else {"model.onnx", VARIANT_FILES[variant]}
    return {
        p.name: p.read_bytes()
        for p in sorted(model_dir.iterdir())
        if p.is_file() and (p.name in wanted or p.suffix == ".json")
    }


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Ray retries an unreachable address for minutes; check HOST:PORT answers first, in seconds."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayError(f"--ray {address}: use local, auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayError(
            f"--ray {address}: nothing answers there ({exc.strerror or exc.__class__.__name__}); "
            "start a cluster with `ray start --head` or use --ray local"
        ) from None


def connect(address: str) -> None:
    """Join (or, for "local", start) a Ray cluster with this package shipped to its workers."""
    try:
        import ray
    except ImportError:
        raise RayError("--ray needs Ray: pip install 'ray[data]' (or the project's [ray] extra)") from None
    if address not in ("local", "auto"):
        _reachable(address)
    env = {"py_modules": [str(PACKAGE)]}
    kwargs = dict(runtime_env=env, logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    try:
        if address == "local":
            ray.init(include_dashboard=False, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        hint = "start one with `ray start --head` or use --ray local"
        if address != "local" and os.environ.get("RAY_AUTH_MODE") is None:
            hint = (
                "if the cluster uses token authentication (Ray's default when ~/.ray/auth_token exists), "
                "set RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN if the token file is elsewhere)"
            )
        raise RayError(f"--ray {address}: cannot join the Ray cluster ({first}); {hint}") from None


def ray_batches(cfg, todo: list[Path]):
    """Connect, then yield lists of Results as the cluster finishes batches."""
    if cfg.ray_actors < 1:
        raise RayError(f"--ray-actors {cfg.ray_actors}: must be >= 1")
    files = _model_files(Path(cfg.model_dir), cfg.variant)
    connect(cfg.ray)
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # one bar: the driver's, per image written
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx.print_on_execution_start = False
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // cfg.ray_actors)
    opts = dict(
        tile=cfg.tile, overlays=cfg.overlays, stats=cfg.csv, batch_size=cfg.batch_size, max_pixels=cfg.max_pixels
    )
    ds = ray.data.from_items([{"path": str(p)} for p in todo]).map_batches(
        SegmentActor,
        batch_size=cfg.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=cfg.ray_actors),
        num_cpus=cpus,
        num_gpus=cfg.ray_gpus or None,
        ray_remote_args_fn=lambda: {"max_restarts": 0},  # a dead replica fails the run in one line; rerunning resumes
        fn_constructor_kwargs=dict(
            model=[ray.put(files)], device=cfg.device, variant=cfg.variant, threads=cpus, opts=opts
        ),
    )

    def batches():
        try:
            for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
                yield [
                    Result(str(n), bytes(m), bytes(o), json.loads(r), str(e))
                    for n, m, o, r, e in zip(b["name"], b["mask_png"], b["overlay_png"], b["row"], b["error"])
                ]
        except ray.exceptions.RayError as exc:  # an actor failed to start or crashed: say which, in one line
            cause = getattr(exc, "cause", None) or exc
            first = (str(cause).strip().splitlines() or [cause.__class__.__name__])[-1][:300]
            raise RayError(f"Ray job failed ({first}); outputs written so far are kept, rerun to resume") from None
        finally:
            ray.shutdown()

    return batches()
