"""The server-cost benchmark's pieces: the near-zero-cost model keeps the export's contract, the report's
goal lines, and the GPU check's answer on a host without CUDA."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from contract_model import make_contract_model

from benchmarks import harness
from benchmarks.free_model import build
from benchmarks.gpu import mean_batch
from benchmarks.gpu import to_markdown as gpu_markdown
from benchmarks.harness import change_lines, goal_lines, race, tables
from loadtest.server import ROOT
from serving.runtime import SegmentationRuntime


@pytest.mark.parametrize("dynamic", [True, False])
def test_free_model_keeps_the_exports_contract_and_metadata(tmp_path, dynamic):
    meta = {
        "dynamic_hw": str(dynamic).lower(),
        "classes": json.dumps(["a", "b", "c", "d"]),
        "colours": json.dumps([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]]),
        "metrics": json.dumps({"dice_fg": 0.9}),
    }
    make_contract_model(tmp_path / "src" / "model.onnx", 64, metadata=meta)
    free = build(tmp_path / "src", tmp_path / "free")
    rt = SegmentationRuntime.load(free, "cpu", "auto", threads=1)  # the service's own contract checks
    assert (
        rt.meta.classes == ("a", "b", "c", "d")
        and rt.meta.dynamic_hw is dynamic
        and rt.meta.metrics == {"dice_fg": 0.9}
    )
    shape = (3, 96, 160, 3) if dynamic else (3, 64, 64, 3)
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    masks, probs = rt.run_scores(x)
    assert masks.shape == shape[:3] and masks.dtype == np.uint8 and probs.shape == (3, 4, *shape[1:3])
    assert np.array_equal(masks, probs.argmax(axis=1)) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    if not dynamic:
        with pytest.raises(Exception):
            ort.InferenceSession(str(free / "model.onnx")).run(None, {"image": np.zeros((1, 96, 64, 3), np.uint8)})


def _cells(rps, p99):
    return [
        {
            "concurrency": c,
            "rps": r,
            "p50": p / 2,
            "p95": p,
            "p99": p,
            "errors": 0,
            "cpu_ms_per_request": 2.0,
            "rounds_rps": [r, r],
        }
        for c, r, p in zip((1, 16, 32), rps, p99)
    ]


def test_report_states_each_goal_met_or_missed_by_how_much():
    table = {
        "this service": {"256 px PNG": _cells([100, 390, 400], [20, 60, 150])},
        "LitServe (2 workers, batch 8)": {"256 px PNG": _cells([50, 300, 400], [30, 68, 110])},
    }
    lines = goal_lines(table, "256 px PNG")
    assert lines[0] == "- c=1: 2.00x LitServe (the lead at c=1 is to be kept)"
    assert lines[1].startswith("- c=16: 1.30x LitServe's req/s (goal >= 1.3x: met); p99 60 vs 68 ms (met)")
    assert lines[2].startswith(
        "- c=32: 1.00x LitServe's req/s (goal >= 1.3x: missed by 0.30); p99 150 vs 110 ms (higher: missed)"
    )
    md = "\n".join(tables({"sets": ["256 px PNG"], "table": table}))
    assert "| this service | 100 (10 / 20) | 390 (30 / 60) | 400 (75 / 150) | 2.00 | 0 |" in md


def test_race_together_serves_both_at_once_and_pairs_each_burst_with_the_others(monkeypatch):
    """--together: both servers up at once in every round (who starts first alternating), every cell measured in K
    bursts each taking turns, each burst kept as a round; the report pairs a burst's CPU with the other's."""
    import contextlib

    calls, started, alive = [], [], set()

    def server(name, pid):
        @contextlib.contextmanager
        def start():
            started.append(name), alive.add(name)
            yield f"http://{name}", pid
            alive.discard(name)

        return name, start

    def measure(url, pid, payloads, c, n, warm=True):
        assert alive == {"this service", "previous main (abc)"}  # every burst runs with both servers up
        calls.append((url, c, warm))
        cpu = 2.0 if pid == 1 else 2.5  # this service a fifth cheaper on every burst
        return {"concurrency": c, "rps": 100.0, "p50": 1.0, "p99": 2.0, "errors": 0, "cpu_ms_per_request": cpu}

    monkeypatch.setattr(harness, "measure", measure)
    servers = [server("this service", 1), server("previous main (abc)", 2)]
    table = race(servers, {"256 px PNG": [b"x"]}, 200, rounds=2, concurrencies=(1, 16, 32), together=3)
    assert started == ["this service", "previous main (abc)", "previous main (abc)", "this service"]
    assert len(calls) == 2 * 3 * 3 * 2  # rounds x concurrencies x bursts x servers
    this, prev = "http://this service", "http://previous main (abc)"
    assert [u for u, _, _ in calls[:6]] == [this, prev, prev, this, this, prev]  # who goes first alternates by burst
    assert [w for _, _, w in calls[:6]] == [True, True, False, False, False, False]  # warmed once per cell
    assert [len(x["rounds_cpu"]) for x in table["this service"]["256 px PNG"]] == [6, 6, 6]  # 2 rounds x 3 bursts
    lines = change_lines(table, "256 px PNG", together=3)
    assert lines[0] == (
        "- c=1 against the previous main: req/s +0.0%, server CPU per request 2.00 vs 2.50 ms (-20.0%); bursts paired:"
        " -20.0% (median of 6, this one lower in 6; by round: -20.0%, -20.0%)"
    )
    assert "bursts paired" not in change_lines(table, "256 px PNG")[0]  # whole rounds: no pairing claimed


def test_gpu_check_reads_mean_batch_from_metrics_and_reports_na_without_nvidia_smi():
    text = (
        '# HELP seg_batch_size x\nseg_batch_size_bucket{le="1.0"} 3.0\nseg_batch_size_sum 40.0\nseg_batch_size_count '
        "5.0\n"
        'seg_batch_size_sum{worker="2"} 8.0\nseg_batch_size_count{worker="2"} 3.0\n'
    )
    assert mean_batch(text) == (48.0, 8.0)
    md = gpu_markdown(
        [
            {
                "variant": "fp16",
                "size": 128,
                "concurrency": 16,
                "rps": 900.0,
                "p50": 10.0,
                "p99": 30.0,
                "errors": 0,
                "mean_batch": 6.5,
                "gpu_util": None,
            }
        ],
        ROOT,
    )
    assert "| fp16 | 128 px PNG | 16 | 900 | 10 | 30 | 6.5 | n/a | 0 |" in md


def test_gpu_check_on_a_host_without_cuda_ends_in_one_line_and_exit_2(rule_model_dir):
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--model", str(rule_model_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode == 0:  # pragma: no cover - a CUDA host
        pytest.skip("this host has CUDA: the check ran")
    lines = (r.stdout + r.stderr).strip().splitlines()
    assert (
        r.returncode == 2
        and len(lines) == 1
        and lines[0].startswith("benchmarks.gpu: no CUDA here, nothing measured: ")
    )


def test_server_cost_refuses_a_negative_burst_count_in_one_line():
    from benchmarks.server_cost import main

    with pytest.raises(SystemExit, match=r"^error: --together -2: give K >= 1 bursts per server and cell"):
        main(["--together", "-2"])
