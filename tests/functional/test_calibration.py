"""Calibration end to end against simulated experts of known per-skill accuracy and price.

The simulated experts are in-process OpenAI-compatible upstreams (tests/support/sim_experts.py),
called through the proxy's own expert client. What is shown: measured per-skill accuracies are the
simulated ones; a policy trained on the calibration matrix by the same code path as
``expertmux train`` (no expert_map) and served through the PolicySet gets ≥ 90 % of the quality
that routing by skill adds over the best single expert on unseen prompts; a rerun, a crash or a
new expert never computes a cell twice; bad input fails clearly and a down expert leaves NaN cells.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from typer.testing import CliRunner  # noqa: E402

from cli import _register, app  # noqa: E402
from core.config import PolicyConfig  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from router.calibration.matrix import load_status  # noqa: E402
from router.calibration.runner import calibrate  # noqa: E402
from router.calibration.sources import DefaultSource, JsonlSource  # noqa: E402
from router.lifecycle.policy_set import PolicySet  # noqa: E402
from tests.conftest import make_settings, remote_expert  # noqa: E402
from tests.support import sim_experts  # noqa: E402
from tests.support.servers import serve_in_thread  # noqa: E402

SKILLS = ("arithmetic", "count_letters", "reverse_word", "sentiment", "even_odd", "multiple_choice")
ACCURACY = {  # per expert and skill: "math" and "words" are specialists, "big" is good everywhere and dear
    "math": {"arithmetic": 0.95, "count_letters": 0.9, "reverse_word": 0.15, "sentiment": 0.3, "even_odd": 0.9, "multiple_choice": 0.3},
    "words": {"arithmetic": 0.2, "count_letters": 0.3, "reverse_word": 0.9, "sentiment": 0.95, "even_odd": 0.3, "multiple_choice": 0.4},
    "big": {"arithmetic": 0.65, "count_letters": 0.6, "reverse_word": 0.6, "sentiment": 0.7, "even_odd": 0.65, "multiple_choice": 0.95},
}
PRICES = {"math": (0.5, 1.0), "words": (0.5, 1.0), "big": (10.0, 30.0)}


def _prompt_file(path, skills=SKILLS):
    rows = [json.loads(line) for line in DefaultSource().path.read_text().splitlines()]
    rows = [r for r in rows if r["skill"] in skills]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class World:
    """Simulated experts on real loopback ports, and settings naming them."""

    def __init__(self, tmp_path, names=("math", "words", "big"), profiles=None, **expert_kw):
        self.tmp = tmp_path
        self.prompts = _prompt_file(tmp_path / "prompts.jsonl")
        self.items = JsonlSource(self.prompts).load()
        answers = {it.prompt: (it.skill, sim_experts.right_answer(it)) for it in self.items}
        profiles = {**ACCURACY, **(profiles or {})}
        self.sims = {n: sim_experts.SimExpert(n, profiles.get(n, ACCURACY["big"]), answers, **expert_kw.get(n, {})) for n in names}
        self._servers = []
        self.urls = {}

    def __enter__(self):
        for name, sim in self.sims.items():
            cm = serve_in_thread(sim_experts.make_app(sim))
            self.urls[name] = cm.__enter__()
            self._servers.append(cm)
        return self

    def __exit__(self, *exc):
        for sim in self.sims.values():
            sim.release.set()
        for cm in reversed(self._servers):
            cm.__exit__(None, None, None)

    def settings(self, names=None, sub="cfg", **overrides):
        folder = self.tmp / sub
        folder.mkdir(exist_ok=True)
        experts = []
        for n in names or list(self.sims):
            pin, pout = PRICES.get(n, (1.0, 2.0))
            experts.append(remote_expert(n, self.urls[n], input_usd_per_mtok=pin, output_usd_per_mtok=pout, params_b=1.0,
                                         description=f"simulated expert {n}"))
        overrides.setdefault("data_dir", self.tmp / "var")
        return make_settings(folder, experts, **overrides)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """One full calibration of the three simulated experts (shared by the learning tests)."""
    tmp = tmp_path_factory.mktemp("calibration")
    with World(tmp) as world:
        settings = world.settings()
        snaps = []
        result = asyncio.run(calibrate(settings, source=JsonlSource(world.prompts), out_dir=tmp / "out", progress=snaps.append))
        yield world, settings, result, snaps


def test_measured_accuracies_are_the_simulated_ones(calibrated):
    world, _, result, snaps = calibrated
    n_items = len(world.items)
    assert result.state == "done" and result.ok and result.matrix_path is not None
    assert result.progress.done == 3 * n_items and result.progress.failed == 0
    assert snaps[-1].done == 3 * n_items and snaps[-1].eta_s == 0.0
    assert all(s.done <= s.total for s in snaps)
    data = RoutingData.load(result.out_dir)
    assert data.models == ["math", "words", "big"] and len(data) == n_items
    # every cell is the simulator's truth, and each prompt was asked once per expert
    by_prompt = {it.routing_text(): it.prompt for it in world.items}
    for j, name in enumerate(data.models):
        sim = world.sims[name]
        truth = np.array([sim.correct(by_prompt[p]) for p in data.prompts], dtype=float)
        assert np.array_equal(data.scores[:, j], truth), name
        assert set(sim.calls.values()) == {1} and len(sim.calls) == n_items
    # and the per-skill means match the simulated accuracies within sampling error
    status = load_status(result.out_dir)
    for skill in SKILLS:
        for name, accuracy in ACCURACY.items():
            cell, acc = status.skills[skill][name], accuracy[skill]
            sigma = math.sqrt(acc * (1 - acc) / cell.n)
            assert abs(cell.quality - acc) <= 3.5 * sigma + 1 / cell.n, (skill, name, cell.quality, acc)
    # costs are real token counts × the configured prices; the split is stratified 70/30
    frame = __import__("pandas").read_parquet(result.matrix_path)
    row = frame.iloc[0]
    assert row["cost_usd::big"] == pytest.approx((row["output_tokens::big"] * 30.0 + (len(world.items[0].prompt.split()) + 5) * 10.0) / 1e6)
    assert json.loads(row["logprobs::math"])[0][1] in (-0.05, -2.5)
    for skill, group in frame.groupby("task"):
        assert abs((group["split"] == "test").mean() - 0.3) < 0.05, skill
    assert {"answer::math", "latency_s::math", "error::math", "grader", "reference"} <= set(frame.columns)


def _served(settings, name, artifact):
    config = PolicyConfig.model_validate({"active": "prior", "options": {name: {"artifact": str(artifact)}}})
    from experts.registry import expert_info

    policies = PolicySet(config, [expert_info(e) for e in settings.app_config.experts])
    assert name in policies.names(), policies.status()
    return policies.get(name)


@pytest.mark.parametrize("policy", ["knn", "tryage"])
def test_learned_policy_closes_the_gap_to_per_skill_routing(calibrated, tmp_path, policy):
    world, settings, result, _ = calibrated
    _register()
    out = tmp_path / policy
    args = ["train", policy, "--data", str(result.out_dir), "--out", str(out), "--encoder", "hashing",
            "--cache-dir", str(tmp_path / "cache")]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    served = _served(settings, policy, out)  # no expert_map: the matrix's models are the experts
    data = RoutingData.load(result.out_dir)
    test = data.subset(data.rows_of("test"))
    cols = [data.models.index(e) for e in served.expert_names]
    quality = np.asarray(served.predict_quality(test.prompts))
    chosen = np.array(cols)[np.argmax(quality, axis=1)]
    routed = test.scores[np.arange(len(test)), chosen].mean()
    best_single = np.nanmean(test.scores, axis=0).max()
    best_of = {s: max(ACCURACY, key=lambda e: ACCURACY[e][s]) for s in SKILLS}  # known from the simulation
    per_skill = np.mean([test.scores[i, data.models.index(best_of[t])] for i, t in enumerate(test.task)])
    assert per_skill - best_single > 0.15  # the simulation leaves routing something to gain
    assert routed - best_single >= 0.9 * (per_skill - best_single), (routed, best_single, per_skill)


FAST = {"mlp": ["--epochs", "40"], "mf": ["--epochs", "40"], "graphrouter": ["--epochs", "40", "--patience", "20"]}


@pytest.mark.parametrize("policy", ["knn", "mlp", "mf", "coe", "coe_cluster", "tryage", "graphrouter"])
def test_every_learned_policy_trains_on_a_calibration_and_serves_it_without_expert_map(calibrated, tmp_path, policy):
    if policy in ("mlp", "mf", "graphrouter"):
        pytest.importorskip("torch", reason="the ml extra is not installed")
    if policy == "graphrouter":
        pytest.importorskip("torch_geometric", reason="torch-geometric is not installed")
    world, settings, result, _ = calibrated
    _register()
    run = CliRunner().invoke(app, ["train", policy, "--data", str(result.out_dir), "--out", str(tmp_path / policy), "--encoder",
                                   "hashing", "--cache-dir", str(tmp_path / "cache"), *FAST.get(policy, [])])
    assert run.exit_code == 0, run.output
    manifest = json.loads((tmp_path / policy / "v1" / "manifest.json").read_text())
    assert manifest["models"] == ["math", "words", "big"] and "test" in manifest["metrics"]
    served = _served(settings, policy, tmp_path / policy)
    assert served.expert_names == ["math", "words", "big"]
    quality = np.asarray(served.predict_quality([it.routing_text() for it in world.items[:5]]))
    assert quality.shape == (5, 3) and np.isfinite(quality).all()


def test_rerun_computes_nothing_and_a_new_expert_fills_only_its_column(calibrated, tmp_path):
    world, _, result, _ = calibrated
    before = {n: s.total_calls for n, s in world.sims.items()}
    again = asyncio.run(calibrate(world.settings(), source=JsonlSource(world.prompts), out_dir=result.out_dir))
    assert again.progress.total == 0 and again.progress.already == 3 * len(world.items)
    assert {n: s.total_calls for n, s in world.sims.items()} == before
    with World(tmp_path, names=("late",), profiles={"late": ACCURACY["math"]}) as late:  # a second maths specialist
        world.sims["late"], world.urls["late"] = late.sims["late"], late.urls["late"]
        try:
            settings = world.settings(sub="cfg-late")
            added = asyncio.run(calibrate(settings, source=JsonlSource(world.prompts), out_dir=result.out_dir, limit=24))
        finally:
            world.sims.pop("late"), world.urls.pop("late")
        assert {n: s.total_calls for n, s in world.sims.items()} == before  # the others: not one call
        assert late.sims["late"].total_calls == 24 and added.progress.done == 24
        data = RoutingData.load(result.out_dir)
        assert data.models == ["math", "words", "big", "late"] and len(data) == len(world.items)
        assert (~np.isnan(data.scores[:, 3])).sum() == 24 and not np.isnan(data.scores[:, :3]).any()
        picked, sizes = Counter(data.task[~np.isnan(data.scores[:, 3])]), Counter(data.task)
        assert all(abs(picked[s] - 24 * sizes[s] / len(data)) < 1 for s in SKILLS), picked  # stratified by skill
        # GraphRouter learns from the late expert's 24 answers and scores an expert never calibrated too
        pytest.importorskip("torch_geometric", reason="torch-geometric is not installed")
        from policies.training import train_policy

        trained = train_policy("graphrouter", data, params={"encoder": "hashing", "epochs": 150, "patience": 40},
                               out=tmp_path / "graphrouter", eval_split=None)
        assert trained.policy.expert_names == ["math", "words", "big", "late"]
        test = data.subset(data.rows_of("test"))  # its 24 answers teach it the late expert's strengths
        late_q = np.asarray(trained.policy.predict_quality(test.prompts))[:, 3]
        strong = np.isin(test.task, [s for s in SKILLS if ACCURACY["math"][s] >= 0.9])
        assert late_q[strong].mean() - late_q[~strong].mean() >= 0.1, (late_q[strong].mean(), late_q[~strong].mean())
        settings.app_config.experts.append(settings.app_config.experts[0].model_copy(update={"name": "unseen"}))
        served = _served(settings, "graphrouter", tmp_path / "graphrouter")
        assert served.expert_names == ["math", "words", "big", "late", "unseen"]
        quality = np.asarray(served.predict_quality([it.routing_text() for it in world.items[:10]]))
        assert quality.shape == (10, 5) and np.isfinite(quality).all()
        # a policy that cannot score new experts serves the calibrated ones only
        knn = train_policy("knn", data, params={"encoder": "hashing"}, out=tmp_path / "knn", eval_split=None)
        assert knn.policy.expert_names == ["math", "words", "big", "late"]
        assert _served(settings, "knn", tmp_path / "knn").expert_names == ["math", "words", "big", "late"]


def test_budget_stops_before_spending_more(tmp_path):
    with World(tmp_path, names=("math", "big")) as world:
        settings = world.settings()
        budget = 0.0005
        first = asyncio.run(calibrate(settings, source=JsonlSource(world.prompts), out_dir=tmp_path / "out", limit=60,
                                      budget_usd=budget, concurrency=1))
        assert first.state == "budget" and 0 < first.progress.spent_usd <= budget
        assert first.progress.done < 120 and first.ok
        spent_cells = sum(1 for _ in (tmp_path / "out" / "cells.jsonl").open())
        calls = {n: s.total_calls for n, s in world.sims.items()}
        assert sum(calls.values()) == spent_cells  # no call went unrecorded
        rest = asyncio.run(calibrate(settings, source=JsonlSource(world.prompts), out_dir=tmp_path / "out", limit=60))
        assert rest.state == "done" and rest.progress.already == spent_cells and rest.progress.done == 120 - spent_cells
        assert all(set(s.calls.values()) == {1} for s in world.sims.values())


def test_an_expert_that_is_down_leaves_nan_cells_with_the_reason(tmp_path):
    with World(tmp_path, names=("math", "words"), words={"fail_status": 503}) as world:
        settings = world.settings()
        result = asyncio.run(calibrate(settings, source=JsonlSource(world.prompts), out_dir=tmp_path / "out", limit=30,
                                       concurrency=1))
        assert result.ok and result.state == "done"
        assert world.sims["words"].total_calls == settings.breaker_failures  # then it counts as down
        counts = result.status.experts["words"]
        assert counts == {"graded": 0, "grade_errors": 0, "call_errors": 30, "pending": 0}
        frame = __import__("pandas").read_parquet(result.matrix_path)
        assert frame["score::words"].isna().all() and frame["score::math"].notna().all()
        errors = frame["error::words"].tolist()
        assert "HTTP 503" in errors[0] and all("HTTP 503" in e or "is down" in e for e in errors)
        # the CLI: exit 0 while something was graded, 1 when nothing could be
        _register()
        cfg = str(settings.config)
        ok = CliRunner().invoke(app, ["calibrate", "-c", cfg, "-s", f"jsonl:{world.prompts}", "-o", str(tmp_path / "out"),
                                      "-n", "30", "-k", "1"])
        assert ok.exit_code == 0, ok.output
        assert "words" in ok.output and "failed calls" in ok.output
        down = CliRunner().invoke(app, ["calibrate", "-c", cfg, "-s", f"jsonl:{world.prompts}", "-o", str(tmp_path / "only-down"),
                                        "--experts", "words", "-n", "10", "-k", "1"])
        assert down.exit_code == 1 and "nothing could be graded" in down.output


def test_bad_input_fails_before_any_call(tmp_path):
    with World(tmp_path, names=("math",)) as world:
        _register()
        config = str(world.settings().config)
        bad = tmp_path / "bad.jsonl"
        good = '{"prompt": "What is 2 + 2?", "reference": "4", "grader": "numeric"}\n'
        cases = {
            good + '{"prompt": "broken", "grader": \n': "bad.jsonl, line 2: not valid JSON",
            good + good.replace("numeric", "telepathy"): "line 2: unknown grader 'telepathy'",
            '{"reference": "4", "grader": "numeric"}\n': "line 1: 'prompt' must be a non-empty string",
            good.replace('"4"', '"four"'): "line 1: numeric grader: reference 'four' is not a number",
        }
        for text, message in cases.items():
            bad.write_text(text)
            run = CliRunner().invoke(app, ["calibrate", "-c", config, "-s", f"jsonl:{bad}", "-o", str(tmp_path / "o")])
            assert run.exit_code == 1 and message in " ".join(run.output.split()), run.output
        run = CliRunner().invoke(app, ["calibrate", "-c", config, "-s", f"jsonl:{world.prompts}", "--experts", "nobody",
                                       "-o", str(tmp_path / "o")])
        assert run.exit_code == 1 and "unknown expert(s) ['nobody']" in run.output
        assert world.sims["math"].total_calls == 0 and not (tmp_path / "o").exists()  # nothing written either
