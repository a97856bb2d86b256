"""Serving configuration: one dataclass, defaults in code, environment variables override.

| variable            | default                  | meaning                                                        |
|---------------------|--------------------------|----------------------------------------------------------------|
| SEG_MODEL_DIR       | exported_models/default  | folder holding model.onnx (+ model.int8.onnx, model.fp16.onnx)   |
| SEG_DEVICE          | auto                     | auto (CUDA if it really loads, else CPU), cuda (fail without), cpu |
| SEG_VARIANT         | auto                     | auto (fp16 on CUDA, fp32 on CPU), fp32, int8, fp16             |
| SEG_THREADS         | cores / workers          | ONNX Runtime intra-op threads (threads x workers <= cores)     |
| SEG_WORKERS         | 1                        | BentoML worker processes                                       |
| SEG_MAX_BATCH_SIZE  | 8                        | adaptive batching: largest batch (1 turns batching off)        |
| SEG_MAX_LATENCY_MS  | 10000                    | adaptive batching: a request waiting longer is shed with 503   |
| SEG_MAX_BYTES       | 20000000                 | largest upload accepted (413 above)                            |
| SEG_MAX_PIXELS      | 40000000                 | largest decoded image (width x height) accepted (413 above)    |
| SEG_API_TOKEN       | (unset)                  | when set, inference endpoints need `Authorization: Bearer ...` |
| SEG_MAX_CONCURRENCY | 256                      | requests in flight per process; beyond it BentoML answers 503   |
| SEG_ACCESS_LOG      | true                     | one log line per request (about 1 ms of CPU each); false drops it |
| SEG_FAST_PATH       | true                     | answer image routes in the edge middleware (false: through BentoML's IO layer) |
| SEG_TILE_ABOVE      | 0 (off)                  | images with more pixels than this are segmented by tiles        |
| SEG_TILE_OVERLAP    | 0 (a quarter of the tile)| overlap between neighbouring tiles, in pixels                   |
"""
from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, fields
from pathlib import Path


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _has_gpu() -> bool:
    """An NVIDIA device node (what the container runtime mounts for a GPU). onnxruntime-gpu lists
    CUDAExecutionProvider even without one, so the provider list cannot tell."""
    import glob

    return bool(glob.glob("/dev/nvidia[0-9]*"))


@dataclass(frozen=True)
class ServeConfig:
    model_dir: Path = Path("exported_models/default")
    device: str = "auto"
    variant: str = "auto"
    threads: int = 0  # 0: cores // workers
    workers: int = 0  # 0: one per core on a CPU host, 1 where a GPU is (see resolved_workers)
    max_batch_size: int = 8
    max_latency_ms: int = 10000
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    api_token: str | None = None
    tile_above: int = 0
    tile_overlap: int = 0
    max_concurrency: int = 256
    access_log: str = "true"
    fast_path: str = "true"
    tracing: str = "true"  # false: BentoML's OpenTelemetry middleware skips the inference routes

    def __post_init__(self):
        if self.device not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"SEG_DEVICE={self.device!r}: use auto, cuda or cpu")
        if self.variant not in ("auto", "fp32", "int8", "fp16"):
            raise ConfigError(f"SEG_VARIANT={self.variant!r}: use auto, fp32, int8 or fp16")
        if self.workers < 0:
            raise ConfigError(f"SEG_WORKERS={self.workers}: must be >= 0 (0 = one per core on CPU, 1 on GPU)")
        for name in ("max_batch_size", "max_latency_ms", "max_bytes", "max_pixels", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SEG_{name.upper()}={getattr(self, name)}: must be a positive integer")
        for name in ("access_log", "fast_path", "tracing"):
            if getattr(self, name).lower() not in ("true", "false"):
                raise ConfigError(f"SEG_{name.upper()}={getattr(self, name)!r}: use true or false")
        if self.tile_above < 0 or self.tile_overlap < 0:
            raise ConfigError("SEG_TILE_ABOVE and SEG_TILE_OVERLAP must be >= 0")
        if self.threads < 0:
            raise ConfigError(f"SEG_THREADS={self.threads}: must be >= 0 (0 = cores / workers)")
        if self.threads * self.resolved_workers > _cores():
            raise ConfigError(f"SEG_THREADS={self.threads} x SEG_WORKERS={self.resolved_workers} exceeds the {_cores()} cores; lower one of them")

    def token_ok(self, authorization: str) -> bool:
        """True when no token is set, or the Authorization header carries it (constant-time compare)."""
        if not self.api_token:
            return True
        return hmac.compare_digest(authorization.encode(), f"Bearer {self.api_token}".encode())

    @property
    def resolved_workers(self) -> int:
        """Worker processes. Unset on a CPU host: one per core, each with one ONNX Runtime thread; measured
        here at concurrency 16-32 that beats one process with two threads by 25-45 % (decode, encode and
        HTTP of one request overlap the model run of another), at ~15 % less at concurrency 1. Where a
        GPU is (SEG_DEVICE=cuda, or auto with an NVIDIA device node): one, so one CUDA context."""
        if self.workers:
            return self.workers
        if self.device == "cuda" or (self.device == "auto" and _has_gpu()):
            return 1
        return max(1, _cores() // max(self.threads, 1))

    @property
    def intra_op_threads(self) -> int:
        return self.threads or max(1, _cores() // self.resolved_workers)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "ServeConfig":
        env = os.environ if env is None else env
        kwargs = {}
        for f in fields(cls):
            raw = env.get(f"SEG_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            if f.type in ("int", int):
                try:
                    kwargs[f.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"SEG_{f.name.upper()}={raw!r}: must be an integer") from None
            elif f.name == "model_dir":
                kwargs[f.name] = Path(raw)
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)
