"""A synthetic ledger of realistic shape, written fast (SQLite executemany, PostgreSQL COPY).

Shape, per request (spread uniformly over ``days`` ending at ``end``): one of 5 experts with
skewed shares, one of 5 policies ("direct" when a client named the expert), 20 API keys,
status ok 96 % / error 2 % / rejected 1.5 % / client_disconnected 0.5 % (rejected rows have no
expert and no attempt), log-normal latency per expert, cost from tokens and prices, a decision
with every candidate's score and propensity (ε-greedy, ε = 0.1), a prompt of about 100
characters. Attempts: one per routed request, a second (fallback) for 5 %. Feedback: 10 % of
answered requests, a few seconds to minutes after them, from a user or a judge. When the
ledger has the rollup tables (migration 0006) they are kept up to date chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
from sqlalchemy import inspect

from router.ledger import rollups

EXPERTS = ["smollm2-135m", "gemma3-270m", "llama-3.1-8b", "qwen-2.5-72b", "gpt-large"]
SHARES = [0.40, 0.25, 0.20, 0.10, 0.05]
PRICE = {"smollm2-135m": (0.05, 0.1), "gemma3-270m": (0.1, 0.2), "llama-3.1-8b": (0.2, 0.2),
         "qwen-2.5-72b": (0.9, 0.9), "gpt-large": (2.5, 10.0)}
LATENCY_MS = {"smollm2-135m": 300, "gemma3-270m": 450, "llama-3.1-8b": 700, "qwen-2.5-72b": 1500, "gpt-large": 2200}
POLICIES = ["prior", "knn", "tryage", "graphrouter", "direct"]
POLICY_SHARES = [0.30, 0.25, 0.20, 0.15, 0.10]
STATUSES = ["ok", "error", "rejected", "client_disconnected"]
STATUS_SHARES = [0.96, 0.02, 0.015, 0.005]
N_KEYS = 20
WORDS = ("what is the capital of compute solve python function river novel explain why how many integer "
         "write a short poem about translate summarise list the steps to prove that").split()

REQUEST_COLS = ["id", "created_at", "finished_at", "api_key_id", "tenant", "requested_model", "policy", "policy_version",
                "expert", "decision", "prompt_hash", "prompt_text", "prompt_tokens", "completion_tokens", "cost_usd",
                "ttft_ms", "latency_ms", "stream", "status", "http_status", "error", "n_attempts"]
ATTEMPT_COLS = ["request_id", "attempt_no", "expert", "started_at", "ttft_ms", "latency_ms", "prompt_tokens",
                "completion_tokens", "cost_usd", "status", "error"]
FEEDBACK_COLS = ["request_id", "created_at", "score", "source", "comment"]


@dataclass
class Seeded:
    requests: int = 0
    attempts: int = 0
    feedback: int = 0
    sample_ids: list[str] | None = None
    end: datetime | None = None


def key_ids() -> list[str]:
    return [f"key{i:02d}" for i in range(N_KEYS)]


def _chunk(rng: np.random.Generator, start: int, n: int, t0: float, span_s: float):
    """Rows of ``n`` requests (ids start..start+n) with their attempts and feedback."""
    when = t0 + np.sort(rng.random(n)) * span_s
    expert_i = rng.choice(len(EXPERTS), n, p=SHARES)
    policy_i = rng.choice(len(POLICIES), n, p=POLICY_SHARES)
    status_i = rng.choice(len(STATUSES), n, p=STATUS_SHARES)
    key_i = rng.integers(0, N_KEYS, n)
    p_tok = rng.integers(10, 400, n)
    c_tok = rng.integers(5, 300, n)
    lat_scale = np.array([LATENCY_MS[e] for e in EXPERTS])[expert_i]
    latency = lat_scale * rng.lognormal(0.0, 0.5, n)
    fallback = rng.random(n) < 0.05
    feedback = (rng.random(n) < 0.10 / 0.96) & (status_i == 0)
    scores = rng.random((n, len(EXPERTS)))
    requests, attempts, fbs = [], [], []
    for j in range(n):
        rid = f"{start + j:032x}"
        created = datetime.fromtimestamp(when[j], UTC)
        status = STATUSES[status_i[j]]
        rejected = status == "rejected"
        expert = None if rejected else EXPERTS[expert_i[j]]
        policy = POLICIES[policy_i[j]]
        pin, pout = PRICE[expert] if expert else (0.0, 0.0)
        ptok, ctok = int(p_tok[j]), (0 if status != "ok" else int(c_tok[j]))
        cost = (ptok * pin + ctok * pout) / 1e6
        lat = None if rejected else float(latency[j])
        decision = None
        if not rejected:
            probs = {e: 0.02 for e in EXPERTS}
            probs[expert] = 0.92
            decision = orjson.dumps({"expert": expert, "policy": policy, "policy_version": "v1",
                                     "scores": {e: round(float(s), 4) for e, s in zip(EXPERTS, scores[j])},
                                     "propensities": probs, "propensity": 0.92, "ranking": [expert] + [e for e in EXPERTS if e != expert],
                                     "reason": "argmax quality − λ·cost; ε-greedy exploration (ε=0.1)"}).decode()
        prompt = " ".join(WORDS[(start + j + k * 7) % len(WORDS)] for k in range(18))
        n_att = 0 if rejected else (2 if fallback[j] else 1)
        requests.append((rid, created, created + timedelta(milliseconds=lat or 1), key_ids()[key_i[j]], None,
                         "expertmux/auto" if policy != "direct" else expert, policy, "v1", expert, decision, None, prompt,
                         ptok, ctok, cost, lat, lat, False, status, 200 if status == "ok" else (400 if rejected else 502),
                         None if status == "ok" else f"{status}: synthetic", n_att))
        if n_att == 2:
            other = EXPERTS[(expert_i[j] + 1) % len(EXPERTS)]
            attempts.append((rid, 1, other, created, None, 120.0, ptok, 0, 0.0, "error", "synthetic failure"))
        if n_att:
            attempts.append((rid, n_att, expert, created, lat, lat, ptok, ctok, cost, "ok" if status == "ok" else status, None))
        if feedback[j]:
            fbs.append((rid, created + timedelta(seconds=float(rng.exponential(60))), float(rng.random()),
                        "user" if rng.random() < 0.7 else "judge", None))
    return requests, attempts, fbs


def _sqlite_ts(dt: datetime | None) -> str | None:
    return None if dt is None else dt.strftime("%Y-%m-%d %H:%M:%S.%f")


def seed(engine, *, rows: int, days: float = 30.0, end: datetime | None = None, seed: int = 0, chunk: int = 50_000,
         progress=None) -> Seeded:
    """Append ``rows`` synthetic requests (and their attempts and feedback) to the ledger of ``engine``."""
    rng = np.random.default_rng(seed)
    end = end or datetime.now(UTC)
    span_s = days * 86400.0
    t0 = end.timestamp() - span_s
    out = Seeded(sample_ids=[], end=end)
    postgres = engine.dialect.name == "postgresql"
    _seed_keys_and_experts(engine)
    with_rollups = inspect(engine).has_table("request_rollups")  # else migration 0006 backfills them
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        lo = t0 + span_s * start / rows
        reqs, atts, fbs = _chunk(rng, start, n, lo, span_s * n / rows)
        (_copy_pg if postgres else _insert_sqlite)(engine, reqs, atts, fbs)
        if with_rollups:  # the writer's and feedback service's code path, one transaction per chunk
            with engine.begin() as conn:
                rollups.add_requests(conn, (dict(zip(REQUEST_COLS, r)) for r in reqs))
                by_id = {r[0]: (r[6], r[7], r[8]) for r in reqs}
                rollups.add_feedback(conn, [(f[1], f[2], *by_id[f[0]]) for f in fbs])
        out.requests += len(reqs)
        out.attempts += len(atts)
        out.feedback += len(fbs)
        out.sample_ids.extend(r[0] for r in reqs[:: max(1, n // 20)])
        if progress is not None:
            progress(out.requests)
    return out


def _seed_keys_and_experts(engine) -> None:
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    from router.ledger.models import ApiKeyRow, ExpertRow

    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        if s.get(ApiKeyRow, key_ids()[0]) is None:
            s.execute(insert(ApiKeyRow), [{"id": k, "name": f"team {k[-2:]}", "key_hash": f"{i:064x}", "prefix": f"emx-{k}",
                                           "created_at": now} for i, k in enumerate(key_ids())])
        if s.get(ExpertRow, EXPERTS[0]) is None:
            s.execute(insert(ExpertRow), [{"name": e, "backend": "remote", "model": e, "input_usd_per_mtok": PRICE[e][0],
                                           "output_usd_per_mtok": PRICE[e][1], "params_b": None, "context_window": 8192,
                                           "description": "", "tags": [], "updated_at": now} for e in EXPERTS])


def _insert_sqlite(engine, reqs, atts, fbs) -> None:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.executemany(f"INSERT INTO requests ({', '.join(REQUEST_COLS)}) VALUES ({', '.join('?' * len(REQUEST_COLS))})",
                        [(r[0], _sqlite_ts(r[1]), _sqlite_ts(r[2]), *r[3:17], int(r[17]), *r[18:]) for r in reqs])
        cur.executemany(f"INSERT INTO attempts ({', '.join(ATTEMPT_COLS)}) VALUES ({', '.join('?' * len(ATTEMPT_COLS))})",
                        [(a[0], a[1], a[2], _sqlite_ts(a[3]), *a[4:]) for a in atts])
        cur.executemany(f"INSERT INTO feedback ({', '.join(FEEDBACK_COLS)}) VALUES ({', '.join('?' * len(FEEDBACK_COLS))})",
                        [(f[0], _sqlite_ts(f[1]), *f[2:]) for f in fbs])
        raw.commit()
    finally:
        raw.close()


def _copy_pg(engine, reqs, atts, fbs) -> None:
    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur:
            for table, cols, rows in (("requests", REQUEST_COLS, reqs), ("attempts", ATTEMPT_COLS, atts),
                                      ("feedback", FEEDBACK_COLS, fbs)):
                with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
        raw.commit()
    finally:
        raw.close()
