"""The server's own cost: every server serves the near-zero-cost model (benchmarks/free_model.py), so what
is left is each server's per-request work.

    python -m benchmarks.server_cost [--model DIR] [--baseline REF] [--rounds 2] [--requests 1500] [--quick]
        [--sets 128 256 1.2] [--no-peers] [--together 8]

Rows: req/s and p50/p99 at c=1/16/32 for a 128 px PNG, a 256 px PNG and a ~1.2 Mpx JPEG, for this service, the
previous main (a git worktree of REF), LitServe and Ray Serve, in alternating order over rounds (each cell the median
of its rounds), and each server's CPU ms per request at c=1, where the cores are not saturated. `--together K`: all
served at once, K bursts each per cell taking turns, a burst's CPU paired with the other's next to it (harness.race).
Writes benchmarks/results/server-cost.md/.json and a PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from benchmarks.free_model import build
from benchmarks.harness import (
    ROOT,
    baseline_checkout,
    contenders,
    payload_sets,
    plot,
    race,
    stamp,
    tables,
    write_report,
)
from contract import DEFAULT_MODEL_DIR


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / DEFAULT_MODEL_DIR, help="export whose metadata it copies")
    p.add_argument("--baseline", metavar="REF", help="also serve this git ref (e.g. the previous main) from a worktree")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--quick", action="store_true", help="128 and 256 px only, fewer requests")
    p.add_argument("--sets", nargs="+", choices=("128", "256", "1.2"), help="only these uploads (side or Mpx)")
    p.add_argument("--together", type=int, default=0, metavar="K", help="serve all at once, K bursts each per cell")
    p.add_argument("--no-peers", dest="peers", action="store_false", help="this service (and --baseline) only")
    a = p.parse_args(argv)
    if a.together < 0:
        raise SystemExit(f"error: --together {a.together}: give K >= 1 bursts per server and cell (0: one at a time)")
    if not (a.model / "model.onnx").is_file():
        raise SystemExit(f"error: {a.model}: no model.onnx; build one with `python -m training demo` or pass --model")
    n, sets = (300 if a.quick else a.requests), payload_sets(a.quick)
    sets = {k: v for k, v in sets.items() if not a.sets or k.split()[0] in a.sets}
    with tempfile.TemporaryDirectory(prefix="free-model-") as tmp, contextlib.ExitStack() as stack:
        free = build(a.model, Path(tmp) / "free")
        tree = stack.enter_context(baseline_checkout(a.baseline)) if a.baseline else None
        table = race(contenders(free, tree, a.baseline, peers=a.peers), sets, n, a.rounds, together=a.together)
    report = {"sets": list(sets), "table": table, "rounds": a.rounds, "together": a.together, "source": str(a.model)}
    L = [f"# The server's own cost ({stamp(argv, 'benchmarks.server_cost')})", "",
         f"The near-zero-cost graph built from {a.model} (benchmarks.free_model: the export's inputs, outputs and "
         f"metadata, a box blur, softmax, argmax) in every server. {a.rounds} rounds, servers in alternating order, "
         "each cell the median round" + (f" of all servers up at once, {a.together} bursts each per cell (the median "
         "burst)" if a.together else "") + "; client and servers share the cores.", "", *tables(report),
         "![server cost](server-cost.png)"]  # fmt: skip
    out = write_report("server-cost", "\n".join(L) + "\n", report)
    plot(report, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
