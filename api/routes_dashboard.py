"""The dashboard's JSON API (``/admin/api/...``): thin routes over ``router.dashboard.queries`` (ledger
queries), ``router.lifecycle.tuning`` (cost–quality curves), ``PolicySet.tune`` (active policy and λ)
and ``router.lifecycle.registry`` (promote / roll back). Authentication: ``api.dashboard_auth``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.dashboard_auth import require_dashboard
from api.responses import json_response
from core.errors import InvalidRequestError, PolicyError
from router.dashboard.queries import STATUSES, DashboardQueries
from router.dashboard.windows import LedgerFilter, Window
from router.lifecycle.tuning import TuningService, promotion_gate, record_tuning

router = APIRouter(prefix="/admin/api", dependencies=[Depends(require_dashboard)], include_in_schema=False)
ACTOR = "dashboard"


def _queries(request: Request) -> DashboardQueries:
    state = request.app.state
    if getattr(state, "dashboard", None) is None:
        state.dashboard = DashboardQueries(state.service.ledger.engine)
    return state.dashboard


def _tuning(request: Request) -> TuningService:
    state = request.app.state
    if getattr(state, "tuning", None) is None:
        from core.settings import PROJECT_ROOT

        settings = state.settings
        state.tuning = TuningService(settings.app_config.tuning, state.service.experts.infos(),
                                     default_max_tokens=settings.default_max_tokens, root=PROJECT_ROOT)
    return state.tuning


def _window(since: datetime | None, until: datetime | None, hours: float | None) -> Window:
    if hours is not None and since is None:
        return Window.last(hours, now=until)
    return Window.of(since, until)


# ---- overview -----------------------------------------------------------------------------------
@router.get("/overview")
async def overview(request: Request, since: datetime | None = None, until: datetime | None = None,
                   hours: float | None = Query(None, gt=0, le=24 * 366), buckets: int = Query(48, ge=1, le=500)):
    """Requests, cost and latency per time bucket; share, errors and cost per expert; feedback
    quality per policy and per expert."""
    q, w = _queries(request), _window(since, until, hours)
    traffic, quality = await asyncio.gather(asyncio.to_thread(q.overview, w, buckets=buckets), asyncio.to_thread(q.quality, w))
    return json_response({**traffic, "quality": quality})


@router.get("/cascades")
async def cascades(request: Request, since: datetime | None = None, until: datetime | None = None,
                   hours: float | None = Query(None, gt=0, le=24 * 366)):
    """Cascade requests per policy: escalation rate, mean steps, the cost and time escalation added."""
    q, w = _queries(request), _window(since, until, hours)
    return json_response(await asyncio.to_thread(q.cascades, w))


@router.get("/routing-time")
async def routing_time(request: Request, since: datetime | None = None, until: datetime | None = None,
                       hours: float | None = Query(None, gt=0, le=24 * 366)):
    """Per policy: how long routing took (waiting for the prompt's features, and the decision), p50/p95."""
    q, w = _queries(request), _window(since, until, hours)
    return json_response(await asyncio.to_thread(q.routing_time, w))


# ---- the experts' own calibration and the policy learned on it ----------------------------------
@router.get("/autolearn")
async def autolearn(request: Request):
    """The background job's stage and progress, the gate's verdict, and the calibration matrix
    per expert and per skill × expert."""
    from router.dashboard.calibration import calibration_summary

    state = request.app.state
    job = state.runtime.autolearn
    status = job.status() if job is not None else {"stage": "off", "message": _autolearn_off(state.settings)}
    folder = job.out if job is not None else (state.settings.app_config.tuning.data if state.settings.app_config.tuning else None)
    if folder is not None and not Path(folder).is_absolute():
        from core.settings import PROJECT_ROOT

        folder = PROJECT_ROOT / folder
    matrix = await asyncio.to_thread(calibration_summary, folder) if folder is not None else None
    return json_response({"job": status, "matrix": matrix, "active_policy": state.service.policies.active_name})


def _autolearn_off(settings) -> str:
    """Why the job does not run in this process (the config, or this replica's switch)."""
    cfg = settings.app_config.autolearn
    if cfg is None:
        return "autolearn is not configured: the config has no autolearn section"
    if settings.autolearn is False and cfg.enabled:
        return "autolearn is off in this process (EXPERTMUX_AUTOLEARN=false); the replica that runs it promotes through the registry"
    return "autolearn is not enabled in the config (autolearn.enabled: false)"


# ---- ledger browser -----------------------------------------------------------------------------
@router.get("/filters")
async def filters(request: Request):
    """Choices of the ledger browser's filters (from config and the key table, not a ledger scan)."""
    service = request.app.state.service
    keys = await asyncio.to_thread(service.keys.list)
    return json_response({"experts": service.experts.names, "policies": service.policies.names() + ["direct"],
                          "statuses": list(STATUSES),
                          "api_keys": [{"id": k.id, "name": k.public().get("name"), "prefix": k.public().get("prefix")}
                                       for k in keys]})


@router.get("/requests")
async def list_requests(request: Request, since: datetime | None = None, until: datetime | None = None,
                        expert: str | None = None, policy: str | None = None, status: str | None = None,
                        api_key: str | None = None, limit: int = Query(50, ge=1, le=200), cursor: str | None = None):
    flt = LedgerFilter(since=since, until=until, expert=expert or None, policy=policy or None, status=status or None,
                       api_key_id=api_key or None)
    page = await asyncio.to_thread(_queries(request).page, flt, limit=limit, cursor=cursor)
    return json_response(page)


@router.get("/requests/{request_id}")
async def request_detail(request_id: str, request: Request):
    return json_response(await asyncio.to_thread(_queries(request).request, request_id))


# ---- policies: tuning, apply, registry ------------------------------------------------------------
@router.get("/policies")
async def policies(request: Request):
    from router.lifecycle import registry as policy_registry

    service = request.app.state.service
    engine = service.ledger.engine
    versions, events = await asyncio.gather(asyncio.to_thread(policy_registry.list_versions, engine),
                                            asyncio.to_thread(policy_registry.history, engine, limit=20))
    return json_response({"active": service.policies.active_name, "lambda": service.policies.default_lambda,
                          "servable": service.policies.names(), "status": service.policies.status(),
                          "versions": [v.public() for v in versions], "events": events,
                          "tuning_unavailable": _tuning(request).unavailable()})


@router.get("/tuning/{name}")
async def tuning_curve(name: str, request: Request, lambda_: float | None = Query(None, alias="lambda")):
    """The policy's cost–quality curve on the evaluation set (and the point of ``lambda``)."""
    policy = request.app.state.service.policies.get(name)
    try:
        out = await asyncio.to_thread(_tuning(request).curve, name, policy, lambda_=lambda_)
    except PolicyError as exc:
        raise InvalidRequestError(exc.message, param="tuning", code="no_evaluation_set") from None
    return json_response(out)


@router.get("/tuning/{name}/point")
async def tuning_point(name: str, request: Request, lambda_: float = Query(..., alias="lambda", ge=0)):
    policy = request.app.state.service.policies.get(name)
    try:
        return json_response(await asyncio.to_thread(_tuning(request).point, name, policy, lambda_))
    except PolicyError as exc:
        raise InvalidRequestError(exc.message, param="tuning", code="no_evaluation_set") from None


class Apply(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: str | None = Field(None, min_length=1, max_length=128)
    lambda_: float | None = Field(None, alias="lambda", ge=0, allow_inf_nan=False)


@router.post("/apply")
async def apply(body: Apply, request: Request):
    """Make ``policy`` the active policy and/or ``lambda`` its λ, for the next request on; recorded
    as a ``tune`` event of the registry history."""
    policies = request.app.state.service.policies
    before = {"active": policies.active_name, "lambda": policies.default_lambda}
    try:
        after = policies.tune(active=body.policy, lambda_=body.lambda_)
    except PolicyError as exc:
        raise InvalidRequestError(exc.message, param="lambda") from None
    version = getattr(policies.get(after["active"]), "version", None)
    await asyncio.to_thread(record_tuning, request.app.state.service.ledger.engine, before=before, after=after,
                            version=version, actor=ACTOR)
    return json_response({**after, "previous": before})


class Promote(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1, max_length=128)
    force: bool = False
    reason: str | None = Field(None, max_length=2000)


class Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(None, max_length=2000)


async def _resync(request: Request) -> None:
    """Apply the registry's new active version in this process now, not at the next poll."""
    sync = getattr(request.app.state, "registry_sync", None)
    if sync is not None:
        await asyncio.to_thread(sync.sync)


@router.post("/policies/{name}/promote")
async def promote(name: str, body: Promote, request: Request):
    """Promote a registered version through the gate; a refusal is an answer (``action: refuse``)
    with the gate's comparison, not an error."""
    from router.lifecycle import registry as policy_registry

    service = request.app.state.service
    gate = promotion_gate(request.app.state.settings, name, lambda_=service.policies.default_lambda)
    result = await asyncio.to_thread(policy_registry.promote, service.ledger.engine, name, body.version, gate=gate,
                                     force=body.force, reason=body.reason, actor=ACTOR)
    if result.changed:
        await _resync(request)
    return json_response(_promotion(result))


@router.post("/policies/{name}/rollback")
async def rollback(name: str, request: Request, body: Rollback | None = None):
    from router.lifecycle import registry as policy_registry

    engine = request.app.state.service.ledger.engine
    try:
        result = await asyncio.to_thread(policy_registry.rollback, engine, name, reason=body.reason if body else None,
                                         actor=ACTOR)
    except PolicyError as exc:
        raise InvalidRequestError(exc.message, param="name", code="nothing_to_roll_back") from None
    await _resync(request)
    return json_response(_promotion(result))


def _promotion(result) -> dict:
    return {"policy": result.policy, "action": result.action, "version": result.version, "previous": result.previous,
            "reason": result.reason, "forced": result.forced, "gate": result.gate,
            "at": datetime.now(UTC).isoformat()}
