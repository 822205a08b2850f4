"""Run a calibration: every selected expert answers every prompt of the folder, each answer graded.

``calibrate`` is the one entry point, for the CLI (``expertmux calibrate``) and for a background
task inside the running proxy alike: it is a coroutine, keeps blocking work (file appends with
fsync, the ledger read, starting local servers, writing Parquet) off the event loop, and reports
progress through a callback. Pass the proxy's ``ExpertRegistry`` to share its servers, breakers
and load counters; without one, a registry is built from the settings and the local experts this
run had to start are stopped at its end.

How it behaves:

* concurrency: per expert, ``concurrency`` workers (default 8), never more than the expert's
  ``max_concurrency`` (else its backend's typical slots: 1 for llama.cpp); experts run side by
  side; a rate-limited call (429) is retried after a back-off;
* breakers: a call waits while the expert's circuit breaker is open, records success and failure
  on it as the proxy does, and after ``settings.breaker_failures`` consecutive failures the expert
  counts as down: its remaining cells are NaN with the reason (a rerun tries them again);
* resumable: cells already graded are skipped, cells whose grader failed are graded again from the
  stored answer (no call), cells whose call failed are called again;
* budget: ``budget_usd`` caps what this run may spend; each call reserves its worst case (prompt
  bytes + max_tokens at the expert's prices) first, so the run stops before spending more;
* the result: a routing matrix in the folder (``router.calibration.matrix``), a ``run.json`` with
  the run's state, and ``CalibrationResult``. Nothing graded at all is the caller's failure signal.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import BackendError, ExpertError, ExpertmuxError, ExpertRateLimitedError
from router.calibration import graders
from router.calibration.asking import Asker, upper_bound_cost
from router.calibration.errors import CalibrationError, GraderError
from router.calibration.items import PromptItem
from router.calibration.matrix import CalibrationStatus, load_status, write_matrix
from router.calibration.progress import CalibrationProgress, ProgressCallback, Tracker
from router.calibration.sources import DefaultSource, PromptSource, select
from router.calibration.store import CALL_ERROR, GRADE_ERROR, OK, Cell, CellStore

if TYPE_CHECKING:
    from core.settings import Settings
    from experts.registry import ExpertRegistry

DEFAULT_MAX_TOKENS = 48  # answers are short; small experts ramble past what a grader needs
DEFAULT_CONCURRENCY = 8  # calls in flight per expert unless asked: calibration shares experts with traffic
RATE_LIMIT_RETRIES = 5  # a 429 is waited out (1, 2, 4, ... s), never counted as the expert being down


@dataclass
class CalibrationResult:
    out_dir: Path
    matrix_path: Path | None  # None: no prompt has a score yet
    experts: list[str]  # the experts this run calibrated
    state: str  # done | interrupted | budget
    progress: CalibrationProgress  # this run's final figures
    status: CalibrationStatus  # the folder as a whole (all runs)
    seconds: float

    @property
    def graded(self) -> int:
        return sum(v["graded"] for v in self.status.experts.values())

    @property
    def ok(self) -> bool:
        """At least one cell of the folder has a score (the CLI exits non-zero otherwise)."""
        return self.graded > 0


def default_out_dir(settings: Settings, source: PromptSource) -> Path:
    return Path(settings.data_dir) / "calibration" / source.name


async def calibrate(settings: Settings, *, source: PromptSource | None = None, out_dir: str | Path | None = None,
                    experts: list[str] | None = None, limit: int | None = None, budget_usd: float | None = None,
                    concurrency: int | None = None, max_tokens: int = DEFAULT_MAX_TOKENS, seed: int = 0,
                    test_share: float = 0.3, logprobs: bool = True, registry: ExpertRegistry | None = None,
                    progress: ProgressCallback | None = None) -> CalibrationResult:
    """Calibrate ``experts`` (default: every configured one) on ``source`` (default: the shipped
    set) into ``out_dir`` (default: ``<data_dir>/calibration/<source name>``); see the module doc.

    Raises ``CalibrationError`` before any call for bad input (prompt file, unknown expert, judge
    prompts without a judge); expert failures never raise, they become NaN cells with reasons."""
    source = source or DefaultSource()
    out = Path(out_dir) if out_dir is not None else default_out_dir(settings, source)
    if budget_usd is not None and budget_usd < 0:
        raise CalibrationError(f"--budget-usd must be ≥ 0, not {budget_usd}")
    if concurrency is not None and concurrency <= 0:
        raise CalibrationError(f"--concurrency must be positive, not {concurrency}")
    if not 0 <= test_share < 1:
        raise CalibrationError(f"test_share must be in [0, 1), not {test_share}")
    loaded = await asyncio.to_thread(source.load, settings)
    chosen = select(loaded, limit, seed=seed)
    own = registry is None
    if own:
        from experts.registry import ExpertRegistry

        cfg = settings.app_config
        registry = ExpertRegistry(cfg.experts, data_dir=settings.data_dir,
                                  secrets={e.name: settings.secret(e.api_key_env) for e in cfg.experts},
                                  breaker_failures=settings.breaker_failures, breaker_reset_s=settings.breaker_reset_s)
    names = list(experts) if experts else registry.names
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise CalibrationError(f"unknown expert(s) {unknown}; configured: {', '.join(registry.names)}")
    judge = _judge(settings, registry, chosen)  # all input checked: now the folder may change
    store = CellStore(out)
    stored = {it.qid: it for it in await asyncio.to_thread(store.add_prompts, chosen)}
    items = [stored[it.qid] for it in chosen]  # a folder's rows never change once stored
    await asyncio.to_thread(store.open_for_append)
    run = _Run(settings, registry, store, items, names, max_tokens=max_tokens, logprobs=logprobs,
               concurrency=concurrency, budget_usd=budget_usd, progress=progress, judge=judge)
    t0 = time.monotonic()
    store.write_run({"state": "running", "started_at": _now(), "source": source.name, "experts": names,
                     "prompts": len(items), "budget_usd": budget_usd, "max_tokens": max_tokens})
    state = "interrupted"  # cancelled: Ctrl-C, the proxy shutting down
    try:
        if own:
            await run.start_local()
        await run.execute()
        state = "budget" if run.budget.hit else "done"
    except Exception:
        state = "failed"
        raise
    finally:
        final = run.tracker.snapshot(state)
        infos = registry.infos()
        if state in ("interrupted", "failed"):  # no more awaiting: write what we have
            matrix = write_matrix(out, experts=infos, test_share=test_share, seed=seed)
        else:
            matrix = await asyncio.to_thread(write_matrix, out, experts=infos, test_share=test_share, seed=seed)
        store.write_run({"state": state, "started_at": store.read_run().get("started_at"), "finished_at": _now(),
                         "source": source.name, "experts": names, "prompts": len(items), "seconds": time.monotonic() - t0,
                         "progress": final.as_dict()})
        if own:  # the servers this run started (none that were already up: `experts up`, a proxy)
            registry.stop_local(only_owned=True)
    status = await asyncio.to_thread(load_status, out, [n for n in registry.names if n in set(names) | _with_cells(out)])
    return CalibrationResult(out_dir=out, matrix_path=matrix, experts=names, state=state, progress=final, status=status,
                             seconds=time.monotonic() - t0)


def _judge(settings: Settings, registry: ExpertRegistry, items: list[PromptItem]):
    """The judge grader when some prompt needs it (CalibrationError when none is configured)."""
    if not any(it.grader == graders.JUDGE for it in items):
        return None
    cfg = settings.app_config.judge
    if cfg is None:
        raise CalibrationError("prompts graded by the LLM judge (grader 'judge', the ledger source) need a judge: "
                               "add `judge: {expert: NAME}` to the config")
    from router.calibration.judging import JudgeGrader

    return JudgeGrader(cfg, registry[cfg.expert])


def _with_cells(out: Path) -> set[str]:
    return {e for _, e in CellStore(out).cells()}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Budget:
    """What the run has spent and reserved (None limit: no cap)."""

    def __init__(self, limit: float | None) -> None:
        self.limit, self.spent, self.reserved, self.hit = limit, 0.0, 0.0, False

    def reserve(self, amount: float) -> bool:
        if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-15:
            self.hit = True
            return False
        self.reserved += amount
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved -= reserved
        self.spent += actual


@dataclass
class _Job:
    item: PromptItem
    kind: str  # call | regrade | recorded
    earlier: Cell | None = None


class _Run:
    """One run's state: the plan per expert, workers, breakers, budget, judge, store, progress."""

    def __init__(self, settings: Settings, registry: ExpertRegistry, store: CellStore, items: list[PromptItem],
                 names: list[str], *, max_tokens: int, logprobs: bool, concurrency: int | None,
                 budget_usd: float | None, progress: ProgressCallback | None, judge=None) -> None:
        self.settings, self.registry, self.store, self.items, self.names = settings, registry, store, items, names
        self.asker = Asker(max_tokens=max_tokens, logprobs=logprobs)
        self.concurrency = concurrency
        self.budget = _Budget(budget_usd)
        self.give_up_after = max(1, settings.breaker_failures)
        self.down: dict[str, str] = {}
        self.failures = dict.fromkeys(names, 0)
        self.judge = judge  # router.calibration.judging.JudgeGrader, when some prompt is judged
        self.judge_sem = asyncio.Semaphore(max(1, judge.expert.slots)) if judge is not None else None
        existing = store.cells()
        self.plan: dict[str, deque[_Job]] = {}
        already = 0
        for name in names:
            jobs: deque[_Job] = deque()
            for item in items:
                cell = existing.get((item.qid, name))
                if cell is not None and cell.status == OK:
                    already += 1
                elif cell is not None and cell.status == GRADE_ERROR:
                    jobs.append(_Job(item, "regrade", cell))
                elif cell is None and name in item.recorded:
                    jobs.append(_Job(item, "recorded"))
                else:
                    jobs.append(_Job(item, "call"))
            self.plan[name] = jobs
        self.tracker = Tracker({n: len(j) for n, j in self.plan.items()}, already, progress)

    # ---- set-up --------------------------------------------------------------------------------
    async def start_local(self) -> None:
        """Start (or adopt running) local servers of the experts this run needs."""
        wanted = set(self.names) | ({self.judge.expert.name} if self.judge else set())
        local = [e.name for e in self.registry if e.name in wanted and e.backend.is_local]
        if not local:
            return
        error = None
        try:
            results = await asyncio.to_thread(self.registry.start_local, local)
        except BackendError as exc:
            results, error = {}, exc.message
        for name in local:
            if self.registry[name].backend.api_base is None:
                self.down[name] = f"could not start: {(error or results.get(name) or 'no server')[:300]}"

    # ---- running -------------------------------------------------------------------------------
    async def execute(self) -> None:
        for name in self.names:
            backend = self.registry[name].backend
            if backend.is_local and backend.api_base is None:  # e.g. a proxy whose local server is not up
                self.down.setdefault(name, "its local server is not running")
        workers = []
        for name in self.names:
            expert = self.registry[name]
            n = min(self.concurrency or DEFAULT_CONCURRENCY, expert.slots)
            workers += [self._worker(name) for _ in range(max(1, min(n, len(self.plan[name]))))]
        await asyncio.gather(*workers)
        self.tracker.emit("budget" if self.budget.hit else "done")

    async def _worker(self, name: str) -> None:
        jobs = self.plan[name]
        expert = self.registry[name]
        while jobs:
            if name in self.down:
                await self._skip_rest(name)
                return
            job = jobs.popleft()
            self.tracker.start(name)
            if job.kind == "recorded":
                await self._record(self._recorded_cell(job.item, name), name, spent=0.0)
            elif job.kind == "regrade":
                await self._regrade(job)
            elif not await self._call(expert, job.item):
                jobs.appendleft(job)  # over budget: leave it (and the rest) for a later run
                self.tracker.set_state(name, "budget")
                return

    async def _skip_rest(self, name: str) -> None:
        jobs = self.plan[name]
        reason = f"not attempted: expert {name!r} is down ({self.down[name]})"
        while jobs:
            job = jobs.popleft()
            await self._record(Cell(qid=job.item.qid, expert=name, status=CALL_ERROR, grader=job.item.grader, error=reason,
                                    finished_at=_now()), name)
        self.tracker.set_state(name, "down")

    async def _call(self, expert: Any, item: PromptItem) -> bool:
        """Ask, grade and record one cell; False when the budget cannot cover the call."""
        messages = item.chat_messages()
        reserve = upper_bound_cost(expert, messages, item.max_tokens or self.asker.max_tokens)
        if not self.budget.reserve(reserve):
            return False
        while not expert.breaker.available():  # open (e.g. by the proxy's traffic): wait for the probe
            await asyncio.sleep(0.2)
        try:
            answer = await self._ask(expert, messages, item.max_tokens)
        except ExpertmuxError as exc:
            self.budget.settle(reserve, 0.0)
            if isinstance(exc, ExpertError) and not isinstance(exc, ExpertRateLimitedError):  # the expert's fault
                expert.breaker.record_failure()
                self.failures[expert.name] += 1
                if self.failures[expert.name] >= self.give_up_after:
                    self.down.setdefault(expert.name, f"{self.failures[expert.name]} consecutive failures, last: {exc.message}")
            await self._record(Cell(qid=item.qid, expert=expert.name, status=CALL_ERROR, grader=item.grader, error=exc.message,
                                    finished_at=_now()), expert.name)
            return True
        self.budget.settle(reserve, answer.cost_usd)
        expert.breaker.record_success()
        self.failures[expert.name] = 0
        cell = Cell(qid=item.qid, expert=expert.name, status=OK, grader=item.grader, answer=answer.text,
                    prompt_tokens=answer.prompt_tokens, output_tokens=answer.output_tokens, cost_usd=answer.cost_usd,
                    latency_s=round(answer.latency_s, 4), logprobs=answer.logprobs, finished_at=_now(),
                    extra={"finish_reason": answer.finish_reason} if answer.finish_reason else {})
        await self._record(await self._graded(cell, item), expert.name)
        return True

    async def _ask(self, expert: Any, messages: list[dict[str, str]], max_tokens: int | None):
        for attempt in range(RATE_LIMIT_RETRIES + 1):
            try:
                return await self.asker.ask(expert, messages, max_tokens)
            except ExpertRateLimitedError:
                if attempt == RATE_LIMIT_RETRIES:
                    raise
                await asyncio.sleep(min(2.0**attempt, 30.0))

    async def _regrade(self, job: _Job) -> None:
        earlier = job.earlier
        cell = replace(earlier, status=OK, score=None, error=None, grader=job.item.grader, finished_at=_now(), extra=dict(earlier.extra))
        await self._record(await self._graded(cell, job.item), earlier.expert, spent=0.0)  # the answer was paid before

    async def _graded(self, cell: Cell, item: PromptItem) -> Cell:
        """The cell with its score, or NaN (status grade_error) with the grader's reason."""
        try:
            if item.grader == graders.JUDGE:
                cell.score = await self._judge(item, cell)
            else:
                answer = graders.strip_echo(cell.answer or "", item.prompt)
                if answer != cell.answer:
                    cell.extra["echo_stripped"] = True
                cell.score = graders.grade(item.grader, answer, item.reference, item.params)
        except GraderError as exc:
            cell.status, cell.score, cell.error = GRADE_ERROR, None, exc.message
        return cell

    async def _judge(self, item: PromptItem, cell: Cell) -> float:
        judge = self.judge
        reserve = upper_bound_cost(judge.expert, [{"content": judge.build_prompt(item.transcript(), cell.answer or "")}],
                                   judge.cfg.max_tokens)
        if not self.budget.reserve(reserve):
            raise GraderError("not judged: the budget cannot cover the judge's call")
        verdict = None
        try:
            async with self.judge_sem:
                verdict = await judge.grade(item.transcript(), cell.answer or "")
        finally:
            spent = verdict.cost_usd if verdict is not None else 0.0
            self.budget.settle(reserve, spent)
            self.tracker.extra_spent += spent
        cell.extra["judge_reply"] = verdict.reply.strip()[:500]
        return verdict.score

    def _recorded_cell(self, item: PromptItem, expert: str) -> Cell:
        rec = item.recorded[expert]
        return Cell(qid=item.qid, expert=expert, status=OK, score=rec.score, grader=f"feedback:{rec.source}",
                    prompt_tokens=rec.prompt_tokens, output_tokens=rec.output_tokens, cost_usd=rec.cost_usd,
                    latency_s=rec.latency_s, finished_at=_now(), extra={"from": "ledger feedback"})

    async def _record(self, cell: Cell, expert: str, *, spent: float | None = None) -> None:
        """Append the finished cell (durably) and count it; ``spent``: what this run paid for it."""
        await asyncio.to_thread(self.store.append, cell)
        self.tracker.finish_cell(expert, failed=cell.status != OK, cost_usd=cell.cost_usd if spent is None else spent,
                                 output_tokens=cell.output_tokens if spent is None else 0, error=cell.error)
