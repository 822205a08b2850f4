"""The OpenAI chat-completions request as expertmux accepts it, and its validation.

Parsing happens inside the service (not in FastAPI's request validation) so that a rejected
request still gets its ledger row.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from router.errors import InvalidRequestError
from router.types import RoutingOptions


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if isinstance(self.content, list):
            return "\n".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return ""


class RoutingOptionsIn(BaseModel):
    """The extra body field ``expertmux`` (ignored by clients that do not send it)."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    lambda_: float | None = Field(None, alias="lambda", ge=0)
    max_cost_usd: float | None = Field(None, gt=0)
    allowed_experts: list[str] | None = Field(None, min_length=1)
    max_params_b: float | None = Field(None, gt=0)
    # User-weighted constraints (quality points given up per unit) and hard limits; see RoutingOptions.
    size_weight: float | None = Field(None, ge=0)
    latency_weight: float | None = Field(None, ge=0)
    recency_weight: float | None = Field(None, ge=0)
    max_latency_s: float | None = Field(None, gt=0)
    min_release_date: date | None = Field(None, strict=False)

    def to_options(self) -> RoutingOptions:
        return RoutingOptions(lambda_=self.lambda_, max_cost_usd=self.max_cost_usd,
                              allowed_experts=self.allowed_experts, max_params_b=self.max_params_b,
                              size_weight=self.size_weight, latency_weight=self.latency_weight,
                              recency_weight=self.recency_weight, max_latency_s=self.max_latency_s,
                              min_release_date=self.min_release_date.isoformat() if self.min_release_date else None)


class ChatCompletionRequest(BaseModel):
    # Unknown OpenAI parameters (seed, presence_penalty, …) are kept and forwarded.
    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=1)
    stop: str | list[str] | None = None
    stream_options: dict[str, Any] | None = None
    expertmux: RoutingOptionsIn | None = None

    @field_validator("messages")
    @classmethod
    def _some_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.text().strip() for m in messages):
            raise ValueError("every message is empty; at least one message needs text content")
        return messages

    def prompt_text(self) -> str:
        return "\n".join(f"{m.role}: {m.text()}" for m in self.messages)

    def upstream_payload(self) -> dict[str, Any]:
        """What is forwarded to the expert: OpenAI fields, without routing-only ones."""
        payload = self.model_dump(exclude_none=True, exclude={"model", "stream", "expertmux", "stream_options"})
        payload["messages"] = [m.model_dump(exclude_none=True) for m in self.messages]
        return payload


def _describe(exc: ValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "missing":
        return f"missing required field '{loc}'", loc
    if first["type"] == "too_short" and loc == "messages":
        return "'messages' must contain at least one message", loc
    if first["type"] == "extra_forbidden":
        return f"unknown field '{loc}'", loc
    msg = msg.removeprefix("Value error, ")
    extra = f" (and {len(exc.errors()) - 1} more problems)" if len(exc.errors()) > 1 else ""
    return f"invalid value for '{loc}': {msg}{extra}", loc


def parse_chat_request(body: bytes) -> ChatCompletionRequest:
    if not body:
        raise InvalidRequestError("request body is empty; expected a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        message, param = _describe(exc)
        raise InvalidRequestError(message, param=param) from None
