"""A real `bentoml serve` on 127.0.0.1: the trained tiny model on real photos, batching, token and caps, start-up
faults."""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import skimage.data
from contract_model import expected_mask, make_int8_folder, png_bytes
from PIL import Image

from loadtest.server import BENTOML, ROOT, free_port, served
from loadtest.verify_batching import offline_masks

PHOTOS = {name: getattr(skimage.data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")}


@pytest.fixture(scope="module")
def real_server(tiny_export, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with served(tiny_export, log_path=log, SEG_MAX_BATCH_SIZE=4) as proc:
        proc.log_text_at_ready = log.read_text(errors="replace")
        yield proc


def test_ready_only_after_warm_up(real_server):
    """When /readyz first answered 200, the log already said that every batch size 1..4 had run."""
    assert "warm-up of batch sizes 1..4 at [(64, 64)] took" in real_server.log_text_at_ready
    assert "provider CPUExecutionProvider, variant " in real_server.log_text_at_ready


def test_real_photos_segmented_like_offline_ort(real_server, tiny_export):
    for name, photo in PHOTOS.items():
        data = png_bytes(photo)
        r = requests.post(real_server.url + "/segment", files={"image": (f"{name}.png", data)}, timeout=30)
        assert r.status_code == 200, (name, r.text)
        im = Image.open(io.BytesIO(r.content))
        assert im.mode == "P" and im.size == (photo.shape[1], photo.shape[0])
        mask = np.asarray(im)
        assert mask.max() < 3
        assert np.array_equal(mask, offline_masks(tiny_export, [data])[0]), name


def test_concurrent_requests_are_batched_and_all_correct(real_server, tiny_export):
    payloads = [png_bytes(p) for p in PHOTOS.values()] * 6
    expected = offline_masks(tiny_export, payloads)
    before = _batch_metric(real_server.url)

    def call(data):
        r = requests.post(real_server.url + "/segment", files={"image": ("x.png", data)}, timeout=60)
        return r.status_code, np.asarray(Image.open(io.BytesIO(r.content))) if r.status_code == 200 else r.text

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(call, payloads))
    assert all(code == 200 for code, _ in results), [r for r in results if r[0] != 200][:2]
    assert all(np.array_equal(m, e) for (_, m), e in zip(results, expected))
    after = _batch_metric(real_server.url)
    # every image went through the dispatcher exactly once: the batch sizes add up to the request count
    assert after["sum"] - before["sum"] == len(payloads)
    assert after["count"] - before["count"] <= len(payloads)


def _batch_metric(url: str) -> dict:
    text = requests.get(url + "/metrics", timeout=10).text
    out = {}
    for key in ("sum", "count"):
        vals = re.findall(rf"^seg_batch_size_{key}\{{[^}}]*\}} ([0-9.e+]+)$", text, re.M) or re.findall(
            rf"^seg_batch_size_{key} ([0-9.e+]+)$", text, re.M
        )
        out[key] = sum(float(v) for v in vals)
    return out


def test_token_and_caps_on_a_real_server(rule_model_dir):
    with served(rule_model_dir, SEG_API_TOKEN="s3cret", SEG_MAX_PIXELS=1000, SEG_MAX_BYTES=100000) as proc:
        small = png_bytes(np.zeros((20, 20, 3), np.uint8))
        auth = {"Authorization": "Bearer s3cret"}
        assert requests.post(proc.url + "/segment", files={"image": ("x.png", small)}).status_code == 401
        assert (
            requests.post(
                proc.url + "/segment", files={"image": ("x.png", small)}, headers={"Authorization": "Bearer no"}
            ).status_code
            == 401
        )
        assert requests.get(proc.url + "/model").status_code == 401
        assert requests.post(proc.url + "/segment", files={"image": ("x.png", small)}, headers=auth).status_code == 200
        for path in ("/readyz", "/livez", "/healthz", "/metrics"):
            assert requests.get(proc.url + path).status_code == 200, path
        r = requests.post(
            proc.url + "/segment", files={"image": ("x.png", png_bytes(np.zeros((50, 50, 3), np.uint8)))}, headers=auth
        )
        assert r.status_code == 413 and "1000-pixel limit" in r.json()["error"]
        noise = png_bytes(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
        r = requests.post(proc.url + "/segment", files={"image": ("x.png", noise)}, headers=auth)
        assert r.status_code == 413 and "byte" in r.json()["error"]
        r = requests.post(proc.url + "/segment", files={"image": ("x.png", noise * 4)}, headers=auth)
        assert r.status_code == 413 and "byte" in r.json()["error"]


@pytest.mark.parametrize(
    "case,needle",
    [
        ("missing", "model folder not found"),
        ("corrupt", "cannot load it"),
        ("no_metadata", "metadata lacks"),
        ("bad_setting", "SEG_MAX_BATCH_SIZE='abc': must be an integer"),
        ("bad_bool", "SEG_TRACING='sometimes': use true or false"),
    ],
)
def test_startup_faults_exit_nonzero_in_one_line(tmp_path, case, needle, rule_model_dir):
    """A bad model or setting stops `bentoml serve` within seconds: one line on stderr, non-zero exit
    (BentoML prints our StartupError as `Error: [serve] `serve` failed: <message>`)."""
    from contract_model import make_contract_model

    d, env = tmp_path / "m", {}
    if case == "corrupt":
        d.mkdir()
        (d / "model.onnx").write_bytes(b"not an onnx file")
    elif case == "no_metadata":
        make_contract_model(d / "model.onnx", drop_keys=("classes", "colours"))
    elif case == "bad_setting":
        d, env = rule_model_dir, {"SEG_MAX_BATCH_SIZE": "abc"}
    elif case == "bad_bool":
        d, env = rule_model_dir, {"SEG_TRACING": "sometimes"}
    t = time.monotonic()
    r = subprocess.run(
        [BENTOML, "serve", "serving.service:SegmentationService", "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=ROOT,
        env={**os.environ, "SEG_MODEL_DIR": str(d), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and time.monotonic() - t < 60
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], r.stderr[-500:]


def test_bentoml_sync_http_client_calls_the_three_routes(real_server, tiny_export, tmp_path):
    """BentoML's own client reads /schema.json and calls the APIs: segment and overlay give PNG files, stats a dict."""
    import bentoml

    photo = PHOTOS["chelsea"]
    path = tmp_path / "chelsea.png"
    path.write_bytes(png_bytes(photo))
    client = bentoml.SyncHTTPClient(real_server.url)
    try:
        mask = np.asarray(Image.open(client.segment(image=path)))
        assert np.array_equal(mask, offline_masks(tiny_export, [path.read_bytes()])[0])
        assert Image.open(client.overlay(image=path, tile=False)).size == (photo.shape[1], photo.shape[0])
        stats = client.stats(image=path, rle=True)
        assert (stats["width"], stats["height"]) == (photo.shape[1], photo.shape[0])
        assert (
            sum(c["pixels"] for c in stats["classes"]) == photo.shape[0] * photo.shape[1]
            and "rle" in stats["classes"][0]
        )
    finally:
        client.close()


def test_int8_failing_the_accuracy_rule_on_this_cpu_is_not_served_and_model_says_why(tmp_path):
    """A model folder whose int8 loses foreground Dice on its bundled held-out images: `bentoml serve` (auto)
    serves fp32, its log and GET /model say why, and the answers are fp32's."""
    folder = make_int8_folder(tmp_path / "m", background=0.8)
    log = tmp_path / "serve.log"
    with served(folder, log_path=log) as proc:
        info = requests.get(proc.url + "/model", timeout=10).json()
        photo = PHOTOS["coffee"][:32, :32]
        r = requests.post(proc.url + "/segment", files={"image": ("c.png", png_bytes(photo))}, timeout=30)
    assert info["variant"] == "fp32" and info["model_file"].endswith("model.onnx")
    assert info["variant_reason"].startswith("auto: int8 failed the accuracy rule on this CPU (foreground Dice int8 ")
    check = info["int8_check"]
    assert (
        check["kept"] is False
        and check["ratio"] < 0.99
        and check["fp32"] == 1.0
        and check["images"] == 5
        and check["seconds"] < 5
    )
    assert "int8 failed the accuracy rule on this CPU" in log.read_text(errors="replace")
    assert r.status_code == 200 and np.array_equal(
        np.asarray(Image.open(io.BytesIO(r.content))), expected_mask(photo[None])[0]
    )
