"""A policy version promoted through the admin API of one of three ``expertmux serve`` replicas
(one PostgreSQL, HAProxy in front) is served by every replica within the registry poll plus an
artifact load, and so is the rollback, with no request failing meanwhile, neither through the
balancer nor sent to a replica directly. ``benchmarks.promotion_spread`` is the measurement
(docs/reliability.md has its figures)."""

from __future__ import annotations

import shutil

import pytest

from tests.support.postgres import pg_bin

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

if pg_bin() is None:
    pytest.skip("PostgreSQL server binaries are not installed (make test installs them)", allow_module_level=True)
if shutil.which("haproxy") is None:
    pytest.skip("haproxy is not installed (make system-deps installs the Debian package)", allow_module_level=True)
pytest.importorskip("pyarrow", reason="the ml extra is not installed")

POLL_S = 1.0
# One artifact load (a hashing kNN: ~10 ms), the registry query and a probe's round trip, on a
# machine shared with other jobs: generous, and still far below what a replica that never polls
# the registry would need (forever).
LOAD_ALLOWANCE_S = 3.0


def test_a_promotion_on_one_replica_is_served_by_every_replica_within_the_poll(tmp_path):
    from benchmarks.promotion_spread import promote_and_roll_back, promotion_cluster, served_version

    bound = POLL_S + LOAD_ALLOWANCE_S
    with promotion_cluster(tmp_path, poll_s=POLL_S) as setup:
        assert [served_version(u) for u in setup.replicas] == [setup.configured] * 3
        promoted, rolled = promote_and_roll_back(setup, clients=4, timeout_s=bound + 5)
    assert setup.candidate != setup.configured
    assert (promoted.version, rolled.version) == (setup.candidate, setup.configured)
    for spread in (promoted, rolled):
        print(spread.as_dict())
        assert spread.everywhere, f"{spread.action}: a replica never served {spread.version}: {spread.reached_s}"
        assert spread.max_s <= bound, spread.as_dict()
        assert spread.load_sent > 0 and spread.load_failures == 0 and spread.probe_failures == 0, spread.as_dict()
        assert set(spread.load_versions) <= {setup.configured, setup.candidate}
