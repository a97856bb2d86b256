"""The benchmark harness and the small pieces of the benchmarks that need no long run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import harness


def test_reports_are_written_once_per_benchmark_with_their_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    out = harness.write_report("thing", "# T\n\n| a |\n", {"x": 1.5})
    assert out == tmp_path / "thing.md" and out.read_text() == "# T\n\n| a |\n"
    assert json.loads((tmp_path / "thing.json").read_text()) == {"x": 1.5}
    assert "report: " in capsys.readouterr().out
    line = harness.stamp(["--quick"], "benchmarks.thing")
    assert line.endswith("`python -m benchmarks.thing --quick`") and "cores" in line


def test_process_tree_memory_is_read_from_proc():
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50_000_000); time.sleep(30)"])
    try:
        for _ in range(100):
            if harness.rss_mb([child.pid])[0] > 50:
                break
            __import__("time").sleep(0.05)
        assert child.pid in harness.children(os.getpid())
        (rss,) = harness.rss_mb([child.pid])
        assert 50 < rss < 500
    finally:
        child.kill()
        child.wait()


def test_no_benchmark_imports_another_but_the_harness_and_the_peers():
    """benchmarks/: entry points on one harness; nothing imports back from an entry point (no circles)."""
    root = Path(harness.__file__).parent
    allowed = {"benchmarks.harness", "benchmarks.peers", "benchmarks.free_model"}
    for f in root.rglob("*.py"):
        for line in f.read_text().splitlines():
            words = line.split()
            if line.lstrip().startswith(("from benchmarks", "import benchmarks")):
                target = words[1]
                assert target in allowed or target.startswith("benchmarks.peers"), f"{f.name}: {line.strip()}"
    harness_imports = [ln for ln in (root / "harness.py").read_text().splitlines() if ln.startswith("from benchmarks")]
    assert harness_imports == ["from benchmarks.peers import available as available_peers"]


def test_locust_kit_runs_headless_against_a_real_server(rule_model_dir):
    """The locustfile, run the documented way for a few seconds: every request must pass its checks.
    (A subprocess: locust monkey-patches sockets and threads with gevent when it is imported.)"""
    from loadtest.server import ROOT, served

    locust = str(Path(sys.executable).with_name("locust"))
    cmd = [locust, "-f", "loadtest/locustfile.py", "--headless", "-u", "4", "-r", "4", "-t", "6s", "--only-summary"]
    with served(rule_model_dir) as proc:
        r = subprocess.run(
            [*cmd, "--host", proc.url, "--exit-code-on-error", "1"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "LOCUST_MAX_REQUESTS": "200"},
        )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    assert "/segment" in out and "/stats" in out and "Aggregated" in out


def test_profile_layers_charge_each_sample_to_the_nearest_known_frame(tmp_path):
    from benchmarks.profile_service import RATE, aggregate, classify, to_markdown

    frames = [
        "Runner.run (asyncio/runners.py:118)",
        "Gate.__call__ (serving/http.py:1)",
        "load_rgb (serving/imaging.py:3)",
    ]
    assert classify(frames + ["ImageFile.load (PIL/ImageFile.py:4)"]) == "decode + validate upload"
    assert classify(["WorkerThread.run (x.py:1)", "Session.run (x.py:2)"]).startswith("model")
    assert classify(["Span.start (sdk/trace.py:1)"]) == "BentoML: OpenTelemetry tracing"
    assert classify(["main (m.py:1)", "something_unknown (z.py:1)"]) == "other"
    raw = tmp_path / "stacks.txt"
    raw.write_text(
        f"process 1;Runner.run (asyncio/runners.py:118);decode_image (serving/imaging.py:3) {RATE}\n"
        f"process 1;Thread.run (t.py:1);Session.run (ort.py:9) {2 * RATE}\n"
    )
    ms = aggregate(raw, n_requests=10)  # 1 s and 2 s of samples over 10 requests
    assert ms == {"model: ONNX Runtime run (batch of 8)": 200.0, "decode + validate upload": 100.0}
    md = to_markdown([{"format": "PNG", "rps": 5.0, "errors": 0, "layers": ms}])
    assert "| decode + validate upload | 100.00 |" in md and "**100.00**" in md  # model rows not in the overhead sum


def test_int8_speed_times_both_graphs_of_a_folder(tmp_path, monkeypatch, capsys):
    """benchmarks.int8_speed: both graphs of a model folder timed on its bundled check images, a row each with
    the speed-up, the report written; a folder without int8 or check is a one-line error."""
    from benchmarks import int8_speed
    from tests.contract_model import make_int8_folder

    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    folder = make_int8_folder(tmp_path / "m", 0.5)
    assert int8_speed.main([str(folder), "--repeats", "2"]) == 0
    (row,) = json.loads((tmp_path / "results" / "int8-speed.json").read_text())
    assert row["size"] == "32x32" and row["fp32_img_s"] > 0 and row["int8_img_s"] > 0
    assert row["speedup"] == pytest.approx(row["int8_img_s"] / row["fp32_img_s"]) and row["speedup_at_export"] is None
    assert "| **" in capsys.readouterr().out
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(SystemExit, match="needs model.onnx, model.int8.onnx and check/"):
        int8_speed.main([str(folder)])


def test_the_report_times_what_a_user_would_run_instead(tiny_export):
    """benchmarks' user baselines on a real export: fastai's learn.predict and the U-Net in PyTorch eager, from the run
    folder its export.json names."""
    from benchmarks.__main__ import rate, user_baselines

    calls = []
    assert rate(lambda: calls.append(1), 4, seconds=0.05) == pytest.approx(4 * (len(calls) - 1) / 0.05, rel=0.5)
    got = user_baselines(tiny_export, seconds=0.2)
    assert set(got) == {"learn.predict", "PyTorch eager fp32"} and set(got["PyTorch eager fp32"]) == {1, 8}
    assert all(v > 0 for row in got.values() for v in row.values())
