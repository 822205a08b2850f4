"""Learning from logged traffic, from the outside: rows the running service writes (with
exploration and feedback over HTTP) load as bandit data, and ``expertmux train --ledger`` /
``expertmux eval --ledger`` work on a real SQLite ledger."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import yaml

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from typer.testing import CliRunner  # noqa: E402

from benchmarks.closed_loop import open_ledger, simulate, sync_models  # noqa: E402
from cli import _register, app  # noqa: E402
from policies.artifacts import load_artifact  # noqa: E402
from router.learning.bandit import load_logged  # noqa: E402
from tests.conftest import make_settings, remote_expert  # noqa: E402
from tests.support.servers import serve_in_thread  # noqa: E402


def test_rows_the_service_writes_load_as_bandit_feedback(tmp_path, upstreams):
    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8)]
    policy = {"active": "prior", "lambda": 0, "exploration": {"method": "epsilon", "epsilon": 0.5, "seed": 3}}
    settings = make_settings(tmp_path, experts, policy)
    from api.app import create_app

    with serve_in_thread(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        ids = {}
        for i in range(40):
            r = client.post("/v1/chat/completions", json={"model": "expertmux/auto",
                                                          "messages": [{"role": "user", "content": f"question {i}"}]})
            assert r.status_code == 200, r.text
            ids[r.headers["x-expertmux-request-id"]] = r.headers["x-expertmux-expert"]
        for rid, expert in list(ids.items())[:30]:  # feedback on 30 of them, one twice
            r = client.post("/v1/feedback", json={"request_id": rid, "score": 1.0 if expert == "strong" else 0.0,
                                                  "source": "auto"})
            assert r.status_code == 201, r.text
        client.post("/v1/feedback", json={"request_id": rid, "thumbs": "up", "source": "user"})
    data = load_logged(settings.resolved_database_url)
    assert len(data) == 30 and set(data.request_id) <= set(ids)
    assert data.experts == ["cheap", "strong"] and data.logged.all()
    # ε = 0.5 over two experts, greedy = strong: p(strong) = 0.75, p(cheap) = 0.25, logged per row
    strong = np.array([data.experts[a] == "strong" for a in data.action])
    assert np.allclose(data.propensity[strong], 0.75) and np.allclose(data.propensity[~strong], 0.25)
    assert np.allclose(data.propensities.sum(axis=1), 1.0) and data.candidates.all()
    assert 0 < strong.sum() < 30  # both experts were tried
    assert data.reward[strong].min() >= 0.5 and data.reward[~strong].max() <= 0.5  # the mean of 2 feedbacks on one
    assert data.n_feedback.sum() == 31 and all("question" in p for p in data.prompts)
    assert load_logged(settings.resolved_database_url, sources=["user"]).n_feedback.tolist() == [1]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """Simulated traffic on the synthetic fixture matrix, served by a weak kNN with ε = 0.4."""
    from policies import create_policy
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders
    from tests.support.routing_matrix import make_frame

    _register()
    folder = tmp_path_factory.mktemp("loop")
    configure_encoders(cache_dir=folder / "cache")
    data = RoutingData.from_frame(make_frame(n_per_task=80, seed=1), {"models": {
        "small": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1},
        "mid": {"input_usd_per_mtok": 0.5, "output_usd_per_mtok": 0.5},
        "large": {"input_usd_per_mtok": 2.0, "output_usd_per_mtok": 2.0}}})
    url, engine = open_ledger(folder / "ledger.db")
    sync_models(engine, data)
    rows = data.rows_of("train")
    weak = create_policy("knn", k=3, encoder="hashing").fit(data.subset(rows[:6]))
    served = np.random.default_rng(0).choice(rows, size=400)
    simulate(engine, data, served, weak, epsilon=0.4, seed=1)
    engine.dispose()
    return url, data, folder


def run(*args):
    return CliRunner().invoke(app, list(args))


def test_train_from_the_ledger_writes_a_version_with_provenance(ledger):
    url, data, folder = ledger
    out = folder / "knn"
    common = ["--ledger", "--db", url, "--out", str(out), "--encoder", "hashing", "--cache-dir", str(folder / "cache")]
    result = run("train", "knn", *common, "--since", "2026-01-01T01:00", "--target", "ipw")
    assert result.exit_code == 0, result.output
    assert "artifact written to" in result.output and "effective sample size" in result.output
    manifest = json.loads((out / "v1" / "manifest.json").read_text())
    prov = manifest["extra"]["provenance"]
    assert prov["source"] == "ledger" and prov["ledger"] == url and prov["since"] == "2026-01-01 01:00:00"
    assert prov["rows"] == 340 and prov["training"]["target"] == "ipw"  # 400 requests a minute apart, 60 before 01:00
    assert 0 < prov["propensity"]["min"] < 0.2 and prov["propensity"]["logged_share"] == 1.0
    assert prov["training"]["training_rows"] > prov["rows"]  # explored rows weigh more: resampled
    policy = load_artifact(out).policy
    assert policy.expert_names == ["large", "mid", "small"]
    from router.lifecycle.registry import list_versions

    (version,) = list_versions(url, "knn")  # registered in the ledger it learned from, not active
    assert version.version == policy.version and not version.active and "registered as knn" in result.output
    assert version.provenance["source"] == "ledger" and version.provenance["rows"] == 340
    assert run("train", "mlp", *common, "--target", "dr", "--epochs", "5").exit_code == 0  # a second policy, DR target
    assert json.loads((folder / "knn" / "v2" / "manifest.json").read_text())["policy"] == "mlp"
    empty = run("train", "knn", *common, "--since", "2031-01-01")
    assert empty.exit_code == 1 and "no answered requests with feedback" in empty.output
    neither = run("train", "knn", "--encoder", "hashing")
    assert neither.exit_code == 1 and "--data DIR" in neither.output


def test_eval_on_the_ledger_prints_estimates_with_intervals(ledger, tmp_path):
    url, data, folder = ledger
    out = tmp_path / "knn"
    assert run("train", "knn", "--ledger", "--db", url, "--out", str(out), "--encoder", "hashing",
               "--cache-dir", str(folder / "cache")).exit_code == 0
    report = tmp_path / "report.json"
    result = run("eval", "--ledger", "--policy", "knn", "--artifact", str(out), "--db", url, "--json", str(report),
                 "--lambda", "0", "--cache-dir", str(folder / "cache"))
    assert result.exit_code == 0, result.output
    for word in ("IPS", "SNIPS", "DR", "as logged", "agrees with the logged choice"):
        assert word in result.output
    rep = rep_knn = json.loads(report.read_text())
    assert rep["rows"] == 400 and rep["ci"] == "clt"
    for m in ("ips", "snips", "dr"):
        q = rep["quality"][m]
        assert q["lo"] < q["value"] < q["hi"] and rep["cost"][m]["value"] > 0
    # the DR reward model can be the candidate's own predictions
    own = run("eval", "--ledger", "--policy", "knn", "--artifact", str(out), "--db", url, "--lambda", "0",
              "--reward-model", "candidate", "--json", str(report), "--cache-dir", str(folder / "cache"))
    assert own.exit_code == 0, own.output
    assert json.loads(report.read_text())["reward_model"] == "candidate"
    # without --artifact: the policy as the deployment's config serves it
    config = tmp_path / "expertmux.yaml"
    experts = [{"name": m, "backend": "remote", "model": m, "endpoint": "http://127.0.0.1:9/v1"} for m in data.models]
    config.write_text(yaml.safe_dump({"experts": experts, "policy": {"active": "prior", "options": {
        "knn": {"artifact": str(out)}}}}))
    served = run("eval", "--ledger", "--policy", "knn", "--config", str(config), "--db", url, "--lambda", "0",
                 "--json", str(report), "--cache-dir", str(folder / "cache"))
    assert served.exit_code == 0, served.output
    assert json.loads(report.read_text())["quality"]["ips"]["value"] == rep_knn["quality"]["ips"]["value"]
    # a fixed simple policy over the ledger's experts: always the cheapest
    cheap = run("eval", "--ledger", "--policy", "cheapest", "--db", url, "--json", str(report), "--ci", "bootstrap")
    assert cheap.exit_code == 0, cheap.output
    rep = json.loads(report.read_text())
    assert rep["share"] == {"small": 1.0} and rep["ci"] == "bootstrap"
    truth = np.nanmean(data.scores[data.rows_of("train"), data.models.index("small")])
    assert abs(rep["quality"]["snips"]["value"] - truth) < 0.2
    assert run("eval", "--ledger", "--db", url).exit_code == 1  # --policy missing
