"""Operations routes: a liveness probe anyone may call, and health details and Prometheus metrics
for the operator.

``/healthz`` says only whether this process can serve (load balancers and orchestrators call it
without credentials); it probes nothing upstream, so calling it is cheap and amplifies nothing.
``/healthz/details`` (each expert's liveness, breaker and load, the ledger backlog) and
``/metrics`` describe the deployment and its traffic: off loopback they need the metrics token
or the admin token (``EXPERTMUX_METRICS_AUTH``, ``EXPERTMUX_METRICS_TOKEN``).
"""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from api.responses import json_response
from core.errors import AuthenticationError

router = APIRouter()


def require_ops_token(request: Request) -> None:
    """Dependency of the operator's read-only routes."""
    settings = request.app.state.settings
    if not settings.metrics_auth_required:
        return
    tokens = [t.get_secret_value() for t in (settings.metrics_token, settings.admin_token) if t is not None]
    if not tokens:
        raise AuthenticationError(f"{request.url.path} needs a token: set EXPERTMUX_METRICS_TOKEN (or EXPERTMUX_ADMIN_TOKEN), "
                                  "or EXPERTMUX_METRICS_AUTH=false on a private network", code="invalid_metrics_token")
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip().encode() if auth.lower().startswith("bearer ") else b""
    # Every token is compared (no early exit): the time taken says nothing about which one matched.
    matches = [secrets.compare_digest(given, t.encode()) for t in tokens]
    if not given or not any(matches):
        raise AuthenticationError(f"missing or wrong token for {request.url.path}: send 'Authorization: Bearer <metrics token>' "
                                  "(or the admin token)", code="invalid_metrics_token")


@router.get("/healthz")
async def healthz(request: Request):
    up = request.app.state.runtime.alive()
    return json_response({"status": "ok" if up else "unavailable"}, status_code=200 if up else 503)


@router.get("/healthz/details", dependencies=[Depends(require_ops_token)])
async def health_details(request: Request):
    body, up = await request.app.state.runtime.health()
    return json_response(body, status_code=200 if up else 503)


@router.get("/metrics", dependencies=[Depends(require_ops_token)])
async def metrics(request: Request):
    return Response(request.app.state.runtime.render_metrics(), media_type="text/plain; version=0.0.4")
