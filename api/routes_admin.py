"""Admin API (bearer admin token): API keys. Thin routes over ``KeyStore``."""

from __future__ import annotations

import asyncio
import secrets
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.responses import json_response
from core.errors import AuthenticationError


def require_admin(request: Request) -> None:
    token = request.app.state.settings.admin_token
    if token is None:
        raise AuthenticationError("the admin API is disabled: start expertmux with EXPERTMUX_ADMIN_TOKEN set")
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not given or not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise AuthenticationError("missing or wrong admin token", code="invalid_admin_token")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


class CreateKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    tenant: str | None = None
    rpm_limit: int | None = Field(None, gt=0)
    tpm_limit: int | None = Field(None, gt=0)
    budget_usd_day: float | None = Field(None, gt=0)
    budget_usd_month: float | None = Field(None, gt=0)
    prompt_storage: Literal["full", "hash", "none"] | None = None


@router.post("/keys", status_code=201)
async def create_key(body: CreateKey, request: Request):
    key, secret = await asyncio.to_thread(request.app.state.service.keys.create, **body.model_dump())
    return json_response({**key.public(), "key": secret}, status_code=201)


@router.get("/keys")
async def list_keys(request: Request):
    keys = await asyncio.to_thread(request.app.state.service.keys.list)
    return json_response({"object": "list", "data": [k.public() for k in keys]})


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, request: Request):
    key = await asyncio.to_thread(request.app.state.service.keys.revoke, key_id=key_id)
    return json_response(key.public())
