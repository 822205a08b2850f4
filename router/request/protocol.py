"""The OpenAI chat-completions request as expertmux accepts it, and its validation.

Parsing happens inside the service (not in FastAPI's request validation) so that a rejected
request still gets its ledger row.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import InvalidRequestError
from core.types import RoutingOptions, routed_text, transcript
from router.request.openai_schema import (
    ChatMessage,
    FunctionDef,
    FunctionName,
    ResponseFormat,
    Tool,
    ToolChoice,
    check_tool_choice,
)


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
    session_id: str | None = Field(None, min_length=1, max_length=256)  # the conversation or agent run (router/sessions)

    def to_options(self) -> RoutingOptions:
        return RoutingOptions(lambda_=self.lambda_, max_cost_usd=self.max_cost_usd,
                              allowed_experts=self.allowed_experts, max_params_b=self.max_params_b,
                              size_weight=self.size_weight, latency_weight=self.latency_weight,
                              recency_weight=self.recency_weight, max_latency_s=self.max_latency_s,
                              min_release_date=self.min_release_date.isoformat() if self.min_release_date else None)


class ChatCompletionRequest(BaseModel):
    """Every parameter of OpenAI's chat completions, plus the sampling extensions that vLLM and
    llama.cpp servers accept and ``expertmux`` (routing options). Anything else is a 400: OpenAI
    rejects unknown parameters too, and a misspelt one (``temprature``) silently ignored is a
    client's bug hidden."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None  # a dict: callers read it with .get
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, le=1)  # one answer per request: routing picks one expert
    stop: str | list[str] | None = Field(None, max_length=4)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[Annotated[str, Field(pattern=r"^\d{1,9}$")], Annotated[int, Field(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    seed: int | None = None
    user: str | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    functions: list[FunctionDef] | None = Field(None, max_length=128)  # deprecated form of tools
    function_call: Literal["none", "auto"] | FunctionName | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, Annotated[str, Field(max_length=512)]] | None = Field(None, max_length=16)
    store: bool | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    web_search_options: dict[str, Any] | None = None
    # sampling extensions of vLLM and llama.cpp servers (sent through the openai SDK's extra_body)
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0)
    min_tokens: int | None = Field(None, ge=0)
    ignore_eos: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    expertmux: RoutingOptionsIn | None = None

    @field_validator("messages")
    @classmethod
    def _some_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.text().strip() or m.has_attachments() or m.tool_calls for m in messages):
            raise ValueError("every message is empty; at least one message needs text content")
        return messages

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, options: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (options or {}).items():
            if key not in ("include_usage", "include_obfuscation"):
                raise ValueError(f"unknown option {key!r} (known: include_usage, include_obfuscation)")
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
        return options

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        check_tool_choice(self.tool_choice, self.tools)
        return self

    def turns(self) -> list[tuple[str, str]]:
        """(role, text) of every message."""
        return [(m.role, m.text()) for m in self.messages]

    def prompt_text(self) -> str:
        """The conversation as the ledger stores it (``role: text`` lines)."""
        return transcript(self.turns())

    def routed_text(self) -> str:
        """What the routing policy reads: the last user message's text (``core.types.routed_text``)."""
        return routed_text(self.turns())

    def upstream_payload(self) -> dict[str, Any]:
        """What is forwarded to the expert: the client's fields as sent, without routing-only ones."""
        payload = self.model_dump(exclude_none=True, by_alias=True,
                                  exclude={"model", "stream", "expertmux", "stream_options", "messages"})
        # exclude_unset, not exclude_none: an assistant's explicit "content": null stays
        payload["messages"] = [m.model_dump(exclude_unset=True, by_alias=True) for m in self.messages]
        return payload


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _location(loc: tuple[Any, ...]) -> str:
    """A field path without the union-branch tags pydantic adds (``content.str``, ``list[…]``)."""
    parts: list[str] = []
    for part in loc:
        if isinstance(part, str) and (part in _TYPE_TAGS or any(c in part for c in "[(-") or part.startswith("literal")):
            continue
        if isinstance(part, str) and parts and parts[-1] == part:  # a discriminator tag followed by its own field
            continue
        parts.append(str(part))
    return ".".join(parts)


def _describe(exc: ValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    # Of the branches of a union the deepest error is the one the input took (a list of parts is
    # wrong inside a part, not "not a string").
    first = max(errors, key=lambda e: len(e["loc"]))
    loc = _location(first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "missing":
        return f"missing required field '{loc}'", loc
    if first["type"] == "too_short" and loc == "messages":
        return "'messages' must contain at least one message", loc
    if first["type"] == "extra_forbidden":
        where = "a chat-completions parameter" if "." not in loc else "a field of this object"
        return f"unknown field '{loc}': not {where} (expertmux's own options go in 'expertmux')", loc
    if not loc:
        return msg, None
    extra = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
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


@dataclass(slots=True)
class ChatOutcome:
    """What a route needs to answer: a JSON body or an SSE byte stream, plus headers."""

    request_id: str
    expert: str
    policy: str
    body: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    policy_version: str | None = None  # the registry version that decided (a replica's swap is visible per response)

    @property
    def headers(self) -> dict[str, str]:
        out = {"x-expertmux-request-id": self.request_id, "x-expertmux-expert": self.expert,
               "x-expertmux-policy": self.policy}
        if self.policy_version:
            out["x-expertmux-policy-version"] = self.policy_version
        return out


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"
