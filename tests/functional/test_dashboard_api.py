"""The dashboard's JSON API on a running app (real port, SQLite file, fake upstream experts)
serving a learned policy: its cost–quality curve, promote through the gate and roll back from
the dashboard, reaching the next request without a restart."""

from __future__ import annotations

import httpx
import openai
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy.orm import Session

from core.settings import Settings
from router.ledger.models import RequestRow
from tests.conftest import make_settings, remote_expert
from tests.support.servers import serve_in_thread

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

ADMIN = "dashboard-api-token"
AUTH = {"authorization": f"Bearer {ADMIN}"}
MAP = {"small": "cheap", "mid": "cheap", "large": "strong"}
HI = [{"role": "user", "content": "compute the sum of this integer equation"}]


def test_curve_promote_and_rollback_of_a_learned_policy(tmp_path, upstreams):
    from api.app import create_app
    from policies.embeddings import configure_encoders
    from policies.training import train_policy
    from router.lifecycle import registry as policy_registry
    from tests.support.routing_matrix import write_matrix
    from tests.unit.test_policy_registry import PARAMS, _matrix

    configure_encoders(cache_dir=None)
    bad = train_policy("knn", _matrix(True), params=PARAMS, out=tmp_path / "artifacts" / "knn").path
    good = train_policy("knn", _matrix(False), params=PARAMS, out=tmp_path / "artifacts" / "knn").path
    bench = write_matrix(tmp_path / "bench", n_per_task=40, seed=3)
    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8, input_usd_per_mtok=10.0,
                             output_usd_per_mtok=30.0)]
    cfg = tmp_path / "expertmux.yaml"
    cfg.write_text(yaml.safe_dump({"experts": experts, "policy": {
        "active": "knn", "lambda": 0, "options": {"knn": {"artifact": str(bad), "expert_map": MAP}},
        "gate": {"data": str(bench), "split": "test"}},
        "tuning": {"data": str(bench), "split": "test", "expert_map": {"small": "cheap", "large": "strong"}}}))
    settings = Settings(config=cfg, data_dir=tmp_path / "var", autostart_experts=False, registry_poll_s=0,
                        admin_token=SecretStr(ADMIN))
    app = create_app(settings)
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
        engine = app.state.service.ledger.engine

        def served_version() -> str:
            raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=HI)
            assert app.state.service.ledger.flush(10)
            with Session(engine) as s:
                return s.get(RequestRow, raw.headers["x-expertmux-request-id"]).policy_version

        configured = served_version()
        good_version = policy_registry.register(engine, "knn", good)

        curve = httpx.get(f"{url}/admin/api/tuning/knn", params={"lambda": 0}, headers=AUTH, timeout=60).json()
        assert curve["evaluation_set"].startswith("bench/test") and curve["uses_lambda"]
        assert len(curve["curve"]) == 121 and curve["point"]["lambda"] == 0
        assert set(curve["curve"][-1]["share"]) == {"cheap"}  # the largest λ: the cheap expert only
        assert 0 <= curve["point"]["quality"] <= 1

        listed = httpx.get(f"{url}/admin/api/policies", headers=AUTH).json()
        assert listed["active"] == "knn" and listed["tuning_unavailable"] is None
        assert [v["version"] for v in listed["versions"]] == [good_version]

        promoted = httpx.post(f"{url}/admin/api/policies/knn/promote", json={"version": good_version}, headers=AUTH,
                              timeout=120).json()
        assert promoted["action"] == "promote", promoted
        assert promoted["gate"]  # the benchmark comparison that decided it
        assert served_version() == good_version  # applied at once, no restart, no poll

        bad_version = policy_registry.register(engine, "knn", bad)
        refused = httpx.post(f"{url}/admin/api/policies/knn/promote", json={"version": bad_version}, headers=AUTH,
                             timeout=120).json()
        assert refused["action"] == "refuse" and refused["reason"]
        assert served_version() == good_version

        rolled = httpx.post(f"{url}/admin/api/policies/knn/rollback", json={"reason": "test"}, headers=AUTH).json()
        assert rolled["action"] == "rollback" and rolled["version"] is None
        assert served_version() == configured
        again = httpx.post(f"{url}/admin/api/policies/knn/rollback", headers=AUTH)
        assert again.status_code == 400 and again.json()["error"]["code"] == "nothing_to_roll_back"

        events = httpx.get(f"{url}/admin/api/policies", headers=AUTH).json()["events"]
        mine = [e["action"] for e in events if e["actor"] == "dashboard"]
        assert mine == ["rollback", "refuse", "promote"]


def test_dashboard_is_off_without_an_admin_token(fake_app_url):
    url, app = fake_app_url
    # The admin API is off without a token: the dashboard too.
    assert httpx.get(f"{url}/admin").status_code == 401
    assert httpx.get(f"{url}/admin/api/overview").status_code == 401


def test_apply_bad_input_gives_clear_4xx(tmp_path, upstreams):
    from api.app import create_app

    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8)]
    settings = make_settings(tmp_path, experts, {"active": "prior", "lambda": 0}, admin_token=ADMIN)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        for body, code in (({"lambda": -1}, 400), ({"policy": "nope"}, 404), ({"lambda": "x"}, 400), ({"extra": 1}, 400)):
            r = httpx.post(f"{url}/admin/api/apply", json=body, headers=AUTH)
            assert r.status_code == code and r.json()["error"]["message"], (body, r.text)
        assert (app.state.service.policies.active_name, app.state.service.policies.default_lambda) == ("prior", 0)
        ok = httpx.post(f"{url}/admin/api/apply", json={"policy": "cheapest", "lambda": 3}, headers=AUTH).json()
        assert ok == {"active": "cheapest", "lambda": 3.0, "previous": {"active": "prior", "lambda": 0.0}}
        events = httpx.get(f"{url}/admin/api/policies", headers=AUTH).json()["events"]
        assert events[0]["action"] == "tune" and "λ 0 → 3" in events[0]["reason"]
        assert httpx.get(f"{url}/admin/api/tuning/prior", headers=AUTH).json()["error"]["code"] == "no_evaluation_set"
        assert httpx.get(f"{url}/admin/api/requests", params={"cursor": "bad"}, headers=AUTH).status_code == 400
        assert httpx.get(f"{url}/admin/api/requests/unknown", headers=AUTH).status_code == 404
        assert httpx.get(f"{url}/admin/api/requests", params={"status": "weird"}, headers=AUTH).status_code == 400


def test_cascades_and_over_time_routes(tmp_path, upstreams):
    """/cascades on ledger rows written by the app's own writer; /sessions, /pacing and /shadow
    say when their feature is off; bad windows are a 400, no token a 401."""
    from datetime import UTC, datetime, timedelta

    from api.app import create_app
    from tests.support.cascade_ledger import Step, cascade_record

    experts = [remote_expert("cheap", upstreams["cheap"][1]), remote_expert("strong", upstreams["strong"][1])]
    app = create_app(make_settings(tmp_path, experts, {"active": "prior", "lambda": 0}, admin_token=ADMIN))
    with serve_in_thread(app) as url, httpx.Client(base_url=f"{url}/admin/api", headers=AUTH) as http:
        assert http.get("/cascades", params={"hours": 24}).json()["policies"] == []
        now = datetime.now(UTC)
        for record in (cascade_record("a", now - timedelta(hours=2), "cascade", [Step("cheap", 0.001, 120, True)]),
                       cascade_record("b", now - timedelta(hours=1), "cascade",
                                      [Step("cheap", 0.001, 180), Step("strong", 0.03, 900, True)]),
                       cascade_record("c", now - timedelta(hours=30), "cascade",
                                      [Step("cheap", 0.001, 180), Step("strong", 0.03, 900, True)])):
            app.state.service.ledger.submit(record)
        assert app.state.service.ledger.flush(10)
        day = http.get("/cascades", params={"hours": 24}).json()
        assert day["requests"] == 2 and len(day["policies"]) == 1
        p = day["policies"][0]
        assert (p["policy"], p["requests"], p["escalated"], p["escalation_rate"], p["mean_steps"]) == ("cascade", 2, 1, 0.5, 1.5)
        assert p["added_cost_usd"] == pytest.approx(0.001) and p["added_cost_per_request_usd"] == pytest.approx(0.0005)
        assert (p["added_latency_p50_ms"], p["added_latency_p95_ms"]) == (180.0, 180.0)
        since = (now - timedelta(hours=48)).isoformat()
        assert http.get("/cascades", params={"since": since}).json()["policies"][0]["requests"] == 3
        assert http.get("/cascades", params={"hours": 0}).status_code == 400
        bad = http.get("/cascades", params={"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "since"
        assert httpx.get(f"{url}/admin/api/cascades").status_code == 401
        # routing over time is off in this config: each route says so
        assert http.get("/pacing").json() == {"enabled": False, "scopes": []}
        assert http.get("/sessions", params={"hours": 24}).json()["enabled"] is False
        shadow = http.get("/shadow").json()
        assert shadow["enabled"] is False and shadow["live"] is None and shadow["candidates"] == []


def test_routing_time_per_policy_from_the_decisions_in_the_ledger(tmp_path, upstreams):
    """Each routed request records how long it waited for its features and for the decision;
    /routing-time reads p50/p95 per policy from the ledger; a named expert is not routed."""
    from api.app import create_app
    from policies.embeddings import configure_encoders
    from policies.training import train_policy
    from tests.unit.test_policy_registry import PARAMS, _matrix

    configure_encoders(cache_dir=None)
    knn = train_policy("knn", _matrix(False), params=PARAMS, out=tmp_path / "artifacts" / "knn").path
    experts = [remote_expert("cheap", upstreams["cheap"][1]), remote_expert("strong", upstreams["strong"][1])]
    app = create_app(make_settings(tmp_path, experts, {"active": "prior", "lambda": 0, "options": {
        "knn": {"artifact": str(knn), "expert_map": MAP}}}, admin_token=ADMIN))
    with serve_in_thread(app) as url, httpx.Client(base_url=f"{url}/admin/api", headers=AUTH) as http:
        assert http.get("/routing-time", params={"hours": 1}).json()["policies"] == []
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)
        ids = []
        for i, model in enumerate(["expertmux/knn"] * 5 + ["expertmux/prior"] * 3 + ["cheap"]):
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=[{"role": "user", "content": f"compute the sum of {i} and {i + 1}"}])
            ids.append(raw.headers["x-expertmux-request-id"])
        assert app.state.service.ledger.flush(10)
        with Session(app.state.service.ledger.engine) as s:
            timing = {s.get(RequestRow, i).policy: s.get(RequestRow, i).decision.get("timing") for i in ids}
        assert timing["direct"] is None  # a named expert: nothing was routed
        assert timing["knn"]["decide_ms"] > 0 and timing["knn"]["features_ms"] > 0
        by = {p["policy"]: p for p in http.get("/routing-time", params={"hours": 1}).json()["policies"]}
        assert set(by) == {"knn", "prior"}
        assert (by["knn"]["requests"], by["prior"]["requests"]) == (5, 3)
        for p in by.values():
            assert 0 < p["decide_p50_ms"] <= p["decide_p95_ms"] and p["total_p50_ms"] >= p["decide_p50_ms"]
        # knn waits for its embedding in the feature thread; the prior reads no prompt and does not wait
        assert by["knn"]["features_p50_ms"] > by["prior"]["features_p95_ms"]
        assert http.get("/routing-time", params={"hours": 0}).status_code == 400
        assert httpx.get(f"{url}/admin/api/routing-time").status_code == 401
