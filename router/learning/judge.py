"""An expert as judge: scores a sampled share of answered requests, in the background.

Configured in the YAML (``judge: {expert, sample_rate, prompt, max_tokens, ...}``; off unless
present). When a request has been answered, the service calls ``Judge.observe``; a sampled
request is queued for judging and the response is never held up. The judge asks the expert to
rate the answer, reads a score from whatever it writes (``7/10``, ``Score: 8``, ``0.6``, ...),
maps it to [0, 1] and writes a feedback row with source ``judge``. A reply with no readable
score writes nothing and is counted (``expertmux_judge_total{outcome="unparseable"}``).

Only requests whose prompt the ledger keeps in full are judged (a key or deployment that stores
hashes only keeps its prompts away from a judge too). Judge calls are not ledger requests; they
show in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np
from prometheus_client import Counter

from core.config import JudgeConfig
from core.errors import ExpertmuxError

log = logging.getLogger("expertmux.judge")

DEFAULT_PROMPT = (
    "You are a strict grader. Rate how well the answer responds to the question, on a scale from "
    "{scale_min:g} (useless or wrong) to {scale_max:g} (excellent). Reply with the number only.\n\n"
    "Question: {question}\n\nAnswer: {answer}\n\nRating ({scale_min:g}-{scale_max:g}):"
)
_NUM = r"(\d+(?:\.\d+)?)"
_FRACTION = re.compile(_NUM + r"\s*(?:/|out of)\s*" + _NUM, re.IGNORECASE)
_LABELLED = re.compile(r"(?:score|rating|grade)\s*(?:is|of|:|=)?\s*" + _NUM, re.IGNORECASE)
_ANY = re.compile(r"(?<![\w.\-])" + _NUM + r"(?![\w\-]|\.\d)")
_LIST_MARKER = re.compile(r"(?m)^\s*\d+[.)]\s+")  # "1. ..." numbers a list item, it is no rating
MAX_CHARS = 4000  # of the question and of the answer shown to the judge


def parse_score(text: str, *, scale_min: float = 1.0, scale_max: float = 10.0) -> float | None:
    """A score in [0, 1] read from a judge's reply, or None if there is no usable number.

    ``a/b`` and ``a out of b`` are read as a fraction; a labelled number (``Score: 8``) or the
    first bare number is read on the configured scale, except a decimal in [0, 1] (``0.7``), which
    is taken as already normalised. Numbers off the scale, ranges (``1-10``) and list numbering
    (``1. ...`` at the start of a line) are not read as ratings.
    """
    if not text:
        return None
    text = _LIST_MARKER.sub("", text)
    m = _FRACTION.search(text)
    if m:
        num, den = float(m.group(1)), float(m.group(2))
        return num / den if den > 0 and 0 <= num <= den else None
    m = _LABELLED.search(text) or _ANY.search(text)
    if not m:
        return None
    raw = m.group(1)
    value = float(raw)
    if "." in raw and 0 <= value <= 1 and scale_max > 1:
        return value
    if scale_min <= value <= scale_max:
        return (value - scale_min) / (scale_max - scale_min)
    return None


class Judge:
    def __init__(self, cfg: JudgeConfig, *, experts, feedback, metrics) -> None:
        self.cfg = cfg
        self.experts = experts
        self.feedback = feedback
        self.template = cfg.prompt or DEFAULT_PROMPT
        self._rng = np.random.default_rng(cfg.seed)
        self._tasks: set[asyncio.Task] = set()
        self.outcomes = Counter("expertmux_judge", "Judge outcomes: scored, unparseable, error, skipped (queue full)",
                                ["outcome"], registry=metrics.registry)
        for outcome in ("scored", "unparseable", "error", "skipped"):
            self.outcomes.labels(outcome)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def observe(self, trace) -> None:
        """Called once per finished request, on the event loop; must stay cheap."""
        if trace.status != "ok" or trace.prompt_text is None or trace.decision is None:
            return
        served = trace.served_by
        answer = getattr(served, "answer", None) if served is not None else None
        if not answer or not answer.strip() or self._rng.random() >= self.cfg.sample_rate:
            return
        if len(self._tasks) >= self.cfg.max_pending:
            self.outcomes.labels("skipped").inc()
            return
        task = asyncio.get_running_loop().create_task(self._judge(trace.id, trace.prompt_text, answer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def build_prompt(self, question: str, answer: str) -> str:
        return self.template.format(question=question[:MAX_CHARS], answer=answer[:MAX_CHARS],
                                    scale_min=self.cfg.scale_min, scale_max=self.cfg.scale_max)

    async def judge_text(self, question: str, answer: str) -> tuple[float | None, str]:
        """Ask the judge expert; returns (score in [0, 1] or None, the judge's reply)."""
        from experts import client

        expert = self.experts[self.cfg.expert]
        payload = {"messages": [{"role": "user", "content": self.build_prompt(question, answer)}],
                   "max_tokens": self.cfg.max_tokens, "temperature": 0.0}
        expert.in_flight += 1  # load-aware routing sees the judge's work too
        try:
            resp = await client.complete(expert, payload)
        finally:
            expert.in_flight -= 1
        reply = "".join((c.get("message") or {}).get("content") or "" for c in resp.get("choices", []))
        return parse_score(reply, scale_min=self.cfg.scale_min, scale_max=self.cfg.scale_max), reply

    async def _judge(self, request_id: str, question: str, answer: str) -> None:
        try:
            score, reply = await self.judge_text(question, answer)
            if score is None:
                self.outcomes.labels("unparseable").inc()
                log.info("judge reply for %s has no score: %r", request_id, reply[:200])
                return
            # the request's own row may still be in the writer's queue: wait for it (FK)
            await asyncio.to_thread(self.feedback.ledger.wait_written, request_id, 30.0)
            await asyncio.to_thread(self.feedback.record, request_id=request_id, score=score, source="judge",
                                    comment=f"{self.cfg.expert}: {reply.strip()[:500]}")
            self.outcomes.labels("scored").inc()
        except asyncio.CancelledError:
            raise
        except ExpertmuxError as exc:
            self.outcomes.labels("error").inc()
            log.warning("judging request %s failed: %s", request_id, exc.message)
        except Exception:
            self.outcomes.labels("error").inc()
            log.exception("judging request %s failed", request_id)

    async def close(self, timeout: float = 5.0) -> None:
        """Let queued judgements finish for up to ``timeout`` seconds, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
