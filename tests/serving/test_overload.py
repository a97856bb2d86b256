"""Image size and overload against a real `bentoml serve` (one worker, the tiny trained model exported
with a fixed 64 px input, whose tiled requests cut full-resolution tiles: hundreds per image): tiled
requests finish, small requests keep flowing meanwhile, and every refusal is early, with a fixed status
and Retry-After."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import requests
import skimage.data
from contract_model import png_bytes
from PIL import Image

from loadtest.server import served

BIG = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((1400, 1100)))  # 23x30 = 690 tiles of 64 px
SMALL = png_bytes(np.asarray(Image.fromarray(skimage.data.coffee()).resize((96, 64))))


def tiled_truth(model_dir) -> np.ndarray:
    """The tiled mask offline, through the Python API (the same data path)."""
    from serving import Segmenter

    return Segmenter.load(model_dir, "cpu").predict(BIG, tile=True)


class Background(threading.Thread):
    """POST the big image with tile=true in a thread; `.response` when done."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url, self.response = url, None

    def run(self):
        self.response = requests.post(
            self.url + "/segment?tile=true", files={"image": ("big.png", png_bytes(BIG))}, timeout=300
        )


def until_running(url: str, worker_busy) -> None:
    """Wait until the server reports the big request in flight."""
    deadline = time.monotonic() + 30
    while not worker_busy(requests.get(url + "/model", timeout=10).json()):
        assert time.monotonic() < deadline, "the tiled request never showed up in /model"
        time.sleep(0.02)


def test_a_tiled_request_finishes_while_small_requests_keep_flowing(tiny_export_fixed):
    truth = tiled_truth(tiny_export_fixed)
    with served(tiny_export_fixed, SEG_WORKERS=1) as proc:
        big = Background(proc.url)
        big.start()
        until_running(proc.url, lambda m: m["admission"]["in_flight"] >= 1)
        small = []
        with requests.Session() as s:
            while big.is_alive() and len(small) < 200:
                t = time.perf_counter()
                r = s.post(proc.url + "/segment", files={"image": ("s.png", SMALL)}, timeout=60)
                small.append((r.status_code, time.perf_counter() - t))
        big.join(300)
    assert big.response.status_code == 200, big.response.text[:300]
    mask = np.asarray(Image.open(io.BytesIO(big.response.content)))
    assert mask.shape == BIG.shape[:2] and np.array_equal(mask, truth)
    assert len(small) >= 3 and all(code == 200 for code, _ in small), small[:5]
    # each small request waited for at most the two batches of tiles queued ahead of it, not the whole image
    assert max(dt for _, dt in small) < 5.0


def test_concurrency_cap_answers_429_with_retry_after(tiny_export_fixed):
    with served(tiny_export_fixed, SEG_WORKERS=1, SEG_MAX_CONCURRENCY=1) as proc:
        big = Background(proc.url)
        big.start()
        until_running(proc.url, lambda m: m["admission"]["in_flight"] >= 1)
        r = requests.post(proc.url + "/segment", files={"image": ("s.png", SMALL)}, timeout=30)
        big.join(300)
        assert r.status_code == 429 and r.headers["Retry-After"] == "1"
        assert "SEG_MAX_CONCURRENCY=1" in r.json()["error"]
        assert big.response.status_code == 200
        after = requests.post(proc.url + "/segment", files={"image": ("s.png", SMALL)}, timeout=30)
        assert after.status_code == 200


def test_work_over_budget_is_refused_early_with_503_and_a_tile_cap_with_413(tiny_export_fixed):
    with served(tiny_export_fixed, SEG_WORKERS=1, SEG_MAX_LATENCY_MS=1, SEG_MAX_TILES=1000) as proc:
        big = Background(proc.url)
        big.start()
        until_running(proc.url, lambda m: m["admission"]["queued_seconds"] > 0.001)
        t = time.perf_counter()
        r = requests.post(proc.url + "/stats", files={"image": ("s.png", SMALL)}, timeout=30)
        refusal_s = time.perf_counter() - t
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["error"]
        assert refusal_s < 1.0  # refused at the door, not after waiting
        big.join(300)
        assert big.response.status_code == 200  # admitted when the queue was empty: it finishes
        huge = png_bytes(np.zeros((2200, 2200, 3), np.uint8))  # 45 x 45 tiles: over SEG_MAX_TILES
        r = requests.post(proc.url + "/segment?tile=true", files={"image": ("h.png", huge)}, timeout=30)
        assert (
            r.status_code == 413
            and "SEG_MAX_TILES=1000" in r.json()["error"]
            and "python -m serving predict" in r.json()["error"]
        )
        metrics = requests.get(proc.url + "/metrics", timeout=10).text
        assert 'seg_refused_total{status="503"}' in metrics and 'seg_refused_total{status="413"}' in metrics
