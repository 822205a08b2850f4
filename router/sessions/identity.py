"""Which session a request belongs to, and what its messages say about the session.

Messages are read by their attributes (``role``, ``text()``, ``tool_calls``, ``function_call``),
as the request path parses them (``router.request.openai_schema.ChatMessage``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson


def session_key(*, api_key_id: str | None, explicit: str | None, user: str | None, messages: Sequence[Any],
                from_user: bool = True, from_prefix: bool = True) -> str | None:
    """The stored id of the request's session, or None when it names none and may not be derived.

    Without an explicit id or a ``user``, the session is the conversation's opening: the system
    (developer) messages before the first user message and that message, which every later turn
    repeats. Two conversations that open alike share a session (clients that care send an id).
    Ids are namespaced by API key (two keys never share a session) and hashed: a ``user`` value
    or a prompt never reaches the ledger in clear.
    """
    if explicit:
        source = "id\x1f" + explicit
    elif from_user and user:
        source = "user\x1f" + user
    elif from_prefix:
        opening = []
        for m in messages:
            if m.role in ("system", "developer"):
                opening.append(f"{m.role}:{m.text()}")
            elif m.role == "user":
                opening.append(f"user:{m.text()}")
                break
        else:
            return None
        source = "prefix\x1f" + "\x1e".join(opening)
    else:
        return None
    digest = hashlib.sha256(f"{api_key_id or '-'}\x1f{source}".encode()).hexdigest()
    return "s-" + digest[:30]


def _signature(message: Any) -> bytes | None:
    calls = getattr(message, "tool_calls", None)
    if calls:
        return orjson.dumps(sorted((c.function.name, _normalised(c.function.arguments)) for c in calls))
    fc = getattr(message, "function_call", None)
    if fc is not None:
        return orjson.dumps([(fc.name, _normalised(fc.arguments))])
    return None


def _normalised(arguments: str) -> str:
    """Arguments as JSON with sorted keys, so ``{"a":1,"b":2}`` repeats ``{"b": 2, "a": 1}``."""
    try:
        return orjson.dumps(orjson.loads(arguments), option=orjson.OPT_SORT_KEYS).decode()
    except orjson.JSONDecodeError:
        return arguments.strip()


def tool_loop(messages: Sequence[Any]) -> int:
    """How many times the conversation's latest tool call (same tools, same arguments) was made
    in a row by the assistant. Tool results in between do not break the run; an assistant turn
    without a tool call, or a different call, does. 0 when the last assistant turn called none."""
    run, last = 0, None
    for message in reversed(messages):
        if message.role != "assistant":
            continue
        sig = _signature(message)
        if sig is None or (last is not None and sig != last):
            break
        run, last = run + 1, sig
    return run
