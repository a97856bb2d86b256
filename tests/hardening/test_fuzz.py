"""schemathesis against the service's own /docs.json on a real `bentoml serve`: no 5xx, responses match the schema."""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from loadtest.server import served


@pytest.fixture(scope="module")
def fuzz_server(rule_model_dir):
    with served(rule_model_dir) as proc:
        yield proc


def test_no_server_errors_and_schema_conformance(fuzz_server):
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/docs.json")
    seen, failures = [], []
    for result in schema.get_all_operations():
        op = result.ok()
        seen.append(f"{op.method.upper()} {op.path}")

        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            response = case.call(timeout=30)
            if response.status_code >= 500:
                failures.append((case.method, case.path, response.status_code, response.text[:200]))
            elif response.status_code < 400:
                case.validate_response(response)

        run()
    assert {"POST /segment", "POST /overlay", "POST /stats"} <= set(seen), seen
    assert not failures, failures[:5]
