"""Smoke tests of the benchmark harness pieces that need no long run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from benchmarks.__main__ import cpu_peak, to_markdown
from benchmarks.flops import count_flops


def test_flop_count_of_a_known_conv(tmp_path):
    # 3x3 conv, 4 -> 8 channels, on 16x16 with padding 1: 2 * (8*16*16) * (4*3*3) FLOPs; plus a 1x1 depthwise conv
    w = np.ones((8, 4, 3, 3), np.float32)
    dw = np.ones((8, 1, 1, 1), np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
            helper.make_node("Conv", ["y", "dw"], ["z"], group=8),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8, 16, 16])],
        initializer=[onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(dw, "dw")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "m.onnx"))
    assert count_flops(tmp_path / "m.onnx") == 2 * 8 * 16 * 16 * 4 * 9 + 2 * 8 * 16 * 16 * 1


def test_cpu_peak_is_positive():
    peak, how = cpu_peak()
    assert peak > 1e9 and "FLOP/cycle" in how


def test_report_markdown_has_every_section():
    row = {"concurrency": 16, "rps": 50.0, "p50": 10.0, "p95": 20.0, "p99": 30.0, "errors": 0}
    peer = {**row, "rps": 40.0, "p99": 60.0}
    r = {
        "date": "d",
        "machine": "m",
        "model_dir": "x",
        "variant": "int8",
        "model": {
            "rows": [{"size": 128, "batch": 1, "PyTorch eager": 10.0, "ORT fp32": 20.0, "ORT int8": 30.0}],
            "threads": 2,
            "input_size": [128, 128],
            "flops_per_image": 2e9,
            "peak_flops": 1.6e11,
            "peak_how": "h",
            "best_ort_img_s": 30.0,
            "fraction_of_peak": 0.4,
        },
        "compare": {
            "this service": [row],
            "previous main (abc1234)": [{**row, "rps": 25.0}],
            "LitServe (2 workers, batch 8)": [peer],
        },
        "raw_ort_b1": 100.0,
        "raw_ort_b8": 125.0,
        "profile": {"decode": 1.0},
        "naive": {**row, "rps": 10.0},
        "cold_start_s": [1.0, 2.0],
        "cost_per_pixel": [{"size": 128, "p50_ms": 5.0, "us_per_kpixel": 300.0}],
    }
    r["server_cpu"] = {
        "PNG": {
            "server_cpu_ms_per_request": 9.0,
            "model_cpu_ms_per_image": 4.0,
            "overhead_cpu_ms_per_request": 3.0,
            "rps": 100.0,
        }
    }
    r["layers"] = [{"format": "PNG", "rps": 100.0, "errors": 0, "layers": {"decode + validate upload (Pillow)": 2.0}}]
    r["bigimages"] = {
        "variant": "int8",
        "workers": 2,
        "max_tiles": 2048,
        "max_latency_ms": 10000,
        "input_size": [128, 128],
        "rows": [
            {
                "side": 3000,
                "jpeg_bytes": 600000,
                "status": 200,
                "seconds": 9.5,
                "mask_size": [3000, 3000],
                "rss_peak_growth_mb": 40.0,
                "small": {
                    "requests": 300,
                    "statuses": {"200": 300},
                    "p50_ms": 30.0,
                    "p99_ms": 90.0,
                    "server_errors": 0,
                },
            }
        ],
    }
    md = to_markdown(r, [])
    assert (
        "beyond the model 3.00 ms (goal <= 1.5 ms: missed by 2.0x)" in md
        and "| decode + validate upload (Pillow) | 2.00 |" in md
    )
    for heading in (
        "## 1. Model",
        "## 2. This service, the previous main and peers",
        "## 3. Naive fastai server",
        "## 3b. Large photos",
        "## 4. Cold start",
        "## 5. Cost per pixel",
    ):
        assert heading in md
    assert "0.40 of the raw batch-8 ceiling" in md and "ratio 1.25 (goal >= 1.2)" in md and "p99 30 vs 60 ms" in md
    assert "previous main 25.0 req/s (p99 30 ms): 2.00x" in md
    assert "| 3000x3000 (0.6 MB) | 200 | 9.5 | 3000x3000 | 40 | 300 |" in md
    assert "5.0x throughput" in md


def test_locust_kit_runs_headless_against_a_real_server(rule_model_dir):
    """The locustfile, run the documented way for a few seconds: every request must pass its checks.
    (A subprocess: locust monkey-patches sockets and threads with gevent when it is imported.)"""
    import subprocess
    import sys
    from pathlib import Path

    from loadtest.server import ROOT, served

    locust = str(Path(sys.executable).with_name("locust"))
    with served(rule_model_dir) as proc:
        r = subprocess.run(
            [
                locust,
                "-f",
                "loadtest/locustfile.py",
                "--headless",
                "-u",
                "4",
                "-r",
                "4",
                "-t",
                "6s",
                "--host",
                proc.url,
                "--only-summary",
                "--exit-code-on-error",
                "1",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env={**__import__("os").environ, "LOCUST_MAX_REQUESTS": "200"},
        )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    assert "/segment" in out and "/stats" in out and "Aggregated" in out


def test_profile_layers_charge_each_sample_to_the_nearest_known_frame(tmp_path):
    from benchmarks.profile_service import RATE, aggregate, classify
    from benchmarks.profile_service import to_markdown as layers_md

    assert (
        classify(
            [
                "Runner.run (asyncio/runners.py:118)",
                "Gate.__call__ (serving/http.py:1)",
                "SegmentationService._serve (serving/service.py:2)",
                "load_rgb (serving/imaging.py:3)",
                "ImageFile.load (PIL/ImageFile.py:4)",
            ]
        )
        == "decode + validate upload (Pillow)"
    )
    assert classify(
        ["WorkerThread.run (x.py:1)", "SegmentationRuntime.run (serving/runtime.py:1)", "Session.run (x.py:2)"]
    ).startswith("model")
    assert (
        classify(["OpenTelemetryMiddleware.__call__ (asgi/__init__.py:7)", "Span.start (sdk/trace.py:1)"])
        == "BentoML: OpenTelemetry tracing"
    )
    assert classify(["main (m.py:1)", "something_unknown (z.py:1)"]) == "other"
    raw = tmp_path / "stacks.txt"
    raw.write_text(
        f"process 1;Runner.run (asyncio/runners.py:118);decode_image (serving/imaging.py:3) {RATE}\n"
        f"process 1;Thread.run (t.py:1);Session.run (ort.py:9) {2 * RATE}\n"
    )
    ms = aggregate(raw, n_requests=10)  # 1 s and 2 s of samples over 10 requests
    assert ms == {"model: ONNX Runtime run (batch of 8)": 200.0, "decode + validate upload (Pillow)": 100.0}
    md = layers_md([{"format": "PNG", "rps": 5.0, "errors": 0, "layers": ms}])
    assert (
        "| decode + validate upload (Pillow) | 100.00 |" in md and "**100.00**" in md
    )  # model rows not in the overhead sum


def test_int8_speed_times_both_graphs_of_a_folder(tmp_path, monkeypatch, capsys):
    """benchmarks.int8_speed: both graphs of a model folder timed on its bundled check images, a row each with
    the speed-up, the report written; a folder without int8 or check is a one-line error."""
    import json

    import benchmarks
    from benchmarks import int8_speed
    from tests.contract_model import make_int8_folder

    monkeypatch.setattr(benchmarks, "RESULTS", tmp_path / "results")
    folder = make_int8_folder(tmp_path / "m", 0.5)
    assert int8_speed.main([str(folder), "--repeats", "2"]) == 0
    (report,) = (tmp_path / "results").glob("int8-speed-*.json")
    (row,) = json.loads(report.read_text())
    assert row["size"] == "32x32" and row["fp32_img_s"] > 0 and row["int8_img_s"] > 0
    assert row["speedup"] == pytest.approx(row["int8_img_s"] / row["fp32_img_s"]) and row["speedup_at_export"] is None
    assert "| **" in capsys.readouterr().out
    (folder / "model.int8.onnx").unlink()
    with pytest.raises(SystemExit, match="needs model.onnx, model.int8.onnx and check/"):
        int8_speed.main([str(folder)])
