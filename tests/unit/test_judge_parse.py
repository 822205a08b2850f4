"""Reading a score from a judge's free-text reply."""

from __future__ import annotations

import pytest

from core.config import AppConfig
from router.learning.judge import parse_score


@pytest.mark.parametrize("text, expected", [
    ("7/10", 0.7),
    ("I would rate it 8 out of 10.", 0.8),
    ("Score: 10", 1.0),
    ("Rating: 1", 0.0),
    ("4", 1 / 3),
    ("0.75", 0.75),
    ("  9\nThe answer is good.", 8 / 9),
    ("rating is 5.5", 0.5),
    ("3/5 - decent", 0.6),
    ("The answer is 10.", 1.0),
    ("1. 10: very good", 1.0),
    ("1) 7\n2) 3", 2 / 3),
])
def test_parses_common_forms(text, expected):
    assert parse_score(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "excellent answer", "42", "12/10", "-3", "Score: 11", "version2 of it",
                                  "Rating (1-10", "1. The answer is not", "1. Excellent\n2. Good"])
def test_unusable_replies_give_none(text):
    assert parse_score(text) is None


def test_other_scales():
    assert parse_score("3", scale_min=1, scale_max=5) == pytest.approx(0.5)
    assert parse_score("0.4", scale_min=0, scale_max=1) == pytest.approx(0.4)
    assert parse_score("1", scale_min=0, scale_max=1) == 1.0


def test_judge_config_is_checked():
    experts = [{"name": "a", "backend": "remote", "model": "m"}]
    assert AppConfig.model_validate({"experts": experts}).judge is None
    cfg = AppConfig.model_validate({"experts": experts, "judge": {"expert": "a"}})
    assert cfg.judge.sample_rate == 0.1 and cfg.judge.scale_max == 10
    with pytest.raises(ValueError, match="not an expert"):
        AppConfig.model_validate({"experts": experts, "judge": {"expert": "nope"}})
    with pytest.raises(ValueError):
        AppConfig.model_validate({"experts": experts, "judge": {"expert": "a", "sample_rate": 2}})
