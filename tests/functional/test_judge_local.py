"""The judge with a real local expert: SmolLM2 on llama.cpp answers chat requests and, in the
background, rates a sample of them; ratings land in the ledger as feedback with source judge.
(SmolLM2-135M is a weak grader; what is tested here is the plumbing end to end.)"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.settings import PROJECT_ROOT, Settings
from router.ledger.models import FeedbackRow
from tests.support.servers import serve_in_thread

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "What is 2 + 2?", "Say hello.", "Name a planet.",
             "What colour is the sky?"]
OUTCOMES = ("scored", "unparseable", "error", "skipped")


@pytest.fixture(scope="module")
def judged_app(tmp_path_factory):
    from api.app import create_app

    shipped = yaml.safe_load((PROJECT_ROOT / "config" / "expertmux.yaml").read_text())
    smol = next(e for e in shipped["experts"] if e["name"] == "smollm2-135m")
    data_dir = tmp_path_factory.mktemp("judge")
    cfg = {"experts": [smol], "policy": {"active": "prior"},
           "judge": {"expert": "smollm2-135m", "sample_rate": 1.0, "max_tokens": 6, "seed": 0}}
    (data_dir / "expertmux.yaml").write_text(yaml.safe_dump(cfg))
    settings = Settings(config=data_dir / "expertmux.yaml", data_dir=data_dir, autostart_experts=True, supervise_interval_s=0)
    app = create_app(settings)
    with serve_in_thread(app, startup_timeout=300) as url:
        yield url, app


def test_local_expert_judges_answers_in_the_background(judged_app):
    url, app = judged_app
    judge = app.state.judge
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0, timeout=120)
    ids = []
    for q in QUESTIONS:
        raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=[{"role": "user", "content": q}],
                                                                max_tokens=24, temperature=0)  # reproducible
        assert raw.parse().choices[0].message.content.strip()
        ids.append(raw.headers["x-expertmux-request-id"])

    def total() -> float:
        return sum(judge.outcomes.labels(o)._value.get() for o in OUTCOMES)

    deadline = time.monotonic() + 180
    while total() < len(QUESTIONS) and time.monotonic() < deadline:
        time.sleep(0.2)
    counts = {o: judge.outcomes.labels(o)._value.get() for o in OUTCOMES}
    assert total() == len(QUESTIONS), counts
    assert counts["error"] == 0 and counts["skipped"] == 0, counts
    assert counts["scored"] >= 1, f"the local judge never produced a readable score: {counts}"
    assert app.state.service.ledger.flush(10)
    with Session(app.state.service.ledger.engine) as s:
        rows = list(s.scalars(select(FeedbackRow).where(FeedbackRow.request_id.in_(ids))))
    assert len(rows) == counts["scored"]
    for row in rows:
        assert row.source == "judge" and 0.0 <= row.score <= 1.0 and row.comment.startswith("smollm2-135m: ")
    metrics = httpx.get(f"{url}/metrics").text
    assert f'expertmux_judge_total{{outcome="scored"}} {counts["scored"]:.1f}' in metrics
