"""Routing over time in the dashboard's JSON API (``/admin/api/...``): switches per session, each
paced budget's spend against its pacing line, and the shadow record of candidate policies. Thin
routes over ``router.sessions.queries``, ``router.pacing.pacer`` and ``router.shadow.evidence``;
authentication: ``api.dashboard_auth``."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter, Depends, Query, Request

from api.dashboard_auth import require_dashboard
from api.responses import json_response
from router.dashboard.windows import Window

router = APIRouter(prefix="/admin/api", dependencies=[Depends(require_dashboard)], include_in_schema=False)


def _over_time(request: Request):
    return request.app.state.service.over_time


@router.get("/sessions")
async def sessions(request: Request, since: datetime | None = None, until: datetime | None = None,
                   hours: float | None = Query(None, gt=0, le=24 * 366), limit: int = Query(50, ge=1, le=1000)):
    """Sessions with requests in the window: switches per session, most switches first."""
    from router.sessions.queries import switches_per_session

    w = Window.last(hours, now=until) if hours is not None and since is None else Window.of(since, until)
    ot = _over_time(request)
    body = await asyncio.to_thread(switches_per_session, request.app.state.service.ledger.engine, since=w.since,
                                   until=w.until, limit=limit)
    return json_response({"enabled": ot is not None and ot.sessions is not None, **body})


@router.get("/pacing")
async def pacing(request: Request):
    """Every paced budget: spend, the pacing line (planned spend by now) and λ, with their history."""
    ot = _over_time(request)
    if ot is None or ot.pacer is None:
        return json_response({"enabled": False, "scopes": []})
    return json_response({"enabled": True, "scopes": ot.pacer.status()})


@router.get("/shadow")
async def shadow(request: Request, since: datetime | None = None):
    """The shadow log per candidate version: agreement, calls, blind judgements, cost."""
    from router.shadow.evidence import summary

    ot = _over_time(request)
    runner = ot.shadow if ot is not None else None
    rows = await asyncio.to_thread(summary, request.app.state.service.ledger.engine, since=since)
    live = None if runner is None else {"policy": runner.name, "version": runner.version, "counts": runner.counts,
                                         "spent_today_usd": runner.spent_today}
    return json_response({"enabled": runner is not None, "live": live, "candidates": rows})
