from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def client(rule_model_dir):
    """The BentoML service in-process (its ASGI app, lifespan included) over the rule model.

    One per process: BentoML registers its Prometheus metrics globally, so a second app would clash.
    Other settings (token, caps, real model) are tested on real `bentoml serve` processes."""
    from starlette.testclient import TestClient

    os.environ["SEG_MODEL_DIR"] = str(rule_model_dir)
    os.environ["SEG_MAX_BATCH_SIZE"] = "4"
    # in-process tests go through BentoML's API layer; the real `bentoml serve` tests use the fast path
    os.environ["SEG_FAST_PATH"] = "false"
    from serving.service import SegmentationService

    with TestClient(SegmentationService.to_asgi()) as c:
        yield c
    os.environ.pop("SEG_FAST_PATH", None)
