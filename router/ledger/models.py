"""SQLAlchemy 2.0 typed models of the ledger. Alembic migrations in ``migrations/`` mirror them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True), float: Float}


class RequestRow(Base):
    """Exactly one row per chat request, whatever happened to it."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    api_key_id: Mapped[str | None] = mapped_column(String(64))
    tenant: Mapped[str | None] = mapped_column(String(128))
    requested_model: Mapped[str | None] = mapped_column(String(256))
    policy: Mapped[str | None] = mapped_column(String(128))
    policy_version: Mapped[str | None] = mapped_column(String(128))
    expert: Mapped[str | None] = mapped_column(String(256))
    decision: Mapped[dict[str, Any] | None]
    prompt_hash: Mapped[str | None] = mapped_column(String(64))
    prompt_text: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None]
    latency_ms: Mapped[float | None]
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(32))  # ok | error | rejected | client_disconnected
    http_status: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(Text)
    n_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Backend-specific usage beyond prompt/completion tokens (e.g. R2R's small/large token split).
    usage_details: Mapped[dict[str, Any] | None]
    session_id: Mapped[str | None] = mapped_column(String(64))  # the conversation it belongs to (router/sessions; 0008)

    __table_args__ = (
        Index("ix_requests_created_at", "created_at"),
        Index("ix_requests_session_created", "session_id", "created_at"),
        Index("ix_requests_expert_created", "expert", "created_at"),
        Index("ix_requests_api_key", "api_key_id"),
        # Dashboard (migration 0005): keyset pagination of the ledger browser, one index per filter
        # ending in created_at, and a covering index for the overview's aggregates over a time range.
        Index("ix_requests_created_id", "created_at", "id"),
        Index("ix_requests_policy_created", "policy", "created_at"),
        Index("ix_requests_status_created", "status", "created_at"),
        Index("ix_requests_key_created", "api_key_id", "created_at"),
        Index("ix_requests_overview", "created_at", "expert", "status", "latency_ms", "cost_usd"),
    )


class AttemptRow(Base):
    """One row per call to an expert (a request with fallbacks has several)."""

    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    attempt_no: Mapped[int]
    expert: Mapped[str] = mapped_column(String(256))
    started_at: Mapped[datetime]
    ttft_ms: Mapped[float | None]
    latency_ms: Mapped[float | None]
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    usage_details: Mapped[dict[str, Any] | None]


class FeedbackRow(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("requests.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime]
    score: Mapped[float]
    source: Mapped[str] = mapped_column(String(16))  # user | judge | auto
    comment: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_feedback_created", "created_at", "request_id", "score"),)  # dashboard quality (0005)


class RequestRollupRow(Base):
    """Requests per 30-minute slot, expert, policy and status (migration 0006; ``router.ledger.rollups``)."""

    __tablename__ = "request_rollups"

    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # epoch seconds of the slot's start
    expert: Mapped[str] = mapped_column(String(256), primary_key=True)  # '' = none (rejected)
    policy: Mapped[str] = mapped_column(String(128), primary_key=True)  # '' = none
    status: Mapped[str] = mapped_column(String(32), primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_sum_ms: Mapped[float] = mapped_column(Float, default=0.0)
    latency_n: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = {"sqlite_with_rowid": False}  # clustered on the key: a slot range is one read


class LatencyRollupRow(Base):
    """Histogram of answered requests' latencies per 30-minute slot, in bins of 1/32 of ln(1 + ms)."""

    __tablename__ = "latency_rollups"

    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    bin: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = {"sqlite_with_rowid": False}  # clustered on the key: a slot range is one read


class FeedbackRollupRow(Base):
    """Feedback per 30-minute slot (of the feedback's time), policy, policy version and expert of its request."""

    __tablename__ = "feedback_rollups"

    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    policy: Mapped[str] = mapped_column(String(128), primary_key=True)  # '' = none
    policy_version: Mapped[str] = mapped_column(String(128), primary_key=True)  # '' = none
    expert: Mapped[str] = mapped_column(String(256), primary_key=True)  # '' = none
    score_sum: Mapped[float] = mapped_column(Float, default=0.0)
    n: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = {"sqlite_with_rowid": False}  # clustered on the key: a slot range is one read


class ExpertRow(Base):
    """The experts as configured, synced at start-up (so ledger rows can be joined to prices)."""

    __tablename__ = "experts"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    backend: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(512))
    input_usd_per_mtok: Mapped[float]
    output_usd_per_mtok: Mapped[float]
    params_b: Mapped[float | None]
    context_window: Mapped[int]
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime]


class PolicyVersionRow(Base):
    __tablename__ = "policy_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    policy: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_fingerprint: Mapped[str | None] = mapped_column(String(128))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    artifact_path: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    provenance: Mapped[dict[str, Any] | None]  # where the version came from (data, ledger slice, command)
    promoted_at: Mapped[datetime | None]  # last time it became the active version

    __table_args__ = (Index("uq_policy_version", "policy", "version", unique=True),)


class PolicyEventRow(Base):
    """The registry's history: every registration, promotion (or refusal) and rollback, by whom and why."""

    __tablename__ = "policy_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime]
    policy: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))  # register | promote | refuse | rollback
    version: Mapped[str | None] = mapped_column(String(128))  # the version the action is about
    previous_version: Mapped[str | None] = mapped_column(String(128))  # active before it (promote, rollback)
    actor: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    gate: Mapped[dict[str, Any] | None]  # the comparison that decided a promotion

    __table_args__ = (Index("ix_policy_events_policy", "policy", "id"),)


class ApiKeyRow(Base):
    """An API key: only its keyed hash is stored (router/access/keys.py); limits and budgets travel with it."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # "hmac-sha256:<secret fingerprint>", or "sha256" for a key stored before keyed hashes (re-hashed on first use)
    hash_scheme: Mapped[str] = mapped_column(String(32), default="sha256", server_default="sha256")
    prefix: Mapped[str] = mapped_column(String(16))  # shown in listings to recognise a key
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    tenant: Mapped[str | None] = mapped_column(String(128))
    rpm_limit: Mapped[int | None]
    tpm_limit: Mapped[int | None]
    budget_usd_day: Mapped[float | None]
    budget_usd_month: Mapped[float | None]
    prompt_storage: Mapped[str | None] = mapped_column(String(8))  # full | hash | none; None = deployment default


class KeyUsageRow(Base):
    """Usage of one key in one time window; reservations make budgets exact under concurrency."""

    __tablename__ = "key_usage"

    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    window: Mapped[str] = mapped_column(String(8), primary_key=True)  # minute | day | month
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    requests: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    reserved_tokens: Mapped[int] = mapped_column(Integer, default=0)
    spent_usd: Mapped[float] = mapped_column(Float, default=0.0)
    reserved_usd: Mapped[float] = mapped_column(Float, default=0.0)


class SessionRow(Base):
    """The routing state of one conversation or agent loop (``router.sessions``, migration 0008),
    shared by replicas; the request path reads it through a cache and writes it after each answer."""

    __tablename__ = "routing_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # api key id (or '-') and the session id, hashed
    updated_at: Mapped[datetime]
    expert: Mapped[str | None] = mapped_column(String(256))
    turns: Mapped[int] = mapped_column(Integer, default=0)
    switches: Mapped[int] = mapped_column(Integer, default=0)
    escalations: Mapped[int] = mapped_column(Integer, default=0)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    prefix_tokens: Mapped[int] = mapped_column(Integer, default=0)
    floor_expert: Mapped[str | None] = mapped_column(String(256))
    last_request_id: Mapped[str | None] = mapped_column(String(32))
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)

    __table_args__ = (Index("ix_routing_sessions_updated", "updated_at"),)


class ShadowDecisionRow(Base):
    """A candidate policy's decision on a live request it did not serve (``router.shadow``, 0008)."""

    __tablename__ = "shadow_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(32), index=True)  # the served request (no FK: written apart from it)
    created_at: Mapped[datetime]
    policy: Mapped[str] = mapped_column(String(128))  # the candidate
    policy_version: Mapped[str] = mapped_column(String(128))
    served_policy: Mapped[str | None] = mapped_column(String(128))
    served_version: Mapped[str | None] = mapped_column(String(128))
    served_expert: Mapped[str | None] = mapped_column(String(256))
    expert: Mapped[str] = mapped_column(String(256))  # the candidate's choice
    agrees: Mapped[bool] = mapped_column(Boolean)
    decision: Mapped[dict[str, Any]]  # the candidate's full decision record (scores, propensities, ranking)
    lambda_: Mapped[float] = mapped_column("lambda", Float)
    status: Mapped[str] = mapped_column(String(16))  # decided | called | judged | skipped_budget | error
    served_cost_usd: Mapped[float | None]
    cost_usd: Mapped[float | None]  # the candidate expert's bill, when it was called
    latency_ms: Mapped[float | None]
    served_score: Mapped[float | None]  # blind judge ratings in [0, 1]
    score: Mapped[float | None]
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_shadow_policy_created", "policy", "policy_version", "created_at"),)
