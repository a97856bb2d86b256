"""The load tooling: the shared client, the readiness wait, and the peer servers of the benchmark."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from loadtest import client
from loadtest.server import ServerError, served, wait_ready
from loadtest.verify_batching import offline_masks


def test_client_closed_and_open_loop_against_a_real_server(rule_model_dir):
    payloads = client.photos((64, 96), square=False)
    expected = offline_masks(rule_model_dir, payloads)

    def same(i, r):
        return np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[i % len(payloads)])

    with served(rule_model_dir) as proc:
        results, wall = client.run(proc.url, payloads, concurrency=4, n=24, check=same, warmup=4)
        s = client.summary(results, wall)
        assert s["requests"] == 24 and s["errors"] == 0 and s["statuses"] == {"200": 24} and s["p99"] >= s["p50"] > 0
        assert [r.index for r in results] == list(range(24))
        t = time.perf_counter()
        results, _ = client.run(proc.url, payloads, concurrency=8, n=10, rate=20.0, check=same)
        assert time.perf_counter() - t >= 0.45  # arrivals spread at 20 per second
        assert all(r.ok for r in results)
        bad, _ = client.run(proc.url, [b"not an image"], concurrency=1, n=2)
        assert [r.status for r in bad] == [415, 415] and client.summary(bad, 1.0)["errors"] == 2


def test_wait_ready_survives_a_port_that_accepts_but_does_not_answer_then_fails_in_one_line():
    """The port of `bentoml serve` accepts connections before the workers are warm: slow answers mean "not
    yet", and the deadline ends in a ServerError, not a requests traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(ServerError, match="not ready after 6 s") as e:
            wait_ready(url, timeout=6)
        assert "\n" not in str(e.value)
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    dead.wait()
    with pytest.raises(ServerError, match="exited with code 3"):
        wait_ready("http://127.0.0.1:9", dead, timeout=5)


def test_documented_scripts_end_in_one_line_when_the_server_cannot_start(tmp_path):
    for module in ("loadtest.verify_batching", "loadtest.overload", "loadtest.bigimages"):
        r = subprocess.run(
            [sys.executable, "-m", module, "--model", str(tmp_path / "no-model")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (module, r.stderr[-800:])


@pytest.mark.parametrize("module", ["benchmarks.peers.litserve_server", "benchmarks.peers.rayserve_server"])
def test_peer_servers_do_the_same_work(module, tiny_export):
    """LitServe and Ray Serve peers, as the benchmark runs them, answer with exactly our offline masks."""
    pytest.importorskip("litserve" if "litserve" in module else "ray.serve")
    from benchmarks.harness import peer

    payloads = client.photos((128,), square=False)[:2]
    expected = offline_masks(tiny_export, payloads, variant="fp32")
    with peer(module, tiny_export, "fp32") as (url, _):
        results, _ = client.run(
            url,
            payloads,
            concurrency=2,
            n=4,
            keep_bodies=True,
            check=lambda i, r: np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[i % 2]),
        )
    assert all(r.ok for r in results), [r.status for r in results]
