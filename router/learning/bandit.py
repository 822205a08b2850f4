"""Logged bandit feedback from the ledger: one query, streamed, into numpy arrays.

``load_logged`` joins answered requests to their aggregated feedback (mean score per request,
chosen sources only, at least ``min_feedback`` rows) in ONE SQL statement, streams the result in
blocks, and parses each decision's JSON with orjson. Decisions that logged no propensities
(deterministic serving, or rows written before exploration existed) count as p = 1 for the
chosen expert; ``LoggedData.logged`` marks which rows did log them.

The experts table gives prices (``expert_info``) so a policy trained on the result knows them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import orjson
from sqlalchemy import Engine, Text, cast, func, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from core.types import routed_text, transcript_turns
from policies.logged import LoggedData
from router.ledger.models import ExpertRow, FeedbackRow, RequestRow

SOURCES = ("user", "judge", "auto")
_BLOCK = 20_000


def _as_utc(value: datetime | date | str | None) -> datetime | None:
    """A ``since``/``until`` bound as a naive UTC datetime (how SQLite stores ``created_at``)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):  # a date: its midnight, UTC
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _connect(db: Engine | Session | Connection | str):
    """(connection, cleanup) for whatever the caller holds."""
    if isinstance(db, str):
        from router.ledger.db import make_engine

        engine = make_engine(db)
        conn = engine.connect()
        return conn, lambda: (conn.close(), engine.dispose())
    if isinstance(db, Engine):
        conn = db.connect()
        return conn, conn.close
    if isinstance(db, Session):
        return db.connection(), lambda: None
    if isinstance(db, Connection):
        return db, lambda: None
    raise TypeError(f"load_logged takes an Engine, Session, Connection or database URL, not {type(db).__name__}")


def logged_query(*, since=None, until=None, min_feedback: int = 1, sources: Sequence[str] = SOURCES,
                 statuses: Sequence[str] = ("ok",), policies: Sequence[str] | None = None, dialect: str = "sqlite"):
    """The SELECT behind ``load_logged`` (exposed for EXPLAIN and benchmarks).

    Feedback joined to its request and aggregated per request in one statement, so a time
    window is applied before aggregation (an index range on ``created_at``), and only the parts
    of the decision the estimators need leave the database: the candidates' propensities (or,
    for decisions that logged none, their scores), the chosen propensity and the chosen expert.
    """
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown feedback sources {unknown}; choose among {', '.join(SOURCES)}")
    d = RequestRow.decision
    created = cast(RequestRow.created_at, Text) if dialect == "sqlite" else RequestRow.created_at  # parsed in numpy
    cols = (RequestRow.id, created, RequestRow.expert, RequestRow.cost_usd, RequestRow.prompt_text,
            func.coalesce(func.nullif(cast(d["propensities"], Text), "{}"), cast(d["scores"], Text)), d["propensity"].as_float(),
            d["expert"].as_string(), RequestRow.policy, RequestRow.policy_version,
            func.avg(FeedbackRow.score), func.count(FeedbackRow.id))
    source_ok = FeedbackRow.source.in_(list(sources))
    if min_feedback <= 0:  # every request, feedback or not
        stmt = (select(*cols).select_from(RequestRow)
                .outerjoin(FeedbackRow, (FeedbackRow.request_id == RequestRow.id) & source_ok)
                .group_by(RequestRow.id))
    else:
        stmt = (select(*cols).select_from(FeedbackRow).join(RequestRow, RequestRow.id == FeedbackRow.request_id)
                .where(source_ok).group_by(RequestRow.id))  # the key: PostgreSQL then allows its columns
        if min_feedback > 1:
            stmt = stmt.having(func.count(FeedbackRow.id) >= min_feedback)
    stmt = stmt.where(RequestRow.status.in_(list(statuses)), RequestRow.expert.is_not(None))
    if since is not None:
        stmt = stmt.where(RequestRow.created_at >= _as_utc(since))
    if until is not None:
        stmt = stmt.where(RequestRow.created_at < _as_utc(until))
    if policies:
        stmt = stmt.where(RequestRow.policy.in_(list(policies)))
    return stmt


class _Columns:
    """Values gathered while streaming: columns extended block by block, decisions' candidate
    sets parsed once per distinct text (exploring policies log few distinct patterns)."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.lists: list[list[Any]] = [[] for _ in range(12)]
        self.patterns: list[tuple[tuple[int, float], ...]] = []  # distinct candidate sets with propensities
        self.pattern: list[int] = []  # per row: index into patterns
        self.prop: list[float] = []
        self.logged: list[bool] = []
        self.keep: list[bool] = []
        self._cache: dict[tuple[str | None, str], tuple[int, float, bool]] = {}

    def col(self, name: str) -> int:
        j = self.index.get(name)
        if j is None:
            j = self.index[name] = len(self.index)
        return j

    def _parse(self, raw: str | None, chosen_p: float | None, expert: str) -> tuple[tuple[tuple[int, float], ...], float, bool]:
        """(candidates as (column, propensity), propensity of the served expert, whether logged)."""
        a = self.col(expert)
        parsed = orjson.loads(raw) if raw else None
        if isinstance(parsed, str):  # a JSON value stored as a JSON string (some drivers double-encode)
            parsed = orjson.loads(parsed)
        names = parsed if isinstance(parsed, dict) else {}
        if chosen_p is not None and chosen_p > 0:
            cands = tuple((self.col(n), float(p)) for n, p in names.items())
            return cands, float(chosen_p), True
        # no propensities logged: the candidates are the scored experts; deterministic, p = 1
        cands = ((a, 1.0),) + tuple((self.col(n), 0.0) for n in names if n != expert)
        return cands, 1.0, False

    def add_block(self, block: Sequence[Any]) -> None:
        if not block:
            return
        columns = list(zip(*block))
        for store, values in zip(self.lists, columns):
            store.extend(values)
        cache = self._cache
        for expert, raw, chosen_p, decided in zip(columns[2], columns[5], columns[6], columns[7]):
            # a fallback expert answered: its outcome is not the outcome of the logged choice
            self.keep.append(decided is None or decided == expert)
            key = (raw, expert) if chosen_p is not None else (raw, expert + "\x00")
            hit = cache.get(key)
            if hit is None:
                cands, p, logged = self._parse(raw, chosen_p, expert)
                self.patterns.append(cands)
                hit = (len(self.patterns) - 1, p, logged)
                if len(cache) < 200_000:  # softmax logs are all distinct: bound the memory
                    cache[key] = hit
            pattern, p, logged = hit
            if logged and chosen_p != p:  # same candidates text, different chosen probability
                p = float(chosen_p)
            self.pattern.append(pattern)
            self.prop.append(p)
            self.logged.append(logged)

    def __len__(self) -> int:
        return len(self.lists[0])


def load_logged(db: Engine | Session | Connection | str, *, since: datetime | date | str | None = None,
                until: datetime | date | str | None = None, min_feedback: int = 1,
                sources: Iterable[str] = SOURCES, statuses: Sequence[str] = ("ok",),
                policies: Sequence[str] | None = None, progress=None) -> LoggedData:
    """Build the logged data set (bandit feedback) from the ledger.

    ``db``: an Engine, Session, Connection or database URL. Rows: requests with ``status`` in
    ``statuses`` created in [``since``, ``until``) (UTC; dates or ISO strings accepted), with at
    least ``min_feedback`` feedback rows from ``sources`` — their scores averaged into the
    reward. ``min_feedback=0`` keeps requests without feedback too (reward NaN; useful for cost
    estimates). ``policies`` limits to decisions of the named policies. Requests answered by a
    fallback expert (not the decision's choice) are left out: their outcome is not the chosen
    expert's. ``progress(n_rows)`` is called after every streamed block. Rows come back ordered
    by creation time.

    One SQL statement (feedback joined to requests, aggregated per request), streamed in blocks
    of 20,000 rows; only the decision's propensities leave the database, parsed once per
    distinct text with orjson.
    """
    sources = tuple(sources)
    conn, cleanup = _connect(db)
    cols = _Columns()
    try:
        dialect = conn.dialect.name
        stmt = logged_query(since=since, until=until, min_feedback=min_feedback, sources=sources, statuses=statuses,
                            policies=policies, dialect=dialect)
        result = conn.execution_options(stream_results=True, yield_per=_BLOCK).execute(stmt)
        for block in result.partitions(_BLOCK):
            cols.add_block(block)
            if progress is not None:
                progress(len(cols))
        info = expert_info(conn)
    finally:
        cleanup()
    return _assemble(cols, query={
        "since": None if since is None else str(_as_utc(since)), "until": None if until is None else str(_as_utc(until)),
        "min_feedback": int(min_feedback), "sources": list(sources), "statuses": list(statuses),
        **({"policies": list(policies)} if policies else {})}, known=list(info))


def _times(values: list[Any]) -> np.ndarray:
    """Creation times as datetime64[us] UTC: SQLite gives text, other databases datetimes."""
    if not values:
        return np.zeros(0, dtype="datetime64[us]")
    if isinstance(values[0], str):
        return np.array(values, dtype="datetime64[us]")
    return np.array([v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo else v for v in values], dtype="datetime64[us]")


def _assemble(cols: _Columns, *, query: dict[str, Any], known: list[str]) -> LoggedData:
    ids, created, _, cost, prompts, _, _, _, policy, version, reward, n_fb = cols.lists
    keep = np.array(cols.keep, dtype=bool)
    dropped = int((~keep).sum())
    names = list(cols.index)
    # Columns in a stable order: experts by name (the ledger's order of appearance is arbitrary).
    order = sorted(range(len(names)), key=lambda j: names[j])
    remap = np.empty(len(names), dtype=np.int64)
    remap[order] = np.arange(len(names))
    experts = [names[j] for j in order]
    n, k = len(ids), len(experts)
    pattern_props = np.zeros((len(cols.patterns), k))
    pattern_cands = np.zeros((len(cols.patterns), k), dtype=bool)
    for i, row in enumerate(cols.patterns):
        for j, q in row:
            pattern_props[i, remap[j]] = q
            pattern_cands[i, remap[j]] = True
    which = np.array(cols.pattern, dtype=np.int64)
    props, cands = pattern_props[which], pattern_cands[which]
    action = np.array([cols.index[e] for e in cols.lists[2]], dtype=np.int64)
    data = LoggedData(
        request_id=np.array(ids, dtype=object),
        created_at=_times(created),
        prompts=[None if p is None else routed_text(transcript_turns(p)) for p in prompts],  # as the proxy's policy read it
        experts=experts,
        action=remap[action] if n else action,
        reward=np.array([np.nan if r is None else r for r in reward], dtype=float),
        n_feedback=np.array(n_fb, dtype=np.int64),
        cost=np.array([c or 0.0 for c in cost], dtype=float),
        propensity=np.array(cols.prop, dtype=float),
        propensities=props,
        candidates=cands,
        logged=np.array(cols.logged, dtype=bool),
        policy=np.array(policy, dtype=object),
        policy_version=np.array(version, dtype=object),
        query={**query, "fallback_rows_dropped": dropped},
    )
    if dropped:
        data = data.subset(keep)
    sort = np.argsort(data.created_at, kind="stable")
    return data if len(data) < 2 or bool(np.all(sort[1:] > sort[:-1])) else data.subset(sort)


def expert_info(db: Engine | Session | Connection | str) -> dict[str, dict[str, Any]]:
    """Prices, size and description of the experts the ledger knows (synced from the config)."""
    conn, cleanup = _connect(db)
    try:
        rows = conn.execute(select(ExpertRow.name, ExpertRow.input_usd_per_mtok, ExpertRow.output_usd_per_mtok,
                                   ExpertRow.params_b, ExpertRow.context_window, ExpertRow.description)).all()
    finally:
        cleanup()
    return {r[0]: {"input_usd_per_mtok": r[1], "output_usd_per_mtok": r[2], "params_b": r[3],
                   "context_window": r[4], "description": r[5]} for r in rows}
