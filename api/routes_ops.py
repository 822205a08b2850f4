"""Operations routes: health and Prometheus metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.responses import json_response
from experts.breaker import STATE_VALUE

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request):
    service = request.app.state.service
    experts = list(service.experts)
    ups = await asyncio.gather(*(asyncio.to_thread(e.backend.health, 1.0) for e in experts))
    for e, up in zip(experts, ups):
        service.metrics.expert_up.labels(e.name).set(1 if up else 0)
    body = {
        "status": "ok" if any(ups) else "degraded",
        "experts": {e.name: {"up": up, "backend": e.config.backend, "in_flight": e.in_flight, "breaker": e.breaker.state}
                    for e, up in zip(experts, ups)},
        "policy": service.policies.active_name,
        "ledger": {"pending": service.ledger.pending, "written": service.ledger.rows_written,
                   "spooled_files": service.ledger.spooled_files(), "write_failures": service.ledger.write_failures},
    }
    return json_response(body, status_code=200 if any(ups) else 503)


@router.get("/metrics")
async def metrics(request: Request):
    service = request.app.state.service
    m = service.metrics
    m.ledger_pending.set(service.ledger.pending)
    m.ledger_written.set(service.ledger.rows_written)
    for e in service.experts:
        m.in_flight.labels(e.name).set(e.in_flight)
        m.breaker_state.labels(e.name).set(STATE_VALUE[e.breaker.state])
    return Response(m.render(), media_type="text/plain; version=0.0.4")
