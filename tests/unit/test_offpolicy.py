"""Off-policy estimators: hand-computed values, edge cases, and a simulation where the truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from policies.offpolicy import (
    direct_method,
    doubly_robust,
    evaluate_policy,
    importance_weights,
    ips,
    mean_reward_model,
    one_hot,
    snips,
    unsupported_mass,
)

R = np.array([1.0, 0.0, 1.0, 0.5])
P = np.array([0.5, 0.25, 1.0, 0.5])  # logged propensity of the chosen action
PI = np.array([1.0, 0.0, 1.0, 1.0])  # deterministic candidate: agrees on rows 0, 2, 3


def test_ips_and_snips_by_hand():
    e = ips(R, PI, P)  # w = [2, 0, 1, 2]; w·r = [2, 0, 1, 1]
    assert e.value == pytest.approx(1.0)
    assert e.se == pytest.approx(np.sqrt(2 / 3) / 2)  # sample sd of [2, 0, 1, 1] over √4
    assert e.lo == pytest.approx(1.0 - 1.959964 * e.se, rel=1e-5) and e.hi == pytest.approx(1.0 + 1.959964 * e.se, rel=1e-5)
    assert e.ess == pytest.approx(25 / 9) and e.agree == pytest.approx(0.75) and e.n == 4
    s = snips(R, PI, P)  # Σ w r / Σ w = 4 / 5
    assert s.value == pytest.approx(0.8)
    assert s.se == pytest.approx(np.sqrt(0.4**2 + 0.2**2 + 0.6**2) / 5)  # delta method


def test_doubly_robust_and_direct_by_hand():
    e = doubly_robust(R, PI, P, q_logged=np.full(4, 0.5), v_target=np.full(4, 0.6))
    assert e.value == pytest.approx(np.mean([1.6, 0.6, 1.1, 0.6]))  # v̂ + w (r − q̂)
    assert direct_method(np.array([0.2, 0.4])).value == pytest.approx(0.3)


def test_clipping_bounds_the_weights_and_is_reported():
    w, clipped = importance_weights(PI, P, clip=1.5)
    assert w.tolist() == [1.5, 0.0, 1.0, 1.5] and clipped.tolist() == [True, False, False, True]
    e = ips(R, PI, P, clip=1.5)
    assert e.value == pytest.approx((1.5 + 1.0 + 0.75) / 4) and e.clipped == pytest.approx(0.5)


def test_broken_logs_and_shapes_are_refused():
    with pytest.raises(ValueError, match="propensities"):
        ips(R, PI, np.array([0.5, 0.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match="shape"):
        ips(R, PI[:3], P)
    with pytest.raises(ValueError, match="finite"):
        ips(np.array([1.0, np.nan, 1.0, 0.0]), PI, P)
    with pytest.raises(ValueError, match="ci must be"):
        ips(R, PI, P, ci="exact")


def test_a_candidate_that_never_agrees_has_no_snips_estimate():
    s = snips(R, np.zeros(4), P)
    assert np.isnan(s.value) and s.agree == 0.0
    assert ips(R, np.zeros(4), P).value == 0.0  # IPS says 0: it cannot tell "no support" from "no reward"


def test_deterministic_log_and_candidate_equal_to_it():
    # logging p = 1 everywhere, the candidate does the same: every estimator is the logged mean
    target = one_hot(np.array([0, 1, 2, 1]), 3)
    out = evaluate_policy(R, np.array([0, 1, 2, 1]), np.ones(4), target, q_hat=np.full((4, 3), 0.3))
    for m in ("ips", "snips", "dr"):
        assert out[m].value == pytest.approx(R.mean())
    assert out["dm"].value == pytest.approx(0.3)
    # a different deterministic candidate on a deterministic log: mass the log never tried
    logged = one_hot(np.array([0, 1, 2, 1]), 3)
    assert unsupported_mass(one_hot(np.array([0, 0, 2, 2]), 3), logged) == pytest.approx(0.5)


def test_mean_reward_model_undoes_the_logging_preference():
    # action 0 logged mostly where rewards are low (p = 0.9), once where high (p = 0.1)
    r = np.array([0.0, 0.0, 0.0, 1.0, 1.0])
    a = np.array([0, 0, 0, 0, 1])
    p = np.array([0.9, 0.9, 0.9, 0.1, 0.5])
    q = mean_reward_model(r, a, p, 3)
    assert q[0] == pytest.approx(10 / (3 / 0.9 + 10)) and q[1] == 1.0 and q[2] == pytest.approx(r.mean())


def _simulate(rng, n, mu, explore):
    """Contexts x, ε-greedy logging over a bad greedy policy, Bernoulli rewards with means mu[x, a]."""
    n_ctx, k = mu.shape
    x = rng.integers(n_ctx, size=n)
    greedy = np.argmin(mu, axis=1)[x]  # the logging policy prefers the worst action
    probs = np.full((n, k), explore / k)
    probs[np.arange(n), greedy] += 1 - explore
    a = (probs.cumsum(axis=1) > rng.random(n)[:, None]).argmax(axis=1)
    r = (rng.random(n) < mu[x, a]).astype(float)
    return x, a, r, probs[np.arange(n), a], probs


def test_intervals_cover_the_truth_in_simulation():
    rng = np.random.default_rng(7)
    mu = rng.uniform(0.05, 0.95, size=(6, 4))
    best = np.argmax(mu, axis=1)  # the candidate: the best action per context (deterministic)
    hits = {"ips": 0, "snips": 0, "dr": 0}
    errors = {m: [] for m in hits}
    reps = 200
    for _ in range(reps):
        x, a, r, p, probs = _simulate(rng, 1500, mu, explore=0.4)
        truth = mu[x, best[x]].mean()  # the candidate's expected value on these contexts
        q_hat = np.tile(mean_reward_model(r, a, p, 4), (len(x), 1))
        out = evaluate_policy(r, a, p, one_hot(best[x], 4), q_hat)
        for m in hits:
            hits[m] += out[m].covers(truth)
            errors[m].append(out[m].value - truth)
    for m in hits:
        assert 0.88 <= hits[m] / reps <= 0.995, (m, hits[m])  # nominal 95 %
        assert abs(np.mean(errors[m])) < 0.01, (m, np.mean(errors[m]))  # (nearly) unbiased
    # and the estimate is informative: it separates the candidate from the logging policy
    assert np.mean(errors["dr"]) ** 2 < 0.01


def test_bootstrap_interval_agrees_with_the_clt_on_a_large_sample():
    rng = np.random.default_rng(3)
    mu = rng.uniform(0.1, 0.9, size=(5, 3))
    x, a, r, p, _ = _simulate(rng, 20_000, mu, explore=0.5)
    pi = (a == np.argmax(mu, axis=1)[x]).astype(float)
    clt, boot = ips(r, pi, p), ips(r, pi, p, ci="bootstrap", n_boot=300, seed=1)
    assert boot.ci == "bootstrap" and boot.value == clt.value
    assert boot.lo == pytest.approx(clt.lo, abs=0.01) and boot.hi == pytest.approx(clt.hi, abs=0.01)
    sn = snips(r, pi, p, ci="bootstrap", n_boot=300)
    assert sn.lo < sn.value < sn.hi and sn.hi - sn.lo == pytest.approx(2 * 1.96 * snips(r, pi, p).se, rel=0.2)
