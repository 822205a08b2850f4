"""Feedback, exploration and the judge through the real app on a real port (fake upstream
experts, a real SQLite ledger, the official openai client for chat and httpx for feedback)."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from router.ledger.models import FeedbackRow, RequestRow
from tests.conftest import make_settings, remote_expert
from tests.support import fake_openai
from tests.support.servers import serve_in_thread

ADMIN = "admin-secret"
HI = [{"role": "user", "content": "What is the capital of France?"}]


def _serve(settings):
    from api.app import create_app

    app = create_app(settings)
    return app, serve_in_thread(app)


def _feedback_rows(app, rid):
    with Session(app.state.service.ledger.engine) as s:
        return list(s.scalars(select(FeedbackRow).where(FeedbackRow.request_id == rid).order_by(FeedbackRow.id)))


def _row(app, rid) -> RequestRow:
    assert app.state.service.ledger.flush(10)
    with Session(app.state.service.ledger.engine) as s:
        return s.get(RequestRow, rid)


def test_feedback_right_after_the_answer_and_bad_input(fake_app_url):
    url, app = fake_app_url
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
    for _ in range(5):  # no flush in between: the row may still be in the writer's queue
        raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=HI)
        rid = raw.headers["x-expertmux-request-id"]
        r = httpx.post(f"{url}/v1/feedback", json={"request_id": rid, "thumbs": "up", "comment": "good"})
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["object"] == "feedback" and body["score"] == 1.0 and body["source"] == "user"
    r = httpx.post(f"{url}/v1/feedback", json={"request_id": rid, "score": 0.25, "source": "auto"})
    assert r.status_code == 201
    assert [(f.score, f.source) for f in _feedback_rows(app, rid)] == [(1.0, "user"), (0.25, "auto")]

    bad = {
        "out of range": ({"request_id": rid, "score": 1.5}, 400, "score"),
        "negative": ({"request_id": rid, "score": -0.1}, 400, "score"),
        "both": ({"request_id": rid, "score": 0.5, "thumbs": "up"}, 400, "score"),
        "neither": ({"request_id": rid}, 400, "score"),
        "string score": ({"request_id": rid, "score": "0.5"}, 400, "score"),
        "bool score": ({"request_id": rid, "score": True}, 400, "score"),
        "bad thumbs": ({"request_id": rid, "thumbs": "sideways"}, 400, "thumbs"),
        "bad source": ({"request_id": rid, "score": 1, "source": "robot"}, 400, "source"),
        "unknown field": ({"request_id": rid, "score": 1, "stars": 5}, 400, "stars"),
        "missing id": ({"score": 1}, 400, "request_id"),
        "unknown id": ({"request_id": "0" * 32, "score": 1}, 404, "request_id"),
    }
    for case, (payload, status, param) in bad.items():
        r = httpx.post(f"{url}/v1/feedback", json=payload)
        assert r.status_code == status, (case, r.text)
        err = r.json()["error"]
        assert err["param"] == param and err["message"] and err["type"] == "invalid_request_error", (case, err)
    r = httpx.post(f"{url}/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert len(_feedback_rows(app, rid)) == 2  # nothing written by the bad calls


def test_feedback_while_the_answer_still_streams(fake_app_url, upstreams):
    url, app = fake_app_url
    upstreams["cheap"][0].chunk_delay_s = 0.4  # three words: about 1.2 s of streaming
    body = {"model": "cheap", "messages": HI, "stream": True}
    with httpx.Client(base_url=url, timeout=30) as http, http.stream("POST", "/v1/chat/completions", json=body) as resp:
        rid = resp.headers["x-expertmux-request-id"]
        result = {}
        rater = threading.Thread(target=lambda: result.update(r=httpx.post(f"{url}/v1/feedback", timeout=30,
                                                                           json={"request_id": rid, "score": 0.6})))
        rater.start()
        time.sleep(0.2)
        assert rater.is_alive()  # waiting for the answer to end, not a 404
        text = "".join(resp.iter_text())
        rater.join(30)
    assert "[DONE]" in text and result["r"].status_code == 201, result["r"].text
    assert [f.score for f in _feedback_rows(app, rid)] == [0.6]

    app.state.feedback.pending_wait_s = 0.3  # an answer that outlasts the wait: 409, nothing written
    with httpx.Client(base_url=url, timeout=30) as http, http.stream("POST", "/v1/chat/completions", json=body) as resp:
        rid = resp.headers["x-expertmux-request-id"]
        r = httpx.post(f"{url}/v1/feedback", json={"request_id": rid, "score": 0.6})
        assert r.status_code == 409 and r.json()["error"]["code"] == "request_in_progress"
        "".join(resp.iter_text())
    assert _feedback_rows(app, rid) == []


def test_feedback_ownership_with_keys(fake_settings):
    settings = fake_settings.model_copy(update={"require_api_keys": True, "admin_token": SecretStr(ADMIN), "key_cache_ttl_s": 0})
    app, server = _serve(settings)
    with server as url:
        admin = {"authorization": f"Bearer {ADMIN}"}
        key_a = httpx.post(f"{url}/admin/keys", json={"name": "a"}, headers=admin).json()["key"]
        key_b = httpx.post(f"{url}/admin/keys", json={"name": "b"}, headers=admin).json()["key"]
        raw = openai.OpenAI(base_url=f"{url}/v1", api_key=key_a, max_retries=0).chat.completions.with_raw_response.create(
            model="cheap", messages=HI)
        rid = raw.headers["x-expertmux-request-id"]
        fb = {"request_id": rid, "score": 0.8}
        assert httpx.post(f"{url}/v1/feedback", json=fb).status_code == 401
        other = httpx.post(f"{url}/v1/feedback", json=fb, headers={"authorization": f"Bearer {key_b}"})
        assert other.status_code == 403 and other.json()["error"]["code"] == "permission_denied"
        assert httpx.post(f"{url}/v1/feedback", json=fb, headers={"authorization": f"Bearer {key_a}"}).status_code == 201
        judged = httpx.post(f"{url}/v1/feedback", json={**fb, "source": "judge"}, headers=admin)
        assert judged.status_code == 201 and judged.json()["source"] == "judge"
        assert [(f.score, f.source) for f in _feedback_rows(app, rid)] == [(0.8, "user"), (0.8, "judge")]


def test_exploration_logs_propensities(tmp_path, upstreams):
    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8)]
    settings = make_settings(tmp_path, experts, {"active": "prior", "lambda": 0,
                                                 "exploration": {"method": "epsilon", "epsilon": 0.5, "seed": 11}})
    app, server = _serve(settings)
    with server as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
        served = []
        for _ in range(30):
            raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=HI)
            served.append((raw.headers["x-expertmux-request-id"], raw.headers["x-expertmux-expert"]))
        direct = client.chat.completions.with_raw_response.create(model="cheap", messages=HI)
        for rid, expert in served:
            d = _row(app, rid).decision
            assert d["propensities"] == pytest.approx({"strong": 0.75, "cheap": 0.25})
            assert d["expert"] == expert and d["propensity"] == d["propensities"][expert]
        assert {e for _, e in served} == {"cheap", "strong"}  # both explored
        d = _row(app, direct.headers["x-expertmux-request-id"]).decision  # a named expert is never explored
        assert d["propensities"] == {"cheap": 1.0} and d["propensity"] == 1.0


@pytest.mark.parametrize("reply, outcome, score", [("8/10", "scored", 0.8), ("a fine answer", "unparseable", None)])
def test_judge_scores_in_the_background(tmp_path, upstreams, reply, outcome, score):
    judge_behaviour = fake_openai.Behaviour(answer=reply, delay_s=3.0)
    with serve_in_thread(fake_openai.make_app(judge_behaviour)) as judge_url:
        experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3), remote_expert("judge", judge_url)]
        settings = make_settings(tmp_path, experts, {"active": "fixed", "options": {"fixed": {"expert": "cheap"}}})
        cfg = yaml.safe_load(settings.config.read_text())
        settings.config.write_text(yaml.safe_dump({**cfg, "judge": {"expert": "judge", "sample_rate": 1.0}}))
        app, server = _serve(settings)
        with server as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
            raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=HI)
            # the judge (3 s) is not on the response path: the answer is back before its verdict
            assert app.state.judge.outcomes.labels(outcome)._value.get() == 0
            rid = raw.headers["x-expertmux-request-id"]
            deadline = time.monotonic() + 30
            while app.state.judge.outcomes.labels(outcome)._value.get() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert app.state.judge.outcomes.labels(outcome)._value.get() == 1
            prompt = judge_behaviour.calls[0]["messages"][0]["content"]
            assert "What is the capital of France?" in prompt and "cheap answer here" in prompt
            rows = _feedback_rows(app, rid)
            assert [(f.score, f.source) for f in rows] == ([(score, "judge")] if score is not None else [])
            metrics = httpx.get(f"{url}/metrics").text
            assert f'expertmux_judge_total{{outcome="{outcome}"}} 1.0' in metrics
