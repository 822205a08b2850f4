"""The metrics of DESIGN.md §5 on small hand-computed curves."""

from __future__ import annotations

import numpy as np
import pytest

from policies.evaluation import metrics as M

# Operating points (cost, quality) and their hand-drawn non-decreasing convex hull:
#   (3, .55) lies under the chord (2, .5)–(4, .9); (2.5, .3) under everything; (5, .8) falls after
#   the top (4, .9); the duplicate cost 1 keeps its better quality .2.
COSTS = [1, 2, 2.5, 3, 4, 5, 1]
QUALS = [0.2, 0.5, 0.3, 0.55, 0.9, 0.8, 0.1]


def test_nondecreasing_hull_by_hand():
    hx, hy = M.nondecreasing_hull(COSTS, QUALS)
    assert hx.tolist() == [1, 2, 4]
    assert hy.tolist() == [0.2, 0.5, 0.9]


def test_hull_drops_collinear_and_handles_one_point():
    hx, hy = M.nondecreasing_hull([0, 1, 2], [0, 0.5, 1.0])
    assert hx.tolist() == [0, 2] and hy.tolist() == [0, 1.0]
    hx, hy = M.nondecreasing_hull([3.0], [0.4])
    assert hx.tolist() == [3.0] and hy.tolist() == [0.4]


def test_aiq_by_hand():
    # trapezoids: [1,2] (.2+.5)/2 = .35; [2,4] (.5+.9)/2·2 = 1.4; flat [4,6] .9·2 = 1.8 → 3.55 / 6
    assert M.aiq(COSTS, QUALS, c_max=6) == pytest.approx(3.55 / 6)


def test_aiq_cuts_a_hull_running_past_c_max():
    # hull (1,.2)-(2,.5)-(4,.9), cut at 3: y(3) = .7 → .35 + (.5+.7)/2 = .95 over 3
    assert M.aiq(COSTS, QUALS, c_max=3) == pytest.approx(0.95 / 3)


def test_aiq_single_point_and_out_of_range():
    # one point at (2, .6), c_max 5: flat from 2 to 5 → .6·3/5
    assert M.aiq([2], [0.6], c_max=5) == pytest.approx(0.36)
    assert M.aiq([5], [0.6], c_max=5) == 0.0  # starts at c_max: nothing to integrate (RouterBench)
    with pytest.raises(ValueError):
        M.aiq([1], [1], c_max=0)


def test_quality_and_cost_at_the_best_single_model():
    # best single model: cost 3, quality .55
    assert M.quality_at_best_cost(COSTS, QUALS, best_cost=3) == pytest.approx(0.55)
    assert M.quality_at_best_cost(COSTS, QUALS, best_cost=0.5) is None
    assert M.cost_to_best_quality(COSTS, QUALS, best_quality=0.55, best_cost=3) == pytest.approx(3 / 3)
    assert M.cost_to_best_quality(COSTS, QUALS, best_quality=0.8, best_cost=3) == pytest.approx(4 / 3)
    assert M.cost_to_best_quality(COSTS, QUALS, best_quality=0.95, best_cost=3) is None


def test_gap_closed():
    assert M.gap_closed(0.7, best_single=0.6, oracle=0.8) == pytest.approx(0.5)
    assert M.gap_closed(0.5, best_single=0.6, oracle=0.8) == pytest.approx(-0.5)
    assert M.gap_closed(None, 0.6, 0.8) is None
    assert M.gap_closed(0.7, best_single=0.8, oracle=0.8) is None


def test_pgr_apgr_cpt_by_hand():
    strong = np.array([1.0, 1.0, 0.0, 1.0])
    weak = np.array([0.0, 1.0, 0.0, 0.0])
    advantage = np.array([0.9, 0.1, 0.0, 0.8])  # perfect ranking: rows 0 and 3 gain, 1 and 2 don't
    shares = M.share_grid(5)  # 0, .25, .5, .75, 1
    curve = M.strong_share_curve(advantage, strong, weak, shares)
    assert curve.tolist() == pytest.approx([0.25, 0.5, 0.75, 0.75, 0.75])
    p = M.pgr(curve, quality_weak=0.25, quality_strong=0.75)
    assert p.tolist() == pytest.approx([0, 0.5, 1, 1, 1])
    assert M.apgr(p) == pytest.approx(0.7)
    assert M.cpt(shares, p, 0.5) == pytest.approx(0.25)
    assert M.cpt(shares, p, 0.8) == pytest.approx(0.5)


def test_pgr_worst_ranking_and_degenerate_pair():
    strong = np.array([1.0, 0.0])
    weak = np.array([0.0, 0.0])
    shares = M.share_grid(3)
    curve = M.strong_share_curve(np.array([0.0, 1.0]), strong, weak, shares)  # wrong row first
    p = M.pgr(curve, 0.0, 0.5)
    assert p.tolist() == pytest.approx([0, 0, 1])
    assert M.cpt(shares, p, 0.5) == pytest.approx(1.0)
    assert M.apgr(M.pgr(curve, 0.5, 0.5)) is None  # strong = weak: PGR undefined
    assert M.cpt(shares, np.array([0.0, 0.1, 0.2]), 0.5) is None


def test_share_grid_is_evenly_spaced():
    g = M.share_grid(101)
    assert g[0] == 0 and g[-1] == 1 and np.allclose(np.diff(g), 0.01)


def test_report_formatting_and_paired_gain():
    from policies.evaluation.harness import _paired_delta
    from policies.evaluation.report import _beats, _f

    assert _f(-0.0000001) == "0.000" and _f(-0.25, pct=True) == "-25.0%" and _f(None) == "—"
    d = _paired_delta(np.array([1.0, 1.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0, np.nan]))
    assert d["delta_vs_best_single"] == pytest.approx(1 / 3)
    assert d["delta_se"] == pytest.approx(np.std([0, 1, 0], ddof=1) / np.sqrt(3), abs=1e-6)
    assert not d["significant"]
    assert _beats({**d, "beats_best_single": True}).startswith("within noise (+0.333")
