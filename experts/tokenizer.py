"""A local expert's own prompt-token count: its GGUF's chat template and vocabulary.

Budget reservations need an upper bound on what the upstream will bill. For a llama.cpp expert
the proxy has the very file the server runs, so it can count exactly what the server will: the
messages rendered with the GGUF's chat template (default system prompt and role markers
included) and tokenized with its vocabulary. Loading the vocabulary alone takes about half a
second once per expert (no weights); a count then takes well under a millisecond.

Only the plain case is counted: string contents, no tools, and a server that uses the GGUF's
template (no ``chat_format`` override). Anything else returns None and the caller falls back
to its conservative estimate — an exact count of the wrong template would be an under-count.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.model_files import resolve_gguf
from experts.registry import Expert

log = logging.getLogger("expertmux.experts")

SLACK_TOKENS = 4  # a BOS token the server adds, a trailing newline a template version adds


class GgufChatCounter:
    """Prompt tokens of a chat request as a llama.cpp server running this GGUF counts them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._llm: Any = None
        self._format: Any = None

    def _load(self) -> None:
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llm = llama_cpp.Llama(model_path=str(self.path), vocab_only=True, verbose=False)
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{self.path.name} has no chat template")
        model = llm._model
        self._format = Jinja2ChatFormatter(template, eos_token=model.token_get_text(llm.token_eos()),
                                           bos_token=model.token_get_text(llm.token_bos()))
        self._llm = llm

    def count(self, messages: list[dict[str, Any]]) -> int:
        with self._lock:  # llama.cpp's tokenizer is not documented as thread-safe
            if self._llm is None:
                self._load()
            prompt = self._format(messages=messages).prompt
            return len(self._llm.tokenize(prompt.encode(), add_bos=True, special=True)) + SLACK_TOKENS


def countable(payload: dict[str, Any]) -> bool:
    """True when a GGUF template renders everything the request sends (plain text messages)."""
    if payload.get("tools") or payload.get("functions"):
        return False
    return all(set(m) <= {"role", "content"} and isinstance(m.get("content"), str) for m in payload.get("messages", ()))


def chat_counter(expert: Expert, *, data_dir: Path) -> GgufChatCounter | None:
    """The counter of a llama.cpp expert that serves its GGUF's own template, else None."""
    cfg = expert.config
    if cfg.backend != "llamacpp" or not cfg.chat or cfg.llamacpp.chat_format:
        return None
    try:
        path = resolve_gguf(cfg.model, data_dir=data_dir, model_path=cfg.llamacpp.model_path)
    except ConfigError as exc:
        log.info("no local tokenizer for expert %s: %s", cfg.name, exc.message)
        return None
    return GgufChatCounter(path)
