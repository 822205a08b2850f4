"""The feedback service on a real SQLite ledger: score rules, ownership, and rows still queued
in the batched writer (waited for, never a spurious 404)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from core.errors import (
    AuthenticationError,
    InvalidRequestError,
    LedgerUnavailableError,
    NotFoundError,
    PermissionDeniedError,
)
from router.access.keys import KeyStore
from router.learning.feedback import FeedbackService, normalize_score
from router.ledger import migrate
from router.ledger.db import make_engine
from router.ledger.writer import LedgerWriter
from tests.unit.test_ledger_writer import record


@pytest.fixture
def parts(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    writer = LedgerWriter(engine, batch_size=8)
    keys = KeyStore(engine, secret=b"test-secret", cache_ttl_s=0)
    yield engine, writer, keys
    writer.close()
    engine.dispose()


def service(parts, *, auth_required=False, wait=5.0) -> FeedbackService:
    engine, writer, keys = parts
    return FeedbackService(engine=engine, ledger=writer, keys=keys, auth_required=auth_required, pending_wait_s=wait)


@pytest.mark.parametrize("score, thumbs, expected", [(0, None, 0.0), (1, None, 1.0), (0.25, None, 0.25),
                                                     (None, "up", 1.0), (None, "down", 0.0)])
def test_normalize_score(score, thumbs, expected):
    assert normalize_score(score, thumbs) == expected


@pytest.mark.parametrize("score, thumbs", [(None, None), (0.5, "up"), (1.01, None), (-0.1, None), (float("nan"), None),
                                           (True, None), (None, "sideways")])
def test_bad_scores_are_client_errors(score, thumbs):
    with pytest.raises(InvalidRequestError):
        normalize_score(score, thumbs)


def test_queued_row_is_waited_for(parts):
    engine, writer, _ = parts
    rec = record(1)
    writer.submit(rec)  # the writer is not running yet: the row sits in the queue
    threading.Timer(0.3, writer.start).start()
    t0 = time.monotonic()
    fb = asyncio.run(service(parts).submit(request_id=rec.request["id"], thumbs="up", comment="nice"))
    assert fb.score == 1.0 and fb.source == "user" and time.monotonic() - t0 >= 0.25
    assert [f.comment for f in service(parts).for_request(rec.request["id"])] == ["nice"]


def test_row_stuck_in_the_queue_is_503_not_404(parts):
    _, writer, _ = parts
    rec = record(2)
    writer.submit(rec)
    with pytest.raises(LedgerUnavailableError):
        asyncio.run(service(parts, wait=0.2).submit(request_id=rec.request["id"], score=0.5))
    with pytest.raises(NotFoundError):
        asyncio.run(service(parts, wait=0.2).submit(request_id="f" * 32, score=0.5))


def test_only_the_key_that_made_the_request_may_rate_it(parts):
    engine, writer, keys = parts
    a, secret_a = keys.create(name="a")
    _, secret_b = keys.create(name="b")
    mine, keyless = record(3), record(4)
    mine.request["api_key_id"] = a.id
    writer.start()
    writer.submit(mine)
    writer.submit(keyless)
    assert writer.flush(10)
    for required in (False, True):
        svc = service(parts, auth_required=required)
        with pytest.raises(PermissionDeniedError):
            asyncio.run(svc.submit(request_id=mine.request["id"], score=0.1, api_key=secret_b))
        assert asyncio.run(svc.submit(request_id=mine.request["id"], score=0.9, api_key=secret_a)).score == 0.9
        assert asyncio.run(svc.submit(request_id=keyless.request["id"], score=0.2, admin=True, source="judge")).source == "judge"
    keyed = service(parts, auth_required=True)
    with pytest.raises(AuthenticationError):
        asyncio.run(keyed.submit(request_id=mine.request["id"], score=0.9))
    with pytest.raises(PermissionDeniedError):  # keys required: a keyless request is the admin's to rate
        asyncio.run(keyed.submit(request_id=keyless.request["id"], score=0.9, api_key=secret_a))
    # keyless deployment: a keyless request may be rated by anyone; a keyed one only by its key
    assert asyncio.run(service(parts).submit(request_id=keyless.request["id"], thumbs="down")).score == 0.0
    with pytest.raises(PermissionDeniedError):
        asyncio.run(service(parts).submit(request_id=mine.request["id"], thumbs="down"))
    with pytest.raises(InvalidRequestError):
        asyncio.run(service(parts).submit(request_id=keyless.request["id"], score=0.5, source="robot"))
