"""The router model in-process (transformers): loading, and token-exact multi-turn rollouts.

Training needs the exact tokens the policy sampled, and which of them it sampled: a rollout is
one token sequence ``prompt_ids + completion_ids`` where ``mask`` is 1 on the router's own tokens
and 0 on what the environment inserted (``<information>`` turns, corrections, chat-template
glue, the ``<think>`` prefill). ``TokenRollout`` plugs into ``RouterR1Agent`` as its
``generate`` callable: it never re-tokenises earlier turns, it appends the new user turn's
tokens to the running sequence and samples the next step from there.

Default model: SmolLM2-135M-Instruct in HF format (``var/models/smollm2-135m-instruct-hf``,
converted from the packaged GGUF by ``core/convert_gguf.py``, the Makefile's ``vllm-env``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.model_files import resolve_gguf

DEFAULT_MODEL = "smollm2-135m-instruct"
PREFILL = "<think>"  # opens every router step, as R1-style templates do: the model continues its thoughts


def ensure_hf_model(model: str | Path, *, data_dir: Path) -> Path:
    """An HF model folder for ``model``: a folder as is, else the packaged GGUF converted once
    under ``<data_dir>/models/<name>-hf`` (the same conversion the vLLM expert uses)."""
    path = Path(model)
    if path.is_dir() and (path / "config.json").exists():
        return path
    name = path.stem if path.suffix == ".gguf" else str(model)
    target = data_dir / "models" / f"{name}-hf"
    if (target / "config.json").exists():
        return target
    from core.convert_gguf import convert

    return convert(resolve_gguf(str(model), data_dir=data_dir), target, dtype="float32")


def load_model(path: Path, *, adapter: Path | None = None, threads: int = 1, device: str = "cpu"):
    """(tokenizer, model) — float32 on CPU, bfloat16 on a GPU — with a LoRA adapter when given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if device == "cpu" else torch.bfloat16).to(device)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return tok, model


def demonstration(names: list[str], rng) -> list[dict[str, str]]:
    """A worked example (one search, then adopting the reply), with experts drawn at random from
    ``names`` so the example favours none: small routers copy the format from it."""
    first = rng.choice(names)
    return [
        {"role": "user", "content": "Example question: What is 12 + 30?"},
        {"role": "assistant",
         "content": f"<think>Simple arithmetic; a cheap expert should do.</think><search>{first}: What is 12 + 30?</search>"},
        {"role": "user",
         "content": f"<information>{first} replied. Answer with its name to adopt its reply, or ask another expert.</information>"},
        {"role": "assistant", "content": f"<think>I adopt its reply.</think><answer>{first}</answer>"},
    ]


class _StopOnText:
    """Stopping criterion: the decoded tail of the sample contains a stop sequence (cheaper
    than transformers' ``stop_strings``, which preprocesses the whole vocabulary per call)."""

    def __init__(self, tok, start: int, stops: tuple[str, ...]) -> None:
        self.tok, self.start, self.stops = tok, start, stops

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        tail = self.tok.decode(input_ids[0, max(self.start, input_ids.shape[1] - 12):])
        return torch.tensor([any(s in tail for s in self.stops)], dtype=torch.bool)


class TokenRollout:
    """One episode's token sequence; call it as the agent's ``generate(messages, stop)``."""

    def __init__(self, tok, model, *, max_new_tokens: int = 48, temperature: float = 1.0, greedy: bool = False,
                 prefill: str = PREFILL, max_total_tokens: int = 1536, demonstration: list[dict[str, str]] | None = None,
                 think_budget: int | None = 24) -> None:
        self.tok, self.model = tok, model
        self.demonstration = list(demonstration or [])
        self.think_budget = think_budget
        self.max_new_tokens, self.temperature, self.greedy = max_new_tokens, temperature, greedy
        self.prefill_ids = tok(prefill, add_special_tokens=False)["input_ids"] if prefill else []
        self.prefill = prefill
        self.max_total_tokens = max_total_tokens
        if "<|im_start|>" not in tok.get_vocab():
            raise ValueError("the router model must use a ChatML chat template (<|im_start|>…), as SmolLM2 and Qwen2.5 do")
        self.prompt_ids: list[int] = []
        self.completion_ids: list[int] = []
        self.mask: list[int] = []

    def _extend(self, ids: list[int], mask: int) -> None:
        self.completion_ids += ids
        self.mask += [mask] * len(ids)

    def _open(self, messages: list[dict[str, str]]) -> None:
        if not self.prompt_ids:
            # the demonstration goes between the protocol (system) and the question
            messages = [*messages[:1], *self.demonstration, *messages[1:]]
            ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
            self.prompt_ids = list(ids["input_ids"]) + self.prefill_ids
            return
        # a later step: close the last assistant turn, add the service's user turn, reopen
        ended = bool(self.completion_ids) and self.completion_ids[-1] == self.tok.eos_token_id
        glue = ("\n" if ended else "<|im_end|>\n") + f"<|im_start|>user\n{messages[-1]['content']}<|im_end|>\n<|im_start|>assistant\n"
        self._extend(self.tok(glue, add_special_tokens=False)["input_ids"] + self.prefill_ids, 0)

    def _sample(self, ids: list[int], budget: int, stop: tuple[str, ...]) -> list[int]:
        import torch

        x = torch.tensor([ids], device=self.model.device)
        kwargs: dict[str, Any] = ({"do_sample": False} if self.greedy else
                                  {"do_sample": True, "temperature": self.temperature, "top_p": 1.0, "top_k": 0})
        with torch.no_grad():
            out = self.model.generate(
                x, attention_mask=torch.ones_like(x), max_new_tokens=budget,
                stopping_criteria=[_StopOnText(self.tok, len(ids), stop)], pad_token_id=self.tok.pad_token_id,
                eos_token_id=self.tok.eos_token_id, **kwargs)
        return out[0, len(ids):].tolist()

    def __call__(self, messages: list[dict[str, str]], stop: tuple[str, ...]) -> str:
        self._open(messages)
        start = len(self.completion_ids)
        budget = min(self.max_new_tokens, self.max_total_tokens - len(self.prompt_ids) - start)
        if budget <= 0:
            raise RuntimeError("the conversation no longer fits the router's context")
        if self.think_budget and self.prefill == PREFILL:
            # thinking budget: the thoughts end at </think> or after think_budget tokens, where
            # the environment closes them (not trained on), so a rambling thought cannot eat the step
            new = self._sample(self.prompt_ids + self.completion_ids, min(self.think_budget, budget), ("</think>",))
            self._extend(new, 1)
            if "</think>" not in self.tok.decode(new) and (not new or new[-1] != self.tok.eos_token_id):
                self._extend(self.tok("</think>", add_special_tokens=False)["input_ids"], 0)
            budget -= len(new)

        if budget > 0 and (len(self.completion_ids) == start or self.completion_ids[-1] != self.tok.eos_token_id):
            self._extend(self._sample(self.prompt_ids + self.completion_ids, budget, stop), 1)
        return self.prefill + self.tok.decode(self.completion_ids[start:], skip_special_tokens=True)
