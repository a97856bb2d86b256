"""The bad-input corpus against a real `bentoml serve`: every entry gets its expected status and advice,
no 5xx anywhere, and the service is still ready and right straight after each one."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from contract_model import png_bytes, served_mask
from PIL import Image

from loadtest.badinputs import PHOTO, corpus
from loadtest.server import served

MAX_BYTES = 300_000
CASES = corpus(MAX_BYTES)


def truth(data: bytes) -> np.ndarray:
    return served_mask(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def server(rule_model_dir):
    with served(rule_model_dir, SEG_MAX_BYTES=MAX_BYTES, SEG_MAX_PIXELS=20_000_000) as proc:
        yield proc


def test_corpus_has_at_least_25_kinds():
    assert len({c.name for c in CASES}) >= 25
    assert len([c for c in CASES if c.route.startswith("/v2/")]) >= 15  # the protocol's infer route too


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(server, case):
    r = requests.post(
        server.url + case.route,
        files=case.files,
        data=case.data,
        json=case.json,
        params=case.params,
        headers=case.headers,
        timeout=30,
    )
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.status_code == case.status, (r.status_code, r.text[:300])
    if case.status >= 400:
        assert case.needle in r.json()["error"], r.text
    elif case.same_as is not None:
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), truth(case.same_as))
    # still ready, and right
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    ok = requests.post(server.url + "/segment", files={"image": ("p.png", png_bytes(PHOTO))}, timeout=30)
    assert ok.status_code == 200 and np.array_equal(
        np.asarray(Image.open(io.BytesIO(ok.content))), truth(png_bytes(PHOTO))
    )
