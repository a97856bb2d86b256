"""`python -m serving predict --ray`: the folder runner on a Ray cluster, in-process ("local") and a real
`ray start --head` cluster joined by address with token authentication. Tiled, so a per-pixel rule model gives exact
masks."""

from __future__ import annotations

import csv
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from contract_model import expected_mask
from PIL import Image

from loadtest.server import free_port

RAY = Path(sys.executable).with_name("ray")


def _cli(*args, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "serving", "predict", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(3)
    arrays = {}
    for i in range(7):
        arrays[f"im{i}"] = a = rng.integers(0, 256, (30 + 7 * i, 90 - 5 * i, 3), dtype=np.uint8)
        Image.fromarray(a).save(src / f"im{i}.png")
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return src, arrays


def _check(out: Path, arrays: dict):
    for name, a in arrays.items():
        assert np.array_equal(np.asarray(Image.open(out / f"{name}.png")), expected_mask(a[None])[0]), name
    rows = {r["image"]: r for r in csv.DictReader((out / "classes.csv").open())}
    assert set(rows) == {f"{n}.png" for n in arrays}
    for name, a in arrays.items():
        m = expected_mask(a[None])[0]
        assert abs(float(rows[f"{name}.png"]["red"]) - (m == 1).mean()) < 1e-5


def test_ray_local_matches_the_rule_skips_bad_files_and_resumes(folder, tmp_path, rule_model_dir):
    src, arrays = folder
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = tmp_path / "out"
    r = _cli(
        src,
        out,
        "--model",
        rule_model_dir,
        "--csv",
        "--tile",
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--ray",
        "local",
        "--ray-actors",
        "2",
    )
    assert r.returncode == 1, r.stderr[-2000:]  # the broken file
    assert "skipped broken.jpg" in r.stderr and "7 segmented, 0 already done, 1 failed" in r.stdout
    _check(out, arrays)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    (out / "im3.png").unlink()
    (src / "broken.jpg").unlink()
    r = _cli(src, out, "--model", rule_model_dir, "--tile", "--device", "cpu", "--ray", "local")
    assert r.returncode == 0 and "1 segmented, 6 already done" in r.stdout, r.stderr[-2000:]
    assert np.array_equal(np.asarray(Image.open(out / "im3.png")), expected_mask(arrays["im3"][None])[0])


def test_ray_cluster_by_address_with_token_auth(folder, tmp_path, rule_model_dir):
    src, arrays = folder
    port = free_port()
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    head = subprocess.run(
        [
            str(RAY),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        out = tmp_path / "out"
        t = time.monotonic()
        r = _cli(
            src,
            out,
            "--model",
            rule_model_dir,
            "--csv",
            "--tile",
            "--device",
            "cpu",
            "--ray",
            f"127.0.0.1:{port}",
            env=env,
        )
        assert r.returncode == 1 and "7 segmented" in r.stdout, r.stderr[-2000:]
        _check(out, arrays)
        print(f"ray cluster run: {time.monotonic() - t:.1f} s")
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)


def test_ray_bad_addresses_fail_in_one_line(folder, tmp_path, rule_model_dir):
    src, _ = folder
    for address, message in (
        (f"127.0.0.1:{free_port()}", "nothing answers there"),
        ("not-an-address", "use local, auto, HOST:PORT"),
    ):
        t = time.monotonic()
        r = _cli(src, tmp_path / "out", "--model", rule_model_dir, "--ray", address, timeout=60)
        assert r.returncode == 2 and message in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
        assert time.monotonic() - t < 30
    r = _cli(src, tmp_path / "out", "--model", rule_model_dir, "--ray", "local", "--ray-actors", "0")
    assert r.returncode == 2 and "--ray-actors 0: must be >= 1" in r.stderr
    assert not (tmp_path / "out").exists()  # nothing written on a refused run
