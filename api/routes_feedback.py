"""``POST /v1/feedback``: rate an answered request. Thin route over ``router.learning.feedback``."""

from __future__ import annotations

import secrets
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from api.responses import json_response

router = APIRouter()


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=64, description="the x-expertmux-request-id header of the response")
    score: float | None = Field(None, strict=True, description="quality in [0, 1]; or give thumbs")
    thumbs: Literal["up", "down"] | None = None
    source: Literal["user", "judge", "auto"] = "user"
    comment: str | None = Field(None, max_length=10_000)


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() or None if auth.lower().startswith("bearer ") else None


def _is_admin(request: Request, given: str | None) -> bool:
    token = request.app.state.settings.admin_token
    return bool(given and token is not None and secrets.compare_digest(given.encode(), token.get_secret_value().encode()))


@router.post("/v1/feedback", status_code=201)
async def create_feedback(body: FeedbackIn, request: Request):
    given = _bearer(request)
    feedback = await request.app.state.feedback.submit(
        request_id=body.request_id, score=body.score, thumbs=body.thumbs, source=body.source, comment=body.comment,
        api_key=given, admin=_is_admin(request, given))
    return json_response(feedback.public(), status_code=201)
