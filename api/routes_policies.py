"""Admin API for routing policies (bearer admin token): what is served, the Pareto front of a
prompt, and hot reload of a learned policy's artifact. Thin routes over ``PolicySet``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.responses import json_response
from api.routes_admin import require_admin
from core.errors import InvalidRequestError, PolicyError
from core.types import RouteRequest, RoutingOptions
from router.request.protocol import RoutingOptionsIn

router = APIRouter(prefix="/admin/policies", dependencies=[Depends(require_admin)])


class ParetoQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=200_000)
    max_tokens: int | None = Field(None, ge=1)
    expertmux: RoutingOptionsIn | None = None


class Reload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    artifact: str | None = Field(None, min_length=1, description="artifact folder; default: the configured one")


@router.get("")
async def list_policies(request: Request):
    policies = request.app.state.service.policies
    return json_response({"object": "list", "active": policies.active_name, "lambda": policies.default_lambda,
                          "data": policies.status()})


@router.post("/{name}/pareto")
async def pareto_front(name: str, body: ParetoQuery, request: Request):
    """Every candidate expert's predicted quality, cost and utility for this prompt, the
    non-dominated ones (the front) and the expert the policy would choose."""
    service = request.app.state.service
    options = body.expertmux.to_options() if body.expertmux else RoutingOptions()
    expected = {e.name: service.load.expected_s(e.name, e.in_flight, e.slots) for e in service.experts}
    route_req = RouteRequest(prompt=body.prompt, prompt_tokens=len(body.prompt) // 4 + 1,
                             max_completion_tokens=body.max_tokens or service.settings.default_max_tokens,
                             options=options, expected_latency_s=expected)
    front = await asyncio.to_thread(service.policies.pareto, name, route_req, unavailable=service.experts.unavailable())
    return json_response(front)


@router.post("/{name}/reload")
async def reload_policy(name: str, request: Request, body: Reload | None = None):
    """Load the policy's artifact again (or another one) and swap it in once it is ready; a
    missing or corrupted artifact is refused and the policy being served stays."""
    policies = request.app.state.service.policies
    try:
        status = await asyncio.to_thread(policies.reload, name, body.artifact if body else None)
    except PolicyError as exc:
        raise InvalidRequestError(exc.message, param="artifact", code="invalid_policy_artifact") from None
    return json_response(status)
