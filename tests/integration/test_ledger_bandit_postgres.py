"""``load_logged`` on PostgreSQL: the same ledger as the SQLite unit test, the same answers
(JSON operators, aware timestamps and the aggregate join differ between the two databases)."""

from __future__ import annotations

import numpy as np
import pytest

from router.learning.bandit import load_logged
from router.learning.feedback import FeedbackService
from router.ledger.db import make_engine
from router.ledger.migrate import upgrade
from router.ledger.writer import LedgerWriter
from tests.support.postgres import pg_bin, postgres_cluster
from tests.unit.test_ledger_bandit import T0, _decision, _record

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

if pg_bin() is None:
    pytest.skip("PostgreSQL server binaries are not installed (make test installs them)", allow_module_level=True)


def test_load_logged_on_postgres():
    with postgres_cluster() as url:
        upgrade(url)
        engine = make_engine(url)
        writer = LedgerWriter(engine)
        writer.start()
        ids = {}
        for name, d, minutes, prompt in [
            ("explored", _decision("beta", {"alpha": 0.8, "beta": 0.15, "gamma": 0.05}), 10, "what is 2+2?"),
            ("old", _decision("alpha", None), 5, "capital of France?"),
            ("early", _decision("alpha", {"alpha": 0.9, "beta": 0.1}), -600, "too early"),
            ("silent", _decision("gamma", {"alpha": 0.5, "gamma": 0.5}), 12, "no feedback"),
        ]:
            ids[name], record = _record(d, minutes=minutes, prompt=prompt)
            writer.submit(record)
        assert writer.flush()
        writer.close()
        fb = FeedbackService(engine=engine, ledger=writer, keys=None, auth_required=False)
        for name, score, source in [("explored", 1.0, "user"), ("explored", 0.0, "judge"), ("old", 0.25, "auto"),
                                    ("early", 1.0, "user")]:
            fb.record(request_id=ids[name], score=score, source=source)
        data = load_logged(engine)
        assert list(data.request_id) == [ids["early"], ids["old"], ids["explored"]]  # oldest first
        assert data.experts == ["alpha", "beta", "gamma"]
        assert data.reward.tolist() == [1.0, 0.25, 0.5] and data.n_feedback.tolist() == [1, 1, 2]
        assert data.propensity.tolist() == pytest.approx([0.9, 1.0, 0.15]) and data.logged.tolist() == [True, False, True]
        assert data.propensities[2].tolist() == pytest.approx([0.8, 0.15, 0.05])
        assert data.created_at[2] == np.datetime64(T0.replace(tzinfo=None).isoformat()) + np.timedelta64(10, "m")  # UTC
        assert len(load_logged(url, since=T0)) == 2 and len(load_logged(url, sources=["judge"])) == 1
        assert len(load_logged(url, min_feedback=2)) == 1 and len(load_logged(url, min_feedback=0)) == 4
        engine.dispose()
