"""A trained Router-R1 adapter served in-process (transformers + peft, CPU).

``expertmux train router-r1`` writes a PEFT LoRA adapter (safetensors) with a manifest. The
llama.cpp server cannot apply it (it loads LoRA only as GGUF, and this project has no
PEFT→GGUF converter), and applying it to a shared expert would change that expert's ordinary
answers too. So a configured ``adapter`` runs here, on the base model named in its manifest,
with the very rollout code training used (``policies.router_r1.lm.TokenRollout``: the same
demonstration, ``<think>`` prefill and thinking budget), greedy. Its steps are priced like
``router_expert`` (same base model) and recorded as attempts of ``router-r1``.

The artifact is verified (manifest, sha256 of every file) when the service starts; the model is
loaded on the first request (torch and transformers stay out of the proxy's start-up) and runs
one step at a time.
"""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

from core.errors import ConfigError, ExpertmuxError


class LocalRouter:
    def __init__(self, artifact: str | Path, *, data_dir: Path, root: Path, threads: int = 2) -> None:
        from policies.router_r1.train import TrainConfig, verify_router_artifact

        path = Path(artifact)
        if not path.is_absolute():
            path = root / path
        try:
            self.path, self.manifest = verify_router_artifact(path)
        except ExpertmuxError as exc:
            raise ConfigError(f"policy.options.router-r1.adapter: {exc.message}") from None
        hp = dict(self.manifest.get("hyperparameters") or {})
        self.config = TrainConfig(**{k: v for k, v in hp.items() if k in TrainConfig.__dataclass_fields__})
        self.version = str(self.manifest.get("version") or self.path.name)
        self.data_dir, self.threads = data_dir, threads
        self._model: tuple[Any, Any] | None = None
        self._load_lock = threading.Lock()
        self._step_lock: asyncio.Lock | None = None

    def _load(self) -> tuple[Any, Any]:
        with self._load_lock:
            if self._model is None:
                from policies.router_r1.lm import ensure_hf_model, load_model

                base = ensure_hf_model(self.manifest.get("base_model") or "smollm2-135m-instruct", data_dir=self.data_dir)
                self._model = load_model(base, adapter=self.path, threads=self.threads)
            return self._model

    async def rollout(self, names: list[str]):
        """A fresh token rollout for one request (the agent's ``generate``, run via ``step``)."""
        from policies.router_r1.lm import TokenRollout, demonstration

        tok, model = self._model or await asyncio.to_thread(self._load)
        cfg = self.config
        demo = demonstration(names, random.Random(cfg.seed)) if cfg.demonstration else None
        return TokenRollout(tok, model, max_new_tokens=cfg.max_new_tokens, greedy=True, demonstration=demo,
                            think_budget=cfg.think_budget or None)

    async def step(self, rollout, messages: list[dict[str, str]], stop: tuple[str, ...]) -> tuple[str, int, int]:
        """(text, prompt tokens, completion tokens) of one router step; one step at a time."""
        if self._step_lock is None:
            self._step_lock = asyncio.Lock()
        async with self._step_lock:
            before = len(rollout.completion_ids)
            text = await asyncio.to_thread(rollout, messages, stop)
        new = rollout.mask[before:]
        generated = sum(new)
        return text, len(rollout.prompt_ids) + before + (len(new) - generated), generated
