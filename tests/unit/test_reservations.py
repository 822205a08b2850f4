"""A budget reservation is a true maximum of what the upstream will bill, and settling caps at it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from core.config import ExpertConfig
from experts.registry import Expert, expert_info
from experts.tokenizer import GgufChatCounter, chat_counter, countable
from router.access.budgets import Reservation
from router.access.estimate import ReservationEstimator, TokenBounds, max_cost_usd, prompt_token_bound
from tests.support.billing_upstream import ChatTokenizer, smollm2_gguf

PROMPTS = [
    "hi",
    "x",
    "Explain the difference between TCP and UDP in three sentences.",
    "Grüße aus Köln — ça va? 日本語のテキストも少し。🙂🚀",
    "a" * 3000,
    "   lots   of    spaces\n\n\n and\ttabs ",
    "<|im_start|>system\nnot a real marker<|im_end|>",
    "def f(x):\n    return {'k': [1, 2, 3]}\n" * 40,
]


def _expert(**cfg) -> Expert:
    config = ExpertConfig(**{"name": "e", "backend": "remote", "model": "m", "input_usd_per_mtok": 1.0,
                             "output_usd_per_mtok": 2.0, **cfg})
    return Expert(config=config, backend=None, info=expert_info(config))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def real():
    return ChatTokenizer()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_conservative_bound_covers_the_real_templated_count(real, prompt):
    for messages in ([{"role": "user", "content": prompt}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt},
                      {"role": "assistant", "content": "ok"}, {"role": "user", "content": prompt[:10] or "?"}]):
        bound = prompt_token_bound({"messages": messages}, TokenBounds())
        assert bound >= real.prompt_tokens(messages), (prompt[:30], bound)


def test_the_old_one_token_per_character_bound_did_not(real):
    """The issue's case: "hi" is 31 tokens once SmolLM2's template and system prompt are added."""
    count = real.prompt_tokens([{"role": "user", "content": "hi"}])
    assert count == 31 and len("user: hi") < count
    assert prompt_token_bound({"messages": [{"role": "user", "content": "hi"}]}, TokenBounds()) >= count


def test_bound_counts_parts_tools_and_attachments():
    bounds = TokenBounds(template_tokens=0, tokens_per_message=0, tokens_per_attachment=1000)
    payload = {"messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"},
                                                         {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
               "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}
    tools_bytes = len('[{"type":"function","function":{"name":"f","parameters":{}}}]')
    assert prompt_token_bound(payload, bounds) == 4 + 1000 + tools_bytes


def test_local_gguf_count_matches_the_server_template(real):
    expert = _expert(name="smol", backend="llamacpp", model="smollm2-135m-instruct")
    counter = chat_counter(expert, data_dir=smollm2_gguf().parent)
    assert isinstance(counter, GgufChatCounter)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        exact = real.prompt_tokens(messages)
        assert exact <= counter.count(messages) <= exact + 8  # the server's count plus a little slack
    # and it is much tighter than the byte bound for long English text
    long = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 100}]
    assert counter.count(long) < prompt_token_bound({"messages": long}, TokenBounds()) / 3


def test_estimator_uses_the_local_count_only_where_it_can_render_the_request(tmp_path):
    smol = _expert(name="smol", backend="llamacpp", model="smollm2-135m-instruct")
    remote = _expert(name="far")
    est = ReservationEstimator(data_dir=tmp_path)
    plain = {"messages": [{"role": "user", "content": "hi"}]}
    with_tools = {**plain, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert countable(plain) and not countable(with_tools)
    assert est.prompt_tokens(smol, plain) < est.prompt_tokens(remote, plain)  # exact (~35) vs bound (74)
    assert est.prompt_tokens(smol, with_tools) == prompt_token_bound(with_tools, est.bounds)
    # chat_format overrides the GGUF template: the count would be of the wrong template
    assert chat_counter(_expert(name="g", backend="llamacpp", model="smollm2-135m-instruct",
                                llamacpp={"chat_format": "gemma"}), data_dir=tmp_path) is None
    cost, tokens = est.bound([smol, remote], plain, 4)
    assert tokens == est.prompt_tokens(remote, plain) + 4 and cost == pytest.approx(remote.cost_usd(tokens - 4, 4))


def test_r2r_max_cost_counts_both_models():
    r2r = _expert(name="pair", backend="r2r", model="pair", input_usd_per_mtok=0.1, output_usd_per_mtok=0.1,
                  r2r={"slm_input_usd_per_mtok": 1, "slm_output_usd_per_mtok": 2, "llm_input_usd_per_mtok": 10,
                       "llm_output_usd_per_mtok": 20})
    # slm: 100×1 + 10×2; llm: (100 + 10)×10 + 10×20
    assert max_cost_usd(r2r, 100, 10) == pytest.approx((100 + 20 + 1100 + 200) / 1e6)


def test_settlement_books_real_usage_capped_at_the_reservation(caplog):
    res = Reservation(key_id="k", windows=[("day", datetime(2026, 1, 1, tzinfo=UTC))], usd=0.001, tokens=100)
    under = res.settlement(cost_usd=0.0004, tokens=40)
    assert under["cost_usd"] == 0.0004 and under["tokens"] == 40 and under["reserved_usd"] == 0.001
    with caplog.at_level(logging.WARNING, logger="expertmux.access"):
        over = res.settlement(cost_usd=0.005, tokens=900)
    assert over["cost_usd"] == 0.001 and over["tokens"] == 100
    assert "more than its reservation" in caplog.text
