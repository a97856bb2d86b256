"""Peer servers for the benchmark: the same model, variant and per-request work, served by LitServe and
Ray Serve as their documentation shows. Each is started as `python -m benchmarks.peers.<name> --model DIR
--variant V --port P` and answers POST /segment (multipart field `image`) with the palette PNG mask."""

from __future__ import annotations

PEERS = (
    ("LitServe (2 workers, batch 8)", "benchmarks.peers.litserve_server", "litserve"),
    ("Ray Serve (2 replicas, @serve.batch 8)", "benchmarks.peers.rayserve_server", "ray.serve"),
)


def available() -> list[tuple[str, str]]:
    """(name, module) of each peer whose framework is installed; the others are named as skipped."""
    import importlib

    out = []
    for name, module, needs in PEERS:
        try:
            importlib.import_module(needs)
        except ImportError:
            print(f"   {name}: {needs} not installed (pip install '.[bench]'), skipped", flush=True)
            continue
        out.append((name, module))
    return out
