"""The OpenAI request schema is checked before anything reaches an upstream.

The issue: unknown fields and ``tools: "junk"`` were passed through; an upstream that answers such
input with a 500 then opened its breaker for everyone. Now malformed requests get a 400 in the
OpenAI error format and a ledger row, the upstream sees none of them, and an upstream's own 4xx
(the request's fault) never counts against its breaker.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.ledger.models import RequestRow
from tests.conftest import make_settings, remote_expert
from tests.support import fake_openai
from tests.support.servers import serve_in_thread

HI = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}

# (case, extra request fields or replaced messages, a word the message must contain)
JUNK = [
    ("tools not a list", {"tools": "junk"}, "tools"),
    ("tool without function", {"tools": [{"type": "function"}]}, "tools.0"),
    ("tool of unknown type", {"tools": [{"type": "spell", "spell": {}}]}, "tools.0"),
    ("tool name with spaces", {"tools": [{"type": "function", "function": {"name": "get weather!"}}]}, "tools.0"),
    ("tool parameters not an object", {"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "parameters"),
    ("tool_choice unknown word", {"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ("tool_choice names undeclared tool", {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ("tool_choice without tools", {"tool_choice": "required"}, "tool_choice"),
    ("response_format a string", {"response_format": "json"}, "response_format"),
    ("response_format unknown type", {"response_format": {"type": "xml"}}, "response_format"),
    ("json_schema without schema block", {"response_format": {"type": "json_schema"}}, "response_format"),
    ("text part without text", {"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0"),
    ("image part not an object", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
     "messages.0"),
    ("unknown part type", {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "messages.0"),
    ("image in a system message", {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                                                 *HI]}, "messages.0"),
    ("content a number", {"messages": [{"role": "user", "content": 5}]}, "messages.0"),
    ("tool message without tool_call_id", {"messages": [*HI, {"role": "tool", "content": "42"}]}, "tool_call_id"),
    ("assistant tool_calls junk", {"messages": [*HI, {"role": "assistant", "tool_calls": "junk"}, *HI]}, "tool_calls"),
    ("assistant with nothing", {"messages": [*HI, {"role": "assistant"}, *HI]}, "messages.1"),
    ("unknown message field", {"messages": [{"role": "user", "content": "hi", "mood": "happy"}]}, "mood"),
    ("n zero", {"n": 0}, "n"),
    ("n a string", {"n": "2"}, "n"),
    ("five stop sequences", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("stop a number", {"stop": 5}, "stop"),
    ("logit_bias key not a token id", {"logit_bias": {"abc": 5}}, "logit_bias"),
    ("logit_bias out of range", {"logit_bias": {"50256": 500}}, "logit_bias"),
    ("top_logprobs too many", {"logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ("top_logprobs without logprobs", {"top_logprobs": 5}, "top_logprobs"),
    ("presence_penalty out of range", {"presence_penalty": 3}, "presence_penalty"),
    ("frequency_penalty out of range", {"frequency_penalty": -2.5}, "frequency_penalty"),
    ("seed a string", {"seed": "x"}, "seed"),
    ("user a number", {"user": 5}, "user"),
    ("stream_options without stream", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("stream_options unknown key", {"stream": True, "stream_options": {"include_usage": True, "x": 1}}, "stream_options"),
    ("max_tokens zero", {"max_tokens": 0}, "max_tokens"),
    ("metadata value not a string", {"metadata": {"k": 1}}, "metadata"),
    ("parallel_tool_calls a string", {"tools": [TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ("unknown top-level field", {"foo": 1}, "foo"),
    ("misspelt parameter", {"temprature": 0.5}, "temprature"),
    ("functions junk", {"functions": "junk"}, "functions"),
    ("reasoning_effort unknown", {"reasoning_effort": "extreme"}, "reasoning_effort"),
    ("modalities unknown", {"modalities": ["smell"]}, "modalities"),
]

VALID = [
    ("tools and a named tool_choice", {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                                       "parallel_tool_calls": False}),
    ("tool round trip", {"tools": [TOOL], "messages": [
        *HI, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}),
    ("json_schema", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "answer", "strict": True, "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}}}),
    ("json_object", {"response_format": {"type": "json_object"}}),
    ("content parts", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                                       "detail": "low"}}]}]}),
    ("sampling knobs", {"n": 1, "stop": ["a", "b", "c", "d"], "logit_bias": {"50256": -100}, "logprobs": True, "top_logprobs": 5,
                        "presence_penalty": 1.5, "frequency_penalty": -1, "seed": 7, "user": "u-1", "temperature": 0,
                        "top_p": 0.9, "max_completion_tokens": 8}),
    ("bookkeeping fields", {"metadata": {"team": "a"}, "store": False, "service_tier": "auto", "prompt_cache_key": "k",
                            "safety_identifier": "s"}),
    ("an echoed assistant message", {"messages": [*HI, {"role": "assistant", "content": "hello", "refusal": None,
                                                         "annotations": []}, *HI]}),
    ("server extensions", {"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}),
    ("stream with usage", {"stream": True, "stream_options": {"include_usage": True}}),
]


@pytest.fixture
def strict_upstream_app(tmp_path):
    """'picky' answers 500 to anything (as a server crashing on input it does not understand)."""
    from api.app import create_app

    picky = fake_openai.Behaviour(fail_status=500)
    fine = fake_openai.Behaviour(answer="fine answer")
    rejecting = fake_openai.Behaviour(fail_status=400)
    with (serve_in_thread(fake_openai.make_app(picky)) as picky_url, serve_in_thread(fake_openai.make_app(fine)) as fine_url,
          serve_in_thread(fake_openai.make_app(rejecting)) as rejecting_url):
        settings = make_settings(tmp_path, [remote_expert("picky", picky_url), remote_expert("fine", fine_url),
                                            remote_expert("rejecting", rejecting_url)], breaker_failures=3)
        app = create_app(settings)
        with serve_in_thread(app) as url:
            yield url, app, {"picky": picky, "fine": fine, "rejecting": rejecting}


def test_malformed_requests_get_400_and_never_reach_or_trip_an_expert(strict_upstream_app):
    url, app, ups = strict_upstream_app
    with httpx.Client(base_url=url, timeout=15) as http:
        for case, fields, word in JUNK:
            r = http.post("/v1/chat/completions", json={"model": "picky", "messages": HI, **fields})
            assert r.status_code == 400, f"{case}: {r.status_code} {r.text}"
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error", case
            assert word in err["message"], f"{case}: {word!r} not in {err['message']!r}"
    assert ups["picky"].calls == []  # none of it reached the upstream
    assert app.state.service.experts["picky"].breaker.state == "closed"
    assert app.state.service.ledger.flush(10)
    with Session(app.state.service.ledger.engine) as s:
        rows = s.scalars(select(RequestRow)).all()
    assert len(rows) == len(JUNK) and {r.status for r in rows} == {"rejected"} and {r.http_status for r in rows} == {400}


def test_valid_openai_requests_are_forwarded_as_sent(strict_upstream_app):
    url, app, ups = strict_upstream_app
    with httpx.Client(base_url=url, timeout=15) as http:
        for case, fields in VALID:
            body = {"model": "fine", "messages": HI, **fields}
            r = http.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, f"{case}: {r.status_code} {r.text}"
            sent = ups["fine"].calls[-1]
            for key, value in fields.items():
                if key not in ("stream", "stream_options"):
                    assert sent[key] == value, f"{case}: {key} sent as {sent[key]!r}"


def test_an_upstream_rejection_is_the_clients_error_not_the_experts(strict_upstream_app):
    url, app, ups = strict_upstream_app
    with httpx.Client(base_url=url, timeout=15) as http:
        for stream in (False, True) * 5:
            r = http.post("/v1/chat/completions", json={"model": "rejecting", "messages": HI, "stream": stream})
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert len(ups["rejecting"].calls) == 10
    breaker = app.state.service.experts["rejecting"].breaker
    assert breaker.state == "closed" and breaker.times_opened == 0
