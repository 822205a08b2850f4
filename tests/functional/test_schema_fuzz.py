"""Fuzz the OpenAPI schema with schemathesis against the live app: no 5xx, no hang."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    from api.app import create_app
    from tests.conftest import make_settings, remote_expert
    from tests.support import fake_openai

    tmp = tmp_path_factory.mktemp("fuzz")
    with serve_in_thread(fake_openai.make_app(fake_openai.Behaviour())) as upstream:
        settings_ = make_settings(tmp, [remote_expert("cheap", upstream), remote_expert("strong", upstream)])
        with serve_in_thread(create_app(settings_)) as url:
            yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_no_server_errors(api_schema):
    # schemathesis drives hypothesis per operation (its pytest plugin predates this pytest).
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/admin/keys"}
    calls = []

    for op in operations:
        @given(op.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(timeout=15)
            calls.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text[:300]}"
            if response.status_code >= 400:
                assert "error" in response.json()

        check()
    assert len(calls) > 100
