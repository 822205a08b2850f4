"""Choosing the learned policy autolearn trains: cross-validation on the train rows only."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from core.config import AutoLearnConfig  # noqa: E402
from core.errors import PolicyError  # noqa: E402
from policies.data import RoutingData  # noqa: E402
from router.lifecycle.candidates import choose_by_cv, parse_candidates  # noqa: E402
from tests.support.routing_matrix import make_frame  # noqa: E402

HASHING = {"encoder": "hashing"}


def test_candidates_parse_from_names_and_mappings():
    cfg = AutoLearnConfig(candidates=["knn", {"tryage": {"encoder": "hashing"}}])
    assert parse_candidates(cfg.candidates) == [("knn", {}), ("tryage", {"encoder": "hashing"})]
    with pytest.raises(PolicyError, match="unknown policy"):
        parse_candidates(["knn", "nearest-wizard"])
    with pytest.raises(PolicyError, match="not a policy trained"):
        parse_candidates(["prior"])


def test_the_best_cross_validated_candidate_wins_and_the_test_split_is_never_read(monkeypatch):
    data = RoutingData.from_frame(make_frame(n_per_task=40, seed=3), name="synthetic")
    test = data.rows_of("test")
    scrambled = data.scores.copy()
    scrambled[test] = np.random.default_rng(0).permutation(scrambled[test])  # nothing on test may matter
    other = RoutingData.from_frame(make_frame(n_per_task=40, seed=3), name="synthetic")
    other.scores[:] = scrambled
    candidates = [("knn", {**HASHING, "k": 5}), ("tryage", HASHING), ("knn", {"no_such_param": 1})]
    (name, params), table = choose_by_cv(data, candidates)
    assert [r["policy"] for r in table] == ["knn", "tryage", "knn"]
    assert "bad parameters" in table[2]["error"]
    scored = [r for r in table if "cv_aiq" in r]
    best = max(scored, key=lambda r: r["cv_aiq"])
    assert len(scored) == 2 and (name, params) == (best["policy"], best["params"])
    assert [r for r in table if r.get("chosen")] == [best]  # the one the dashboard marks as trained
    again, table_again = choose_by_cv(other, candidates)
    assert again == (name, params) and table_again == table


def test_no_usable_candidate_is_a_clear_error():
    data = RoutingData.from_frame(make_frame(n_per_task=40, seed=3), name="synthetic")
    with pytest.raises(PolicyError, match="no candidate could be cross-validated"):
        choose_by_cv(data, [("knn", {"no_such_param": 1})])
