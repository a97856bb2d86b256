"""Serving configuration: one typed dataclass, defaults in code, `SEG_*` environment variables override.

Every setting the service reads is a field here, and the README's configuration table lists exactly
these (tests/serving/test_config.py checks both ways). The service reads the environment once, when
`serving.service` is imported; a bad value never raises there: it is kept as `error` and stops
`bentoml serve` at start-up in one line (see `SegmentationService.check_deployment`).
"""

from __future__ import annotations

import hmac
import os
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from contract.metadata import DEFAULT_BATCH_SIZE, DEFAULT_MODEL_DIR

from .runtime import DEVICES, VARIANTS

# each worker on a GPU host holds a CUDA context and its own memory arena (hundreds of MB of device memory)
GPU_WORKERS_MAX = 8
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class ConfigError(ValueError):
    """A setting has a value that cannot be used; the message names the variable and what to use."""


def parse_bool(name: str, raw: str) -> bool:
    """ "true/1/yes/on" or "false/0/no/off" (any case) -> bool; anything else raises ConfigError naming `name`."""
    value = str(raw).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: use true or false")


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def has_gpu() -> bool:
    """An NVIDIA GPU on this host (serving.runtime.nvidia_gpus: NVML or the device nodes; no CUDA library loaded)."""
    from .runtime import nvidia_gpus

    return nvidia_gpus()[0] > 0


@dataclass(frozen=True)
class ServeConfig:
    """What `bentoml serve serving.service:SegmentationService` does; each field is `SEG_<NAME>`."""

    model_dir: Path = DEFAULT_MODEL_DIR  # folder with model.onnx (+ variants)
    model: str = ""  # a folder or a BentoML model tag (segmentation:latest); wins over model_dir when set
    device: str = "auto"  # auto | cuda | cpu
    variant: str = "auto"  # auto (int8 on CPU when exported, fp16 on CUDA, else fp32) | fp32 | int8 | fp16
    threads: int = 0  # ONNX Runtime intra-op threads per worker; 0 = cores // workers
    workers: int = (
        0  # worker processes; 0 = one per core (a GPU host: at most GPU_WORKERS_MAX, each its own CUDA session)
    )
    ort_spin: bool = False  # ONNX Runtime threads spin-wait between runs (its own default is on)
    max_batch_size: int = DEFAULT_BATCH_SIZE  # largest batch per ONNX Runtime call (1 = no batching)
    max_latency_ms: int = 10_000  # admission: the model work queued ahead of a request must fit this
    max_concurrency: int = 256  # requests in flight per worker; beyond, 429 + Retry-After
    max_tiles: int = 2048  # model inputs (tiles) one request may need; beyond, 413
    max_bytes: int = 20_000_000  # largest upload (413 above)
    max_pixels: int = 40_000_000  # largest image, width x height, read from the header (413 above)
    timeout_s: int = 300  # BentoML's per-request timeout (504); must exceed the largest admitted request
    offload_pixels: int = 1_000_000  # images above this many pixels are decoded/resized/encoded off the event loop
    tile_above: int = 0  # tile automatically above this many pixels (0 = only with ?tile=true)
    tile_overlap: int = 0  # overlap between neighbouring tiles in pixels (0 = a quarter of a tile)
    api_token: str = ""  # when set, the inference routes and /model need `Authorization: Bearer <token>`
    # BentoML's per-request middleware: off by default on the inference routes, where they cost 10-20 %
    # of the server's own CPU per request (benchmarks/results/server-cost-*); /metrics counts requests either way
    access_log: bool = False  # BentoML's access log line per request
    tracing: bool = False  # BentoML's OpenTelemetry spans for the inference routes

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigError(f"SEG_DEVICE={self.device!r}: use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"SEG_VARIANT={self.variant!r}: use {', '.join(VARIANTS[:-1])} or {VARIANTS[-1]}")
        for name in ("threads", "workers", "tile_above", "tile_overlap", "offload_pixels"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SEG_{name.upper()}={getattr(self, name)}: must be >= 0")
        for name in (
            "max_batch_size",
            "max_latency_ms",
            "max_concurrency",
            "max_tiles",
            "max_bytes",
            "max_pixels",
            "timeout_s",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"SEG_{name.upper()}={getattr(self, name)}: must be a positive integer")
        if self.timeout_s * 1000 <= self.max_latency_ms:
            raise ConfigError(
                f"SEG_TIMEOUT_S={self.timeout_s} must exceed SEG_MAX_LATENCY_MS={self.max_latency_ms} (in seconds), "
                "or admitted requests could time out"
            )
        if self.threads * self.resolved_workers > cores():
            raise ConfigError(
                f"SEG_THREADS={self.threads} x SEG_WORKERS={self.resolved_workers} exceeds the {cores()} cores; lower "
                "one of them"
            )

    @property
    def resolved_workers(self) -> int:
        """Worker processes. Unset on a CPU host: one per core, each with one ONNX Runtime thread (+25-45 %
        req/s at concurrency 16-32 over one process with two threads). Where a GPU is (SEG_DEVICE=cuda, or
        auto with an NVIDIA device node): one per core as well, up to GPU_WORKERS_MAX, each with its own
        CUDA session, so that every core does the HTTP, decode and encode that keep the GPU fed (one
        process was measured to cap the server's own work at one core: benchmarks/results/server-cost-*)."""
        if self.workers:
            return self.workers
        if self.device == "cuda" or (self.device == "auto" and has_gpu()):
            return max(1, min(cores(), GPU_WORKERS_MAX))
        return max(1, cores() // max(self.threads, 1))

    @property
    def model_source(self) -> str:
        """What to load: SEG_MODEL (a folder or a BentoML tag) when set, else SEG_MODEL_DIR."""
        return self.model or str(self.model_dir)

    @property
    def intra_op_threads(self) -> int:
        return self.threads or max(1, cores() // self.resolved_workers)

    def token_ok(self, authorization: str) -> bool:
        """True when no token is set, or the Authorization header carries it (constant-time compare)."""
        if not self.api_token:
            return True
        return hmac.compare_digest(authorization.encode(), f"Bearer {self.api_token}".encode())

    @classmethod
    def env_names(cls) -> list[str]:
        """Every environment variable the service reads."""
        return [f"SEG_{f.name.upper()}" for f in fields(cls)]

    @classmethod
    def from_env(cls, env: typing.Mapping[str, str] | None = None) -> "ServeConfig":
        """Defaults overridden by the `SEG_*` variables of `env` (default: os.environ); ConfigError names a bad one."""
        env = os.environ if env is None else env
        kwargs = {}
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            name = f"SEG_{f.name.upper()}"
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind = hints[f.name]
            if kind is bool:
                kwargs[f.name] = parse_bool(name, raw)
            elif kind is int:
                try:
                    kwargs[f.name] = int(raw)
                except ValueError:
                    raise ConfigError(f"{name}={raw!r}: must be an integer") from None
            elif kind is Path:
                kwargs[f.name] = Path(raw)
            else:
                kwargs[f.name] = raw
        return cls(**kwargs)

    @classmethod
    def load(cls, env: typing.Mapping[str, str] | None = None) -> tuple["ServeConfig", ConfigError | None]:
        """(config, None), or (the defaults, the error) when a setting is bad: the caller decides when to stop."""
        try:
            return cls.from_env(env), None
        except ConfigError as exc:
            return cls(), exc


__all__ = ["ConfigError", "ServeConfig", "cores", "has_gpu", "parse_bool"]
