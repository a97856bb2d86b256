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
from dataclasses import dataclass, field, fields
from pathlib import Path

from contract.metadata import DEFAULT_BATCH_SIZE, DEFAULT_MODEL_DIR
from contract.metrics import UNCERTAIN_BELOW

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


def _doc(default, meaning: str, shown: str | None = None):
    """A setting's default and what it means (the docs' configuration table is made from these)."""
    return field(default=default, metadata={"doc": meaning, "shown": shown})


@dataclass(frozen=True)
class ServeConfig:
    """What `bentoml serve serving.service:SegmentationService` does; each field is `SEG_<NAME>`."""

    model_dir: Path = _doc(DEFAULT_MODEL_DIR, "folder with `model.onnx` (+ variants)")
    model: str = _doc(
        "",
        "a folder or a BentoML model tag (`segmentation:latest`, registered with `python -m "
        "contract.store FOLDER` or `export --bentoml`); wins over `SEG_MODEL_DIR`",
        "unset",
    )
    device: str = _doc(
        "auto",
        "`auto`: CUDA where an NVIDIA GPU is (NVML or `/dev/nvidia*`, checked before any CUDA "
        "library loads) and CUDA really loads, else CPU; `cuda`: fail at start-up in one line without "
        "it; `cpu`. `GET /model` says why (`device_reason`)",
    )
    variant: str = _doc(
        "auto",
        "`auto`: the export's `model.int8.onnx` on CPU when it keeps the accuracy rule on this "
        "CPU (re-checked at start-up on the folder's `check/` images, else fp32), `model.fp16.onnx` on "
        "CUDA, else fp32; or `fp32`, `int8`, `fp16` (as asked, no re-check)",
    )
    threads: int = _doc(
        0, "ONNX Runtime intra-op threads per worker; threads x workers may not exceed the cores", "cores / workers"
    )
    workers: int = _doc(
        0,
        "worker processes; one per core (1 ONNX Runtime thread each), on a GPU host one per core up"
        f" to {GPU_WORKERS_MAX}, each with its own CUDA session",
        "one per core",
    )
    ort_spin: bool = _doc(
        False,
        "ONNX Runtime's intra-op threads spin-wait between runs (its own default); off, "
        "they leave the cores to decoding and HTTP",
    )
    max_batch_size: int = _doc(
        DEFAULT_BATCH_SIZE,
        "largest batch per ONNX Runtime call (1 = no batching); every size 1..N is warmed up before `/readyz`",
    )
    max_latency_ms: int = _doc(
        10_000,
        "admission budget: a request is refused with **503 + `Retry-After`** when the "
        "work queued on its worker and its own (model and pixel work) would not fit it, unless "
        "nothing is queued; once admitted it always finishes",
    )
    max_concurrency: int = _doc(
        256, "requests in flight per worker; beyond, **429 + `Retry-After: 1`** before the body is read"
    )
    max_tiles: int = _doc(2048, "model inputs (tiles) one request may need; beyond, **413** naming the cap")
    max_bytes: int = _doc(20_000_000, "largest upload (413 with advice)")
    max_pixels: int = _doc(40_000_000, "largest image, width x height, checked from the header before decoding (413)")
    timeout_s: int = _doc(300, "BentoML's per-request timeout; must exceed `SEG_MAX_LATENCY_MS`")
    offload_pixels: int = _doc(
        1_000_000,
        "images above this many pixels are decoded, resized and encoded in a worker "
        "thread, so the event loop keeps serving small requests",
    )
    tile_above: int = _doc(0, "tile automatically above this many pixels", "0 (off)")
    tile_overlap: int = _doc(0, "overlap between neighbouring tiles, in pixels", "0 (a quarter of a tile)")
    api_token: str = _doc(
        "",
        "when set, the inference routes and `/model` need `Authorization: Bearer <token>` (401 "
        "otherwise); health endpoints stay open",
        "unset",
    )
    uncertain_below: float = _doc(
        UNCERTAIN_BELOW,
        "a pixel whose top-1 class probability is below this counts as "
        "uncertain (`Seg-Uncertain-Fraction`; chosen on held-out data: docs/serving.md)",
    )
    drift_window: int = _doc(200, "answers in the rolling window `seg_drift` compares with the model's reference")
    reload_s: int = _doc(
        0, "poll the model source this often, in seconds, and serve a new version without a restart (0: never)"
    )
    capture_dir: str = _doc(
        "",
        "keep the uploads to label next here (`images/`, `masks/`, `codes.txt`, LabelMe JSON pre-annotations)",
        "unset (off)",
    )
    capture_below: float = _doc(0.8, "keep an upload whose answer's mean confidence is below this")
    capture_sample: float = _doc(0.0, "and this share of all uploads, at random")
    capture_max_files: int = _doc(1000, "at most this many images in `SEG_CAPTURE_DIR` (all workers together)")
    capture_max_bytes: int = _doc(1_000_000_000, "and at most this many bytes")
    # BentoML's per-request middleware: off by default on the inference routes, where they cost 10-20 % of the
    # server's own CPU per request (benchmarks.server_cost); /metrics counts requests either way
    access_log: bool = _doc(False, "BentoML's access log line per request (off: ~0.3 ms of CPU per request saved)")
    tracing: bool = _doc(
        False,
        "BentoML's OpenTelemetry spans for the inference routes (off: they are on its "
        "`tracing.excluded_urls`, ~0.5 ms of CPU per request saved)",
    )

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ConfigError(f"SEG_DEVICE={self.device!r}: use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"SEG_VARIANT={self.variant!r}: use {', '.join(VARIANTS[:-1])} or {VARIANTS[-1]}")
        for name in ("threads", "workers", "tile_above", "tile_overlap", "offload_pixels", "reload_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SEG_{name.upper()}={getattr(self, name)}: must be >= 0")
        positive = ("max_batch_size", "max_latency_ms", "max_concurrency", "max_tiles", "max_bytes", "max_pixels")
        for name in (*positive, "timeout_s", "drift_window", "capture_max_files", "capture_max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SEG_{name.upper()}={getattr(self, name)}: must be a positive integer")
        for name in ("uncertain_below", "capture_below", "capture_sample"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"SEG_{name.upper()}={getattr(self, name)}: use a number in [0, 1]")
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
    def markdown(cls) -> str:
        """The configuration table of docs/serving.md, made from the fields: variable, default, meaning."""
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        for f in fields(cls):
            d = f.default
            shown = f.metadata["shown"] or (f"`{str(d).lower()}`" if isinstance(d, bool) else f"`{d}`")
            rows.append(f"| `SEG_{f.name.upper()}` | {shown} | {f.metadata['doc']} |")
        return "\n".join(rows)

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
            elif kind is float:
                try:
                    kwargs[f.name] = float(raw)
                except ValueError:
                    raise ConfigError(f"{name}={raw!r}: must be a number") from None
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


if __name__ == "__main__":  # `python -m serving.config`: the table docs/serving.md holds
    print(ServeConfig.markdown())
