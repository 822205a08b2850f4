"""Router-R1 environments: the routing-matrix abstraction and the live task's scoring (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from core.types import ExpertInfo
from policies.data import RoutingData
from policies.router_r1.agent import AgentConfig, ExpertReply, RouterR1Agent
from policies.router_r1.env_matrix import INFORMATION, MatrixEnv, example_performance
from router.agents.r1_live_env import LiveEnv, arithmetic_task, first_int, score_answer
from tests.support.routing_matrix import make_frame


@pytest.fixture(scope="module")
def data() -> RoutingData:
    return RoutingData.from_frame(make_frame(n_per_task=20, seed=3), {"models": {
        "small": {"params_b": 1, "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.1},
        "mid": {"params_b": 8, "input_usd_per_mtok": 0.5, "output_usd_per_mtok": 0.5},
        "large": {"params_b": 70, "input_usd_per_mtok": 2.0, "output_usd_per_mtok": 2.0}}}, name="synthetic")


def scripted(*steps: str):
    """A router that writes ``steps`` in order."""
    it = iter(steps)
    return lambda messages, stop: next(it)


def run(env: MatrixEnv, i: int, *steps: str, max_rounds: int = 2):
    agent = RouterR1Agent(env.candidates, scripted(*steps), env.call_expert(i), AgentConfig(max_rounds=max_rounds, max_retries=0))
    return agent.run_sync(env.question(i))


def test_candidates_carry_prices_sizes_and_train_performance(data):
    env = MatrixEnv(data, split="test")
    by = {c.name: c for c in env.candidates}
    assert by["large"].usd_per_mtok_in == 2.0 and by["large"].params_b == 70
    train = data.subset(data.rows_of("train"))
    j = train.models.index("small")
    assert by["small"].example_performance.startswith(f"mean {np.nanmean(train.scores[:, j]):.2f}")
    assert "trivia" in example_performance(train, "small")
    # the test split's outcomes never reach the descriptors
    other = RoutingData.from_frame(make_frame(n_per_task=20, seed=3).assign(**{"score::small": 0.0}), name="x")
    assert MatrixEnv(other, split="test").candidates[0].example_performance.startswith("mean 0.00")


def test_information_is_neutral_and_calls_cost_the_recorded_price(data):
    env = MatrixEnv(data, split="test")
    i = 0
    reply = env.call_expert(i)("large", "anything")
    assert reply.text == INFORMATION.format(name="large")
    assert reply.cost_usd == pytest.approx(env.costs[i, env.models.index("large")])
    # the same text whatever the recorded score: nothing leaks
    j = env.models.index("large")
    rows = [r for r in range(len(env)) if env.data.scores[r, j] == 0] + [r for r in range(len(env)) if env.data.scores[r, j] == 1]
    assert len({env.call_expert(r)("large", "q").text for r in rows}) == 1


def test_answer_adopts_the_named_expert_else_the_last_called(data):
    env = MatrixEnv(data, split="test")
    i = int(np.flatnonzero(env.data.scores[:, 0] != env.data.scores[:, 2])[0])
    small, large = env.data.scores[i, 0], env.data.scores[i, 2]
    named = run(env, i, "<think>a</think><search>small: q</search>", "<search>large: q</search>", "<answer>small</answer>")
    out = env.outcome(i, named, alpha=0.0)
    assert out.well_formed and out.adopted == "small" and out.quality == small and out.n_calls == 2
    assert out.cost_usd == pytest.approx(env.costs[i, 0] + env.costs[i, 2])
    last = run(env, i, "<search>small: q</search>", "<search>large: q</search>", "<answer>I agree</answer>")
    assert env.outcome(i, last, alpha=0.0).adopted == "large" and env.outcome(i, last, alpha=0.0).quality == large


def test_reward_hand_computed(data):
    env = MatrixEnv(data, split="test")
    j = env.models.index("mid")
    i = int(np.flatnonzero(env.data.scores[:, j] == 1)[0])
    res = run(env, i, "<search>mid: q</search>", "<answer>mid</answer>")
    out = env.outcome(i, res, alpha=0.5)
    c, cmax = env.costs[i, j], env.costs[i].max()
    assert out.reward.total == pytest.approx(0.5 * 1.0 + 0.5 * (1 - c / cmax))
    own = env.outcome(i, run(env, i, "<answer>42</answer>"), alpha=0.5)
    assert own.quality == 0 and own.cost_usd == 0 and own.reward.total == pytest.approx(0.5)


def test_sampled_pool_varies_per_row_and_normalises_cost_by_its_dearest(data):
    from policies.router_r1.train import TrainConfig, candidate_pool

    env = MatrixEnv(data, split="test")
    assert candidate_pool(env, 0, TrainConfig(pool_size=0)) == env.candidates
    assert candidate_pool(env, 0, TrainConfig(pool_size=5)) == env.candidates  # a pool as large as the set: all
    cfg = TrainConfig(pool_size=2, seed=7)
    pools = [candidate_pool(env, i, cfg) for i in range(len(env))]
    assert all(len(p) == 2 and len({c.name for c in p}) == 2 for p in pools)
    assert pools == [candidate_pool(env, i, cfg) for i in range(len(env))]  # fixed per row: a GRPO group shares it
    assert len({tuple(c.name for c in p) for p in pools}) > 3  # subsets and orders vary
    # offered small and mid only, calling mid costs the whole normaliser; offered all three, a fraction
    j = env.models.index("mid")
    i = int(np.flatnonzero(env.data.scores[:, j] == 1)[0])
    res = run(env, i, "<search>mid: q</search>", "<answer>mid</answer>")
    assert env.outcome(i, res, alpha=1.0, pool=["small", "mid"]).reward.total == pytest.approx(0.0)
    assert env.outcome(i, res, alpha=1.0).reward.total == pytest.approx(1 - env.costs[i, j] / env.costs[i].max())


def test_malformed_episode_scores_the_penalty_and_the_fallback_quality(data):
    env = MatrixEnv(data, split="test")
    res = run(env, 1, "no tags at all")
    out = env.outcome(1, res, alpha=0.2)
    assert not out.well_formed and out.reward.total == -1.0
    cheapest = env.models.index("small")
    assert out.adopted == "small" and out.quality == env.data.scores[1, cheapest]


def test_unknown_model_subset_is_refused(data):
    from core.errors import PolicyError

    with pytest.raises(PolicyError):
        MatrixEnv(data, models=["small", "nope"])


def test_live_task_is_reproducible_and_scored_by_exact_integer():
    a, b = arithmetic_task(5, seed=1), arithmetic_task(5, seed=1)
    assert a == b and all(str(eval(p.question[8:-1].replace("×", "*"))) == p.gold for p in a)
    assert first_int("The answer is 1,234.") == "1234"
    assert score_answer("It is -7", "-7") == 1.0 and score_answer("7", "-7") == 0.0


class _Expert:
    def __init__(self, name: str, price: float) -> None:
        self.info = ExpertInfo(name=name, input_usd_per_mtok=price, output_usd_per_mtok=price)


def test_live_adoption_scores_the_expert_reply():
    env = LiveEnv({"a": _Expert("a", 0.1), "b": _Expert("b", 1.0)}, arithmetic_task(3, seed=0))
    gold = env.problems[0].gold

    def call(name, query):
        return ExpertReply(text=gold if name == "b" else "0", cost_usd=0.001)

    agent = RouterR1Agent(env.candidates, scripted("<search>a: q</search>", "<search>b: q</search>", "<answer>b</answer>"),
                          call, AgentConfig(max_rounds=2, max_retries=0))
    out = env.outcome(0, agent.run_sync(env.question(0)), alpha=0.0)
    assert out.adopted == "b" and out.quality == 1.0 and out.well_formed
    agent = RouterR1Agent(env.candidates, scripted(f"<answer>{int(gold) + 1}</answer>"), call, AgentConfig())
    assert env.outcome(0, agent.run_sync(env.question(0)), alpha=0.0).quality == 0.0
