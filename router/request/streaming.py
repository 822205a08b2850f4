"""Relaying an expert's stream to the client, and what happens when the expert dies mid-stream.

Before the first chunk a failing expert is simply replaced by the next one of the ranking
(``RoutingService._first_chunk``). After it, the client already holds part of the answer: with
``stream_resume`` on, the next expert is sent the conversation plus the partial answer and asked
to continue it, and its chunks carry on in the same stream (same id, no second role delta);
otherwise the stream ends with one clean SSE error event. Either way the failed attempt's row
records the tokens of the partial answer (counted with the expert's tokenizer, since no usage
arrived) and its cost, and, when prompts are stored in full, the partial text itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from core.errors import ExpertError, ExpertmuxError
from experts import client
from experts.registry import Expert
from router.request.protocol import sse
from router.request.trace import AttemptTrace, RequestTrace

if TYPE_CHECKING:
    from router.request.service import RoutingService

CONTINUE_PROMPT = ("Your previous answer was cut off. Continue it exactly where it stopped, "
                   "without repeating anything and without any preamble.")
PARTIAL_TEXT_CHARS = 4000  # the partial answer kept in the failed attempt's usage_details


def continuation_payload(payload: dict[str, Any], partial: str) -> dict[str, Any]:
    """The request a fallback expert continues from: the conversation, the partial answer, a nudge."""
    messages = [*payload["messages"], {"role": "assistant", "content": partial}, {"role": "user", "content": CONTINUE_PROMPT}]
    return {**payload, "messages": messages}


def usage_chunk(like: dict[str, Any], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    """The final usage-only chunk (``stream_options.include_usage``) for upstreams that send none."""
    return {"id": like.get("id"), "object": "chat.completion.chunk", "created": like.get("created"),
            "model": like.get("model"), "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def record_partial(attempt: AttemptTrace, expert: Expert, payload: dict[str, Any], partial: str, *, keep_text: bool) -> None:
    """What a stream that broke after its first chunk cost: the partial answer's tokens."""
    attempt.prompt_tokens = client.count_tokens(expert, messages=payload["messages"])
    attempt.completion_tokens = client.count_tokens(expert, text=partial) if partial else 0
    attempt.cost_usd = expert.cost_usd(attempt.prompt_tokens, attempt.completion_tokens)
    details: dict[str, Any] = {"partial": True, "partial_chars": len(partial)}
    if keep_text:
        details["partial_answer"] = partial[:PARTIAL_TEXT_CHARS]
    attempt.usage_details = details


async def relay(service: RoutingService, trace: RequestTrace, expert: Expert, attempt: AttemptTrace,
                payload: dict[str, Any], first: dict[str, Any], chunks: AsyncIterator[dict[str, Any]],
                include_usage: bool) -> AsyncIterator[bytes]:
    """SSE bytes of the answer; records the request when the stream ends, however it ends."""
    text: list[str] = []  # the answer the client has received, over every expert that served part of it
    tried = {expert.name}
    stream_id, call_payload, resumed = first.get("id"), payload, False
    try:
        while True:
            usage: dict[str, Any] = {}
            details: dict[str, Any] = {}
            piece: list[str] = []  # this attempt's share of the answer
            saw_usage = False
            try:
                chunk: dict[str, Any] | None = first
                while chunk is not None:
                    if chunk.get("usage"):
                        usage, saw_usage = {**chunk["usage"], **details}, True
                    if "usage_details" in chunk:  # expertmux backends' extras; not part of the OpenAI schema
                        details = chunk.pop("usage_details") or {}
                        usage = {**usage, **details}
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        piece.append(delta.get("content") or "")
                        text.append(piece[-1])
                        if resumed:
                            delta.pop("role", None)  # the client's message has begun already
                    if resumed:
                        chunk["id"] = stream_id
                    if chunk.get("choices") or (include_usage and not resumed):
                        if not include_usage:
                            chunk.pop("usage", None)
                        yield sse(chunk)
                    chunk = await anext(chunks, None)
            except ExpertError as exc:  # the expert failed after its first byte
                service._attempt_failed(attempt, exc)
                record_partial(attempt, expert, call_payload, "".join(piece), keep_text=trace.prompt_text is not None)
                nxt = await _resume(service, trace, payload, "".join(text), tried) if service.settings.stream_resume else None
                if nxt is None:
                    raise
                expert.in_flight -= 1
                await chunks.aclose()
                expert, attempt, call_payload, first, chunks = nxt
                tried.add(expert.name)
                resumed = True
                continue
            service._attempt_ok(attempt, expert, call_payload, usage, "".join(piece))
            if resumed:
                attempt.answer = "".join(text) if service.finish_hooks else None
            if include_usage and (resumed or not saw_usage):  # our count: the upstream's covers its own part only
                prompt = sum(a.prompt_tokens for a in trace.attempts)
                completion = sum(a.completion_tokens for a in trace.attempts)
                yield sse(usage_chunk({**first, "id": stream_id}, prompt, completion))
            break
        trace.status, trace.http_status = "ok", 200
        yield b"data: [DONE]\n\n"
    except ExpertmuxError as exc:  # failure after the first byte: end the stream with an error event
        if attempt.status == "pending":
            service._attempt_failed(attempt, exc)
        trace.fail(exc, "error")
        trace.error = exc.operator_message
        yield sse({"error": {"message": exc.message, "type": exc.error_type, "code": exc.code, "param": None}})
    except BaseException as exc:  # client went away (cancellation / generator close)
        if attempt.status == "pending":
            service._attempt_failed(attempt, exc)
        trace.fail(exc, "client_disconnected")
        raise
    finally:
        expert.in_flight -= 1
        await chunks.aclose()
        service._finish(trace)


async def _resume(service: RoutingService, trace: RequestTrace, payload: dict[str, Any], partial: str,
                  tried: set[str]) -> tuple[Expert, AttemptTrace, dict[str, Any], dict[str, Any], AsyncIterator[dict[str, Any]]] | None:
    """The next expert of the ranking, already streaming its continuation; None if none can."""
    cont = continuation_payload(payload, partial)
    try:
        expert, attempt, first, chunks = await service._first_chunk(trace, cont, skip=tried)
    except ExpertError:
        return None
    return expert, attempt, cont, first, chunks
