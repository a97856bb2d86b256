"""The server's own cost: every server serves the near-zero-cost model (benchmarks/free_model.py), so what
is left is each server's per-request work.

    python -m benchmarks.server_cost [--model DIR] [--baseline REF] [--rounds 2] [--requests 1500] [--quick]
    python -m benchmarks.server_cost --layouts [--workers 1 2 3 4]   # req/s against CPU workers (GPU layouts)

Rows: req/s and p50/p99 at c=1/16/32 for a 128 px PNG, a 256 px PNG and a ~1.2 Mpx JPEG, for this
service, the previous main (a git worktree of REF), LitServe and Ray Serve, in alternating order over
rounds (each cell the median of its rounds), and each server's CPU seconds per request measured at
c=1, where the cores are not saturated. Writes benchmarks/results/server-cost-<date>.md/.json and a PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
import tempfile
from pathlib import Path

from benchmarks import peers, write_report
from loadtest import client
from loadtest.server import process, served

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCIES = (1, 16, 32)


def payload_sets(quick: bool = False) -> dict[str, list[bytes]]:
    """The uploads: real photos (skimage.data) at 128 and 256 px as PNG, and 1100 x 1100 (1.2 Mpx) as JPEG."""
    sets = {"128 px PNG": client.photos((128,), "PNG"), "256 px PNG": client.photos((256,), "PNG")}
    if not quick:
        sets["1.2 Mpx JPEG"] = client.photos((1100,), "JPEG")
    return sets


def _tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (children still alive)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def measure(url: str, pid: int, payloads: list[bytes], concurrency: int, n: int) -> dict:
    """n requests at `concurrency` after a warm-up: the client's summary, plus the server tree's CPU ms per request."""
    client.run(url, payloads, concurrency=concurrency, n=min(concurrency * 4, n), timeout=120)
    c0 = _tree_cpu(pid)
    results, wall = client.run(url, payloads, concurrency=concurrency, n=n, timeout=120)
    return {
        "concurrency": concurrency,
        **client.summary(results, wall),
        "cpu_ms_per_request": (_tree_cpu(pid) - c0) / n * 1000,
    }


@contextlib.contextmanager
def ours(model_dir: Path, cwd: Path = ROOT, variant: str = "fp32", **env):
    """`bentoml serve` of `model_dir` from the checkout `cwd`: yields (url, pid)."""
    with served(model_dir, cwd=cwd, SEG_VARIANT=variant, **env) as proc:
        yield proc.url, proc.pid


@contextlib.contextmanager
def peer(module: str, model_dir: Path, variant: str = "fp32"):
    """A peer server module (benchmarks.peers.*) over `model_dir`: yields (url, pid)."""
    cmd = [sys.executable, "-m", module, "--model", str(model_dir), "--variant", variant, "--port", "{port}"]
    with process(cmd, module, 240, stop_timeout=30) as (proc, url):
        yield url, proc.pid


def contenders(
    model_dir: Path, baseline_tree: Path | None, baseline: str | None, variant: str = "fp32"
) -> list[tuple[str, callable]]:
    """(name, start) of this service, the previous main (a worktree) and the installed peers, all serving
    `model_dir`'s `variant`; `start()` yields (url, pid)."""
    out = [("this service", lambda: ours(model_dir, variant=variant))]
    if baseline_tree is not None:
        out.append((f"previous main ({baseline[:7]})", lambda: ours(model_dir, cwd=baseline_tree, variant=variant)))
    for name, module in peers.available():
        out.append((name, lambda module=module: peer(module, model_dir, variant)))
    return out


def race(servers, sets: dict[str, list[bytes]], n: int, rounds: int, concurrencies=CONCURRENCIES) -> dict:
    """Every server over every payload set and concurrency, `rounds` times in alternating order; each cell
    is the median round (by req/s), with every round's req/s kept."""
    runs: dict[str, list[dict]] = {name: [] for name, _ in servers}
    for r in range(rounds):
        for name, start in servers if r % 2 == 0 else servers[::-1]:
            print(f"   round {r + 1}: {name}", flush=True)
            with start() as (url, pid):
                cells = {}
                for label, payloads in sets.items():
                    k = n if "Mpx" not in label else max(n // 5, 60)  # a large upload costs ~20x a small one
                    cells[label] = [
                        measure(url, pid, payloads, c, k if c > 1 else max(k // 4, 50)) for c in concurrencies
                    ]
                runs[name].append(cells)
    table: dict = {}
    for name, sweeps in runs.items():
        table[name] = {}
        for label in sets:
            row = []
            for i, _ in enumerate(concurrencies):
                cells = sorted((s[label][i] for s in sweeps), key=lambda x: x["rps"])
                row.append({**cells[len(cells) // 2], "rounds_rps": [s[label][i]["rps"] for s in sweeps]})
            table[name][label] = row
    return table


def layouts(model_dir: Path, workers: list[int], n: int, rounds: int) -> dict:
    """req/s of this service against SEG_WORKERS (each worker its own session: the GPU layout when the
    model costs what a GPU costs) at c=32, 128 and 256 px PNG."""
    sets = {k: v for k, v in payload_sets(quick=True).items()}
    servers = [(f"{w} worker{'s' if w > 1 else ''}", lambda w=w: ours(model_dir, SEG_WORKERS=w)) for w in workers]
    return race(servers, sets, n, rounds, concurrencies=(32,))


def to_markdown(report: dict) -> str:
    L = [
        f"# The server's own cost ({report['date']})",
        "",
        f"Machine: {report['machine']}. Model: the near-zero-cost graph built from "
        f"{report['source']} (`python -m benchmarks.free_model`): the export's inputs, outputs and metadata, a box blur, softmax, argmax. "
        f"Client (Python threads, keep-alive) and servers share the cores. {report['rounds']} rounds, servers in alternating order; each cell "
        "the median round.",
        "",
        f"Command: `{report['command']}`",
        "",
    ]
    for label in report["sets"]:
        L += [
            f"## {label}",
            "",
            "| server | "
            + " | ".join(f"c={c}: req/s (p50 / p99 ms)" for c in CONCURRENCIES)
            + " | CPU ms per request at c=1 | errors |",
            "|---|" + "---|" * (len(CONCURRENCIES) + 2),
        ]
        for name, rows in report["table"].items():
            xs = rows[label]
            L.append(
                f"| {name} | "
                + " | ".join(f"{x['rps']:.0f} ({x['p50']:.0f} / {x['p99']:.0f})" for x in xs)
                + f" | {xs[0]['cpu_ms_per_request']:.2f} | {sum(x['errors'] for x in xs)} |"
            )
        L += [
            "",
            "req/s per round: "
            + "; ".join(
                f"{name} " + ", ".join("/".join(f"{v:.0f}" for v in x["rounds_rps"]) for x in rows[label])
                for name, rows in report["table"].items()
            ),
            "",
        ]
        L += goal_lines(report["table"], label) + [""]
    if report.get("layouts"):
        L += [
            "## Layouts: req/s against CPU workers (c=32, each worker its own session)",
            "",
            "| workers | "
            + " | ".join(f"{label}: req/s (p99 ms)" for label in next(iter(report["layouts"].values())))
            + " |",
            "|---|" + "---|" * len(next(iter(report["layouts"].values()))),
        ]
        for name, rows in report["layouts"].items():
            L.append(
                f"| {name} | " + " | ".join(f"{r[0]['rps']:.0f} ({r[0]['p99']:.0f})" for r in rows.values()) + " |"
            )
        L.append("")
    return "\n".join(L) + "\n"


def goal_lines(table: dict, label: str) -> list[str]:
    """This service against LitServe at c=16 and c=32: the ratio (goal >= 1.3x) and the p99 (goal: no higher)."""
    lit = next((v for k, v in table.items() if k.startswith("LitServe")), None)
    if lit is None or "this service" not in table:
        return []
    out = []
    for i, c in enumerate(CONCURRENCIES):
        if c == 1:
            a, b = table["this service"][label][i], lit[label][i]
            out.append(f"- c=1: {a['rps'] / b['rps']:.2f}x LitServe (the lead at c=1 is to be kept)")
            continue
        a, b = table["this service"][label][i], lit[label][i]
        ratio = a["rps"] / b["rps"]
        out.append(
            f"- c={c}: {ratio:.2f}x LitServe's req/s (goal >= 1.3x: {'met' if ratio >= 1.3 else f'missed by {1.3 - ratio:.2f}'}); "
            f"p99 {a['p99']:.0f} vs {b['p99']:.0f} ms ({'met' if a['p99'] <= b['p99'] else 'higher: missed'})"
        )
    return out


def plot(report: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.5), squeeze=False)
    for ax, label in zip(axes[0], sets):
        for name, rows in report["table"].items():
            ax.plot(CONCURRENCIES, [x["rps"] for x in rows[label]], "o-", label=name)
        (
            ax.set_xscale("log", base=2),
            ax.set_title(label, fontsize=9),
            ax.set_xlabel("concurrency"),
            ax.set_ylabel("req/s"),
        )
    axes[0][0].legend(fontsize=7)
    fig.suptitle("near-zero-cost model: the server's own cost", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    from benchmarks.__main__ import baseline_checkout, cpu_peak
    from benchmarks.free_model import build

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        type=Path,
        default=ROOT / "exported_models" / "default",
        help="export whose metadata the free model copies",
    )
    p.add_argument("--baseline", metavar="REF", help="also serve this git ref (e.g. the previous main) from a worktree")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--requests", type=int, default=1500)
    p.add_argument("--quick", action="store_true", help="128 and 256 px only, fewer requests")
    p.add_argument("--layouts", action="store_true", help="only the workers sweep of this service")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3, 4])
    a = p.parse_args(argv)
    if not (a.model / "model.onnx").is_file():
        raise SystemExit(f"error: {a.model}: no model.onnx; build one with `python -m training demo` or pass --model")
    n = 300 if a.quick else a.requests
    with tempfile.TemporaryDirectory(prefix="free-model-") as tmp, contextlib.ExitStack() as stack:
        free = build(a.model, Path(tmp) / "free")
        report = {
            "date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "machine": cpu_peak()[1],
            "source": str(a.model),
            "rounds": a.rounds,
            "command": "python -m benchmarks.server_cost " + " ".join(argv if argv is not None else sys.argv[1:]),
        }
        if a.layouts:
            report["sets"], report["table"] = [], {}
            report["layouts"] = layouts(free, a.workers, n, a.rounds)
        else:
            sets = payload_sets(a.quick)
            tree = stack.enter_context(baseline_checkout(a.baseline)) if a.baseline else None
            report["sets"] = list(sets)
            report["table"] = race(contenders(free, tree, a.baseline), sets, n, a.rounds)
    name = "server-cost-layouts" if a.layouts else "server-cost"
    md = to_markdown(report)
    if report["sets"]:
        md += f"\n![server cost]({name}-{dt.date.today().isoformat()}.png)\n"
    out = write_report(name, md, report)
    if report["sets"]:
        plot(report, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
