from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def client(rule_model_dir):
    """The BentoML service in-process (its ASGI app, lifespan included) over the rule model: the same
    request path `bentoml serve` runs.

    One per process: BentoML registers its Prometheus metrics globally and the service reads its
    settings once, at import. Other settings (token, caps, real model) run on real `bentoml serve` processes."""
    from starlette.testclient import TestClient

    os.environ["SEG_MODEL_DIR"] = str(rule_model_dir)
    os.environ["SEG_MAX_BATCH_SIZE"] = "4"
    from serving.service import SegmentationService

    with TestClient(SegmentationService.to_asgi()) as c:
        yield c
