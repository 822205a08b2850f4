"""Property test: any body at all either parses or raises InvalidRequestError — nothing else."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import InvalidRequestError
from router.request.protocol import ChatCompletionRequest, parse_chat_request

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "robot", "", 3])
messages = st.lists(st.fixed_dictionaries({"role": roles}, optional={"content": json_values | st.text(max_size=30)}), max_size=3)
bodies = st.fixed_dictionaries(
    {},
    optional={"model": json_values | st.sampled_from(["expertmux/auto", "cheap"]), "messages": messages | json_values,
              "stream": json_values, "max_tokens": json_values, "temperature": json_values, "n": json_values,
              "expertmux": json_values | st.fixed_dictionaries({}, optional={"lambda": json_values, "allowed_experts": json_values})},
)


def _check(raw: bytes) -> None:
    try:
        req = parse_chat_request(raw)
    except InvalidRequestError as exc:
        assert exc.status == 400 and exc.message
    else:
        assert isinstance(req, ChatCompletionRequest) and req.messages and req.prompt_text()
        req.upstream_payload()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw):
    _check(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_request_shaped_json(body):
    _check(json.dumps(body).encode())
