"""Calibration on real traffic: prompts from the ledger, every expert's answer graded by the
configured LLM judge, and the serving expert's cell taken from the feedback already recorded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from sqlalchemy.orm import Session

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from core.settings import Settings  # noqa: E402
from router.calibration.errors import CalibrationError  # noqa: E402
from router.calibration.runner import calibrate  # noqa: E402
from router.calibration.sources import LedgerSource  # noqa: E402
from router.ledger import migrate  # noqa: E402
from router.ledger.db import make_engine  # noqa: E402
from router.ledger.models import FeedbackRow, RequestRow  # noqa: E402
from tests.conftest import remote_expert  # noqa: E402
from tests.support import fake_openai  # noqa: E402
from tests.support.servers import serve_in_thread  # noqa: E402

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _traffic(url: str) -> None:
    """Five requests: two distinct kept prompts (one asked twice), one hashed, one failed."""
    engine = make_engine(url)
    rows = [("r1", "user: What is the capital of France?", "ok", "a"),
            ("r2", "system: be brief\nuser: Name a colour.", "ok", "b"),
            ("r3", "user: What is the capital of France?", "ok", "a"),  # the same prompt again: one item
            ("r4", None, "ok", "a"),  # the key stores hashes only: kept out
            ("r5", "user: Broken request", "error", "a")]
    with Session(engine) as s:
        for i, (rid, text, status, expert) in enumerate(rows):
            s.add(RequestRow(id=rid, created_at=T0 + timedelta(minutes=i), status=status, expert=expert, prompt_text=text,
                             prompt_tokens=9, completion_tokens=4, cost_usd=2.5e-5, latency_ms=120.0))
        s.flush()
        s.add(FeedbackRow(request_id="r3", created_at=T0, score=0.0, source="judge"))
        s.add(FeedbackRow(request_id="r3", created_at=T0, score=1.0, source="user"))  # the user's word wins
        s.commit()
    engine.dispose()


def test_ledger_prompts_graded_by_the_judge_and_by_recorded_feedback(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    migrate.upgrade(url)
    _traffic(url)
    a, b = fake_openai.Behaviour(answer="Paris."), fake_openai.Behaviour(answer="Blue.")
    judge = fake_openai.Behaviour(answer="Rating: 8")
    with serve_in_thread(fake_openai.make_app(a)) as ua, serve_in_thread(fake_openai.make_app(b)) as ub, \
            serve_in_thread(fake_openai.make_app(judge)) as uj:
        experts = [remote_expert("a", ua), remote_expert("b", ub), remote_expert("judge", uj)]
        config = {"experts": experts, "judge": {"expert": "judge", "scale_min": 1, "scale_max": 10}}
        (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
        settings = Settings(config=tmp_path / "cfg.yaml", data_dir=tmp_path / "var", database_url=url)
        result = asyncio.run(calibrate(settings, source=LedgerSource(), out_dir=tmp_path / "out", experts=["a", "b"]))
        assert result.state == "done" and result.ok
        # two distinct prompts × two experts; a's answer to the rated prompt is the recorded one: no call
        assert len(a.calls) == 1 and len(b.calls) == 2 and len(judge.calls) == 3
        asked = [c["messages"] for c in b.calls]
        assert [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Name a colour."}] in asked
        assert [{"role": "user", "content": "What is the capital of France?"}] in asked
        assert any("Question: user: What is the capital of France?" in c["messages"][0]["content"] for c in judge.calls)
        frame = __import__("pandas").read_parquet(result.matrix_path).set_index("qid")
        assert list(frame.index) == ["ledger-r2", "ledger-r3"]  # oldest first; r1 is r3's older duplicate
        assert frame.loc["ledger-r3", "prompt"] == "What is the capital of France?"  # what the proxy routes on
        assert frame.loc["ledger-r2", "prompt"] == "Name a colour."  # the question, without the system prompt
        assert frame.loc["ledger-r3", "score::a"] == 1.0 and frame.loc["ledger-r3", "cost_usd::a"] == 2.5e-5
        assert frame.loc["ledger-r3", "score::b"] == pytest.approx(7 / 9)  # "8" on a 1-10 scale
        assert frame.loc["ledger-r2", "score::a"] == pytest.approx(7 / 9) and frame.loc["ledger-r2", "task"] == "traffic"
        assert result.progress.spent_usd > 0  # the judge's calls count against a budget too

        # an unreadable judge reply is a NaN cell with the reason, and a rerun judges it again (no new answer)
        judge.answer = "I cannot rate this."
        (tmp_path / "out2").mkdir()
        again = asyncio.run(calibrate(settings, source=LedgerSource(), out_dir=tmp_path / "out2", experts=["b"]))
        assert again.status.experts["b"]["grade_errors"] == 2 and not again.ok
        judge.answer = "7/10"
        calls = len(b.calls)
        fixed = asyncio.run(calibrate(settings, source=LedgerSource(), out_dir=tmp_path / "out2", experts=["b"]))
        assert fixed.ok and fixed.status.experts["b"]["graded"] == 2 and len(b.calls) == calls

        # without a judge in the config the ledger source refuses to start
        (tmp_path / "nojudge.yaml").write_text(yaml.safe_dump({"experts": experts}))
        plain = Settings(config=tmp_path / "nojudge.yaml", data_dir=tmp_path / "var", database_url=url)
        with pytest.raises(CalibrationError, match="need a judge"):
            asyncio.run(calibrate(plain, source=LedgerSource(), out_dir=tmp_path / "out3"))
