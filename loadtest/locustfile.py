"""Locust load test for the segmentation service (all load to 127.0.0.1; bounded in time and requests).

    .venv/bin/locust -f loadtest/locustfile.py --headless -u 16 -r 8 -t 60s --host http://127.0.0.1:3000 \
        --csv loadtest/results/locust --only-summary

Posts real photos (skimage.data) and synthetic scenes at 128, 256 and 512 px to /segment, /overlay and
/stats, and checks status, content type and the returned size. Read the summary: "# fails" must be 0;
"req/s" is throughput; the 50%/95%/99% columns are latency percentiles in ms. `LOCUST_MAX_REQUESTS`
(default 5000) stops every user after that many requests in total, on top of `-t`.
"""

from __future__ import annotations

import io
import os
import random

import numpy as np
from locust import HttpUser, between, events, task
from PIL import Image

MAX_REQUESTS = int(os.environ.get("LOCUST_MAX_REQUESTS", "5000"))
_sent = 0


def _payloads() -> list[tuple[str, bytes, tuple[int, int]]]:
    import skimage.data

    out = []
    images = [
        Image.fromarray(np.asarray(getattr(skimage.data, n)())[..., :3])
        for n in ("astronaut", "chelsea", "coffee", "rocket")
    ]
    try:
        from training.synth import make_scene

        rng = np.random.default_rng(0)
        images += [Image.fromarray(make_scene(rng, 256)[0]) for _ in range(4)]
    except ImportError:  # serving-only environment: photos only
        pass
    for im in images:
        for size in (128, 256, 512):
            small = im.resize((size, size * im.height // im.width))
            b = io.BytesIO()
            small.save(b, "JPEG", quality=90)
            out.append((f"{size}.jpg", b.getvalue(), small.size))
    return out


PAYLOADS = _payloads()


@events.request.add_listener
def _count(**_kw):
    global _sent
    _sent += 1


class SegmentationUser(HttpUser):
    wait_time = between(0, 0.05)

    def _post(self, route: str, params=None):
        if _sent >= MAX_REQUESTS:
            self.environment.runner.quit()
            return
        name, data, size = random.choice(PAYLOADS)
        with self.client.post(
            route, params=params, files={"image": (name, data, "image/jpeg")}, name=route, catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:120]}")
            elif route == "/stats":
                s = r.json()
                if (s["width"], s["height"]) != size:
                    r.failure(f"stats size {s['width']}x{s['height']} != {size}")
            elif r.headers.get("content-type") != "image/png" or Image.open(io.BytesIO(r.content)).size != size:
                r.failure("not a PNG of the upload's size")

    @task(6)
    def segment(self):
        self._post("/segment")

    @task(2)
    def overlay(self):
        self._post("/overlay")

    @task(2)
    def stats(self):
        self._post("/stats", {"rle": "false"})
