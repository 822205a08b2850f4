"""Prompt templates: each model of the pair reads the conversation in its own format.

The generated text is shared; only the prompt differs per model. ``smollm2`` reproduces the
chat template embedded in SmolLM2's GGUF (ChatML with its default system prompt), ``gemma`` is
the turn format llama.cpp's server uses for Gemma (what the ``gemma3-270m`` expert answers
with), ``plain`` is a question/answer layout for base models without any chat format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from core.errors import ConfigError

SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def message_text(message: dict[str, Any]) -> str:
    """Content of an OpenAI message as text (a list of parts keeps its text parts)."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def _chatml(messages: list[dict[str, Any]], default_system: str | None = None) -> str:
    out = []
    if default_system and (not messages or messages[0].get("role") != "system"):
        out.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for m in messages:
        out.append(f"<|im_start|>{m.get('role', 'user')}\n{message_text(m)}<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def _gemma(messages: list[dict[str, Any]]) -> str:
    # Gemma has no system role: a system message is prefixed to the first user turn.
    system = "\n\n".join(message_text(m) for m in messages if m.get("role") == "system")
    out = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        text = message_text(m)
        if system and role == "user":
            text, system = f"{system}\n\n{text}", ""
        out.append(f"<start_of_turn>{'model' if role == 'assistant' else 'user'}\n{text}<end_of_turn>\n")
    out.append("<start_of_turn>model\n")
    return "".join(out)


def _plain(messages: list[dict[str, Any]]) -> str:
    lines = []
    for m in messages:
        role = m.get("role")
        text = message_text(m)
        lines.append(text if role == "system" else f"{'Answer' if role == 'assistant' else 'Question'}: {text}")
    return "\n".join(lines) + "\nAnswer:"


FORMATS: dict[str, Callable[[list[dict[str, Any]]], str]] = {
    "smollm2": lambda msgs: _chatml(msgs, SMOLLM2_SYSTEM),
    "chatml": _chatml,
    "gemma": _gemma,
    "plain": _plain,
}

# Known model files → their format; anything else must name one.
_BY_MODEL = (("smollm2", "smollm2"), ("gemma", "gemma"), ("qwen", "chatml"))


def default_format(model: str) -> str:
    low = model.lower()
    for key, fmt in _BY_MODEL:
        if key in low:
            return fmt
    return "chatml"


def render(fmt: str, messages: list[dict[str, Any]]) -> str:
    try:
        return FORMATS[fmt](messages)
    except KeyError:
        raise ConfigError(f"unknown prompt format {fmt!r}; known: {', '.join(FORMATS)}") from None
