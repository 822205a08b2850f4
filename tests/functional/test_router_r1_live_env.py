"""The live Router-R1 environment against a real local expert (llama.cpp SmolLM2), scripted router."""

from __future__ import annotations

import pytest

from core.settings import PROJECT_ROOT, Settings
from policies.router_r1.agent import AgentConfig, RouterR1Agent
from router.agents.r1_live_env import LiveEnv

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")


def test_live_episode_calls_the_real_expert_and_scores_its_reply(tmp_path):
    settings = Settings(config=PROJECT_ROOT / "config" / "expertmux.yaml", data_dir=tmp_path)
    env = LiveEnv.from_settings(settings, models=["smollm2-135m"], n=3, seed=0)
    try:
        steps = iter([f"<think>ask</think><search>smollm2-135m: {env.question(0)} Reply with the number only.</search>",
                      "<think>adopt</think><answer>smollm2-135m</answer>"])
        agent = RouterR1Agent(env.candidates, lambda messages, stop: next(steps), env.call_expert(0),
                              AgentConfig(max_rounds=1, max_retries=0))
        result = agent.run_sync(env.question(0))
        out = env.outcome(0, result, alpha=0.5)
        call = result.calls[0]
        assert call.ok and call.expert == "smollm2-135m" and call.reply.strip()
        assert call.prompt_tokens > 0 and call.cost_usd > 0
        assert out.well_formed and out.adopted == "smollm2-135m" and out.quality in (0.0, 1.0)
        assert out.reward.total == pytest.approx(0.5 * out.quality + 0.5 * (1 - min(1, call.cost_usd / env.max_cost(0))))
    finally:
        env.close()
