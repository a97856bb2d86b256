"""What every benchmark shares: paths, reports, photos, servers, load, the race between servers, the CPU. Benchmarks
import this module; it imports none of them (as pytest's conftest.py or asv's benchmarks/ hold their fixtures)."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from benchmarks.peers import available as available_peers
from loadtest import client, server
from loadtest.server import ROOT, process, served  # noqa: F401  (re-exported for the benchmarks)

RESULTS = server.RESULTS  # a name of its own here: the tests point the benchmarks' reports elsewhere


def write_report(name: str, md: str, data) -> Path:
    """Print `md` and write it to benchmarks/results/<name>.md, `data` beside it as .json (the history is git's)."""
    return server.write_report(name, md, data, RESULTS)


def stamp(argv: list[str] | None, module: str) -> str:
    """The line every report starts with: when, on what, and the command that made it."""
    args = " ".join(argv if argv is not None else sys.argv[1:])
    return f"{dt.datetime.now():%Y-%m-%d %H:%M}, {cpu_features()}: `python -m {module} {args}`"


def cpu_features() -> str:
    """The machine and the x86 features that pick ONNX Runtime's int8 kernels and fit's precision."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in flags.splitlines() if ln.startswith("model name")), "")
    feats = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{platform.machine()} {model}, {len(os.sched_getaffinity(0))} cores, {', '.join(feats) or 'no AVX2'}"


def photos(size: int, fmt: str = "PNG") -> list[bytes]:
    """Four skimage.data photos squished to size x size, as PNG (zlib level 1) or JPEG (quality 90)."""
    return client.photos((size,), fmt)


def load(url: str, payloads: list[bytes], concurrency: int, n: int, route: str = "/segment") -> dict:
    """n requests at `concurrency` (after a warm-up round): req/s, p50/p95/p99 ms, errors."""
    kw = dict(concurrency=concurrency, n=n, route=route, timeout=120, warmup=min(concurrency, n))
    results, wall = client.run(url, payloads, **kw)
    return {"concurrency": concurrency, **client.summary(results, wall)}


@contextlib.contextmanager
def baseline_checkout(ref: str):
    """A detached git worktree of `ref` (e.g. the previous main), removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="seg-baseline-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, capture_output=True)


def run(cmd: list[str]) -> None:
    """Run a command of the project's (echoed), or stop the benchmark in one line when it fails."""
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=ROOT).returncode:
        raise SystemExit(f"error: `{' '.join(cmd)}` failed")


def rss_mb(pids: list[int]) -> list[float]:
    """Resident memory of each process, MB."""
    return [psutil.Process(pid).memory_info().rss / 2**20 for pid in pids]


def children(pid: int) -> list[int]:
    """Every descendant process of `pid`."""
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


# The race: servers (this one, a previous main, the peers) over upload sets and concurrencies, in alternating rounds.
CONCURRENCIES = (1, 16, 32)


def payload_sets(quick: bool = False) -> dict[str, list[bytes]]:
    """The uploads: real photos (skimage.data) at 128 and 256 px as PNG, and 1100 x 1100 (1.2 Mpx) as JPEG."""
    sets = {"128 px PNG": client.photos((128,), "PNG"), "256 px PNG": client.photos((256,), "PNG")}
    if not quick:
        sets["1.2 Mpx JPEG"] = client.photos((1100,), "JPEG")
    return sets


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (children still alive)."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        for p in [root := psutil.Process(pid), *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(p.cpu_times()[:2])
    return total


def measure(url: str, pid: int, payloads: list[bytes], concurrency: int, n: int, warm: bool = True) -> dict:
    """n requests at `concurrency` after >= 40 warm-up ones: the client's summary, the server tree's CPU ms each."""
    if warm:
        client.run(url, payloads, concurrency=concurrency, n=min(max(concurrency * 4, 40), n), timeout=120)
    c0 = tree_cpu(pid)
    results, wall = client.run(url, payloads, concurrency=concurrency, n=n, timeout=120)
    cpu = (tree_cpu(pid) - c0) / n * 1000
    return {"concurrency": concurrency, **client.summary(results, wall), "cpu_ms_per_request": cpu}


@contextlib.contextmanager
def ours(model_dir: Path, cwd: Path = ROOT, variant: str = "fp32", **env):
    """`bentoml serve` of `model_dir` from the checkout `cwd`: yields (url, pid)."""
    with served(model_dir, cwd=cwd, SEG_VARIANT=variant, **env) as proc:
        yield proc.url, proc.pid


@contextlib.contextmanager
def peer(module: str, model_dir: Path, variant: str = "fp32"):
    """A peer server module (benchmarks.peers.*) over `model_dir`: yields (url, pid) once its /readyz answers."""
    cmd = [sys.executable, "-m", module, "--model", str(model_dir), "--variant", variant, "--port", "{port}"]
    with process(cmd, module, 240, stop_timeout=30) as (proc, url):
        yield url, proc.pid


def contenders(
    model_dir: Path, baseline_tree: Path | None, baseline: str | None, variant: str = "fp32", peers: bool = True
) -> list:
    """(name, start) of this service, the previous main (a worktree) and (with `peers`) the installed peers, all
    serving `model_dir`'s `variant`; `start()` yields (url, pid)."""
    out = [("this service", lambda: ours(model_dir, variant=variant))]
    if baseline_tree is not None:
        out.append((f"previous main ({baseline[:7]})", lambda: ours(model_dir, cwd=baseline_tree, variant=variant)))
    for name, module in available_peers() if peers else []:
        out.append((name, lambda module=module: peer(module, model_dir, variant)))
    return out


def race(servers, sets: dict[str, list[bytes]], n: int, rounds: int, concurrencies=CONCURRENCIES, together=0) -> dict:
    """Every server over every payload set and concurrency, `rounds` times in alternating order; each cell is the
    median round (by req/s), with every round's req/s and CPU kept. `together` > 0: each round serves them all at once,
    every cell in `together` bursts each taking turns, a burst kept as a round: what loads the host then loads both."""
    runs: dict[str, list[dict]] = {name: [] for name, _ in servers}
    for r in range(rounds):
        order = servers if r % 2 == 0 else servers[::-1]  # together: who starts first alternates too
        for group in [order] if together else [[s] for s in order]:
            print(f"   round {r + 1}: {', '.join(name for name, _ in group)}", flush=True)
            with contextlib.ExitStack() as stack:
                up = [(name, *stack.enter_context(start())) for name, start in group]
                sweeps = {name: [{label: [] for label in sets} for _ in range(max(together, 1))] for name, *_ in up}
                for label, payloads in sets.items():
                    k = n if "Mpx" not in label else max(n // 5, 60)  # a large upload costs ~20x a small one
                    m = {c: k if c > 1 else max(k // 4, 50) for c in concurrencies}
                    for c, b, i in itertools.product(concurrencies, range(max(together, 1)), range(len(up))):
                        name, url, pid = (up if b % 2 == 0 else up[::-1])[i]  # who goes first alternates by burst
                        sweeps[name][b][label].append(measure(url, pid, payloads, c, m[c], warm=b == 0))
            for name, bursts in sweeps.items():
                runs[name] += bursts

    def median(sweeps, label, i):
        cells = sorted((s[label][i] for s in sweeps), key=lambda x: x["rps"])
        rounds = {"rounds_rps": [s[label][i]["rps"] for s in sweeps],
                  "rounds_cpu": [s[label][i]["cpu_ms_per_request"] for s in sweeps]}  # fmt: skip
        return {**cells[len(cells) // 2], **rounds}

    return {name: {label: [median(sweeps, label, i) for i in range(len(concurrencies))] for label in sets}
            for name, sweeps in runs.items()}  # fmt: skip


def tables(report: dict) -> list[str]:
    """A table per upload set: each server's req/s and p50 / p99 at every concurrency, its CPU per request at c=1,
    the req/s of every round, and this service against LitServe."""
    L = []
    for label in report["sets"]:
        conc = " | ".join(f"c={c}: req/s (p50 / p99 ms)" for c in CONCURRENCIES)
        L += [f"## {label}", "", f"| server | {conc} | CPU ms per request at c=1 | errors |",
              "|---|" + "---|" * (len(CONCURRENCIES) + 2)]  # fmt: skip
        for name, rows in report["table"].items():
            xs = rows[label]
            cells = " | ".join(f"{x['rps']:.0f} ({x['p50']:.0f} / {x['p99']:.0f})" for x in xs)
            L.append(f"| {name} | {cells} | {xs[0]['cpu_ms_per_request']:.2f} | {sum(x['errors'] for x in xs)} |")
        per_round = "; ".join(
            f"{name} " + ", ".join("/".join(f"{v:.0f}" for v in x["rounds_rps"]) for x in rows[label])
            for name, rows in report["table"].items()
        )
        L += ["", f"req/s per round: {per_round}", "", *goal_lines(report["table"], label),
              *change_lines(report["table"], label, report.get("together", 0)), ""]  # fmt: skip
    return L


def goal_lines(table: dict, label: str) -> list[str]:
    """This service against LitServe at c=16 and c=32: the ratio (goal >= 1.3x) and the p99 (goal: no higher)."""
    lit = next((v for k, v in table.items() if k.startswith("LitServe")), None)
    if lit is None or "this service" not in table:
        return []
    out = []
    for i, c in enumerate(CONCURRENCIES):
        a, b = table["this service"][label][i], lit[label][i]
        ratio = a["rps"] / b["rps"]
        if c == 1:
            out.append(f"- c=1: {ratio:.2f}x LitServe (the lead at c=1 is to be kept)")
            continue
        goal = "met" if ratio >= 1.3 else f"missed by {1.3 - ratio:.2f}"
        p99 = "met" if a["p99"] <= b["p99"] else "higher: missed"
        out.append(f"- c={c}: {ratio:.2f}x LitServe's req/s (goal >= 1.3x: {goal}); "
                   f"p99 {a['p99']:.0f} vs {b['p99']:.0f} ms ({p99})")  # fmt: skip
    return out


def change_lines(table: dict, label: str, together: int = 0) -> list[str]:
    """This service against the previous main per concurrency: req/s (median round) and the server's CPU ms per
    request (median over rounds), in per cent (the cost goal: CPU no more than +3 %, req/s no lower)."""
    before = next((v[label] for k, v in table.items() if k.startswith("previous main")), None)
    if before is None or "this service" not in table:
        return []
    cpu = [[statistics.median(x["rounds_cpu"]) for x in rows] for rows in (table["this service"][label], before)]
    out = []
    for c, a, b, ca, cb in zip(CONCURRENCIES, table["this service"][label], before, *cpu):
        out.append(f"- c={c} against the previous main: req/s {a['rps'] / b['rps'] - 1:+.1%}, server CPU per request "
                   f"{ca:.2f} vs {cb:.2f} ms ({ca / cb - 1:+.1%})")  # fmt: skip
        if together:  # served at once: a burst against the other's next to it; by round, who starts first alternates
            q = [x / y - 1 for x, y in zip(a["rounds_cpu"], b["rounds_cpu"])]
            by = ", ".join(f"{statistics.median(q[i : i + together]):+.1%}" for i in range(0, len(q), together))
            out[-1] += (f"; bursts paired: {statistics.median(q):+.1%} (median of {len(q)}, this one lower in "
                        f"{sum(v < 0 for v in q)}; by round: {by})")  # fmt: skip
    return out


def plot(report: dict, out: Path, title: str = "near-zero-cost model: the server's own cost") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = report["sets"]
    fig, axes = plt.subplots(1, len(sets), figsize=(4 * len(sets), 3.5), squeeze=False)
    for ax, label in zip(axes[0], sets):
        for name, rows in report["table"].items():
            ax.plot(CONCURRENCIES, [x["rps"] for x in rows[label]], "o-", label=name)
        ax.set_xscale("log", base=2), ax.set_title(label, fontsize=9), ax.set_xlabel("concurrency")  # fmt: skip
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
