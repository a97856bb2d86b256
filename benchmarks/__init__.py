"""Benchmarks: each script prints its table and writes a report under benchmarks/results/."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(name: str, md: str, data) -> Path:
    """Print `md` and write it to benchmarks/results/<name>-<date>.md, `data` beside it as .json; the .md path."""
    out = RESULTS / f"{name}-{dt.date.today().isoformat()}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps(data, indent=2, default=float))
    print(md)
    print(f"report: {out}")
    return out


def cpu_features() -> str:
    """The machine and the x86 features that pick ONNX Runtime's int8 kernels and fit's precision, e.g. "x86_64, avx2, avx512f, avx512_vnni"."""
    import platform

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{platform.machine()}, {', '.join(feats) or 'no AVX2'}"
