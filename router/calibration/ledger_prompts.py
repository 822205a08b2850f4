"""Prompts of real traffic as calibration items (the ``ledger`` source).

Reads the newest answered requests whose prompt the ledger keeps in full (a deployment or key
storing hashes only keeps its prompts out of calibration too), one item per distinct prompt.
Every expert's answer is graded by the configured LLM judge (grader ``judge``); the expert that
served the request also has the feedback already recorded for it (user feedback first, then
automatic checks, then earlier judge scores), which becomes its cell without a new call.

The ledger keeps a request's prompt as ``role: content`` lines (router.request.protocol); they are
split back into chat messages so every expert is asked what the client asked.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.types import routed_text, transcript_turns
from router.calibration.items import PromptItem, Recorded
from router.ledger.db import make_engine
from router.ledger.models import FeedbackRow, RequestRow

SOURCE_RANK = {"user": 0, "auto": 1, "judge": 2}  # which recorded feedback stands for the cell


def split_messages(prompt_text: str) -> list[dict[str, str]]:
    """A stored ``role: text`` prompt back into chat messages."""
    return [{"role": role, "content": text} for role, text in transcript_turns(prompt_text)]


def ledger_items(database_url: str, *, max_rows: int = 2000) -> list[PromptItem]:
    """The newest ``max_rows`` distinct prompts of answered requests, oldest first."""
    engine = make_engine(database_url)
    try:
        with Session(engine) as s:
            rows = s.execute(
                select(RequestRow.id, RequestRow.prompt_text, RequestRow.expert, RequestRow.prompt_tokens,
                       RequestRow.completion_tokens, RequestRow.cost_usd, RequestRow.latency_ms)
                .where(RequestRow.status == "ok", RequestRow.prompt_text.is_not(None), RequestRow.expert.is_not(None))
                .order_by(RequestRow.created_at.desc())
                .limit(max_rows * 4)  # room for repeated prompts
            ).all()
            picked, seen = [], set()
            for row in rows:
                if row.prompt_text.strip() and row.prompt_text not in seen:
                    seen.add(row.prompt_text)
                    picked.append(row)
                if len(picked) >= max_rows:
                    break
            feedback: dict[str, dict[str, float]] = defaultdict(dict)
            ids = [r.id for r in picked]
            for start in range(0, len(ids), 500):
                for rid, source, score in s.execute(
                        select(FeedbackRow.request_id, FeedbackRow.source, func.avg(FeedbackRow.score))
                        .where(FeedbackRow.request_id.in_(ids[start:start + 500]))
                        .group_by(FeedbackRow.request_id, FeedbackRow.source)):
                    feedback[rid][source] = float(score)
    finally:
        engine.dispose()
    items = []
    for row in reversed(picked):
        recorded = {}
        scores = feedback.get(row.id)
        if scores:
            source = min(scores, key=lambda src: SOURCE_RANK.get(src, 9))
            recorded[row.expert] = Recorded(score=scores[source], source=source, prompt_tokens=int(row.prompt_tokens or 0),
                                            output_tokens=int(row.completion_tokens or 0), cost_usd=float(row.cost_usd or 0.0),
                                            latency_s=None if row.latency_ms is None else row.latency_ms / 1000)
        messages = split_messages(row.prompt_text)
        prompt = routed_text([(m["role"], m["content"]) for m in messages])  # what the proxy's policy reads
        items.append(PromptItem(qid=f"ledger-{row.id}", skill="traffic", prompt=prompt, grader="judge", dataset="ledger",
                                messages=messages if len(messages) > 1 or messages[0]["role"] != "user" else None,
                                recorded=recorded))
    return items
