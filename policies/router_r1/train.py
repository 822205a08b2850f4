"""Train the Router-R1 router with GRPO (TRL) and LoRA (peft) on multi-round episodes.

TRL's ``GRPOTrainer`` does the optimisation (group-normalised advantages, the clipped policy
loss, LoRA through ``peft_config``); the episodes come from ``rollout_func``, TRL's hook for
custom generation: each episode is a full ``RouterR1Agent`` run against an environment (the
routing matrix, or live experts), recorded token-exactly by ``TokenRollout``, with
``env_mask`` = 0 on the tokens the environment inserted so only the router's own tokens are
trained. The reward is ``reward.router_reward`` (format + outcome + α·cost) computed by the
environment and handed to TRL as the one reward function. TRL's built-in multi-turn paths
(``tools`` / ``environment_factory``) parse JSON tool calls from a chat template that declares
tools, which SmolLM2's template does not, and which the ``<search>`` protocol is not.

The artifact (``save_router_artifact``): ``adapter_model.safetensors`` + ``adapter_config.json``
(peft's format) and ``manifest.json`` with hyperparameters, data fingerprint, metrics, the reward
curve and the sha256 of every file; ``verify_router_artifact`` checks them before any load.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from core.errors import PolicyError
from policies.artifacts import new_version, sha256_file, versions
from policies.router_r1.agent import AgentConfig, AgentResult, RouterR1Agent
from policies.router_r1.lm import TokenRollout, demonstration

POLICY = "router-r1"
FORMAT = "expertmux.router-r1-adapter"
MANIFEST = "manifest.json"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


class Environment(Protocol):
    """What training and evaluation need from an environment (matrix or live)."""

    candidates: list
    fingerprint: str

    def __len__(self) -> int: ...
    def question(self, i: int) -> str: ...
    def call_expert(self, i: int) -> Callable: ...
    def outcome(self, i: int, result: AgentResult, *, alpha: float, pool: Sequence[str] | None = None) -> Any: ...


@dataclass
class TrainConfig:
    steps: int = 4
    alpha: float = 0.2
    lora_r: int = 8
    lora_alpha: int = 16
    learning_rate: float = 2e-4
    prompts_per_step: int = 2
    num_generations: int = 4
    max_rounds: int = 2
    max_retries: int = 0
    max_new_tokens: int = 32  # per step, thoughts included
    think_budget: int = 12  # thoughts are closed after this many tokens (0: no budget)
    temperature: float = 1.0
    seed: int = 0
    threads: int = 1
    device: str = "cpu"  # "cuda" for the GPU configuration (bfloat16)
    gradient_accumulation_steps: int = 1
    demonstration: bool = False  # a worked example before the question
    warmup_learning_rate: float = 1e-3
    warmup_steps: int = 30  # supervised format warm-up on scripted trajectories before GRPO (0: pure RL)
    init_adapter: str = ""  # continue from this router-r1 artifact's adapter (verified), instead of a fresh LoRA
    pool_size: int = 0  # training episodes offer a random subset of this many candidates, in random order (0: all)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def agent_config(self) -> AgentConfig:
        return AgentConfig(max_rounds=self.max_rounds, max_retries=self.max_retries)


@dataclass
class Episode:
    """One rollout: its tokens (for the trainer) and how it scored."""

    prompt_ids: list[int]
    completion_ids: list[int]
    mask: list[int]
    result: AgentResult
    outcome: Any


def candidate_pool(env: Environment, i: int, cfg: TrainConfig) -> list:
    """The candidates offered on row ``i`` in training: all of them, or (``pool_size``) a random
    subset in random order, fixed per row so that a GRPO group shares it. The router can then
    not memorise one name or position; it has to read the list it is given."""
    if not 0 < cfg.pool_size < len(env.candidates):
        return list(env.candidates)
    return random.Random(f"{cfg.seed}:pool:{i}").sample(list(env.candidates), k=cfg.pool_size)


def run_episode(env: Environment, i: int, tok, model, cfg: TrainConfig, *, greedy: bool = False,
                rng: random.Random | None = None, candidates: Sequence | None = None) -> Episode:
    """One episode on row ``i``, offering ``candidates`` (default: every candidate of ``env``)."""
    rng = rng or random.Random(f"{cfg.seed}:{i}")
    offered = list(candidates) if candidates is not None else list(env.candidates)
    demo = demonstration([c.name for c in offered], rng) if cfg.demonstration else None
    rollout = TokenRollout(tok, model, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, greedy=greedy,
                           demonstration=demo, think_budget=cfg.think_budget or None)
    agent = RouterR1Agent(offered, rollout, env.call_expert(i), cfg.agent_config())
    result = agent.run_sync(env.question(i))
    pool = [c.name for c in offered] if candidates is not None else None
    return Episode(rollout.prompt_ids, rollout.completion_ids or [tok.eos_token_id], rollout.mask or [0], result,
                   env.outcome(i, result, alpha=cfg.alpha, pool=pool))


@dataclass
class History:
    """Per optimisation step: mean reward, share well formed, mean quality, mean calls."""

    rows: list[dict[str, float]] = field(default_factory=list)
    warmup_loss: list[float] = field(default_factory=list)

    def add(self, episodes: Sequence[Episode]) -> dict[str, float]:
        n = len(episodes)
        row = {"step": len(self.rows) + 1,
               "reward": sum(e.outcome.reward.total for e in episodes) / n,
               "well_formed": sum(e.outcome.well_formed for e in episodes) / n,
               "quality": sum(e.outcome.quality for e in episodes) / n,
               "calls": sum(e.outcome.n_calls for e in episodes) / n}
        # which expert the episodes adopted: the routing the RL stage shifts, step by step
        for e in episodes:
            key = f"share:{e.outcome.adopted or '(none)'}"
            row[key] = row.get(key, 0.0) + 1.0 / n
        self.rows.append(row)
        return row


def format_warmup(model, tok, env: Environment, cfg: TrainConfig, *, on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Teach the protocol, not the routing: a few supervised steps on scripted well-formed
    trajectories (one search to a UNIFORMLY random candidate, then adopting it), loss on the
    router's tokens only. A 135M router almost never writes a well-formed episode unaided, and
    GRPO learns nothing from a group whose episodes all earn the same −1; which expert to call
    is left entirely to the RL stage (the scripted choice favours none)."""
    import torch

    from policies.router_r1 import prompt as P
    from policies.router_r1.protocol import Answer, Search, render_step

    rng = random.Random(cfg.seed + 1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.warmup_learning_rate)
    model.train()
    losses = []
    for step in range(cfg.warmup_steps):
        i = rng.randrange(len(env))
        offered = candidate_pool(env, i, cfg)
        name = rng.choice(offered).name
        question = env.question(i)
        messages = P.build_messages(question, offered, max_rounds=cfg.max_rounds)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        ids, labels = list(ids), [-100] * len(ids)
        info = P.information_turn(env.call_expert(i)(name, question).text)
        turns = [(render_step(Search(name, question[:80], ("I ask an expert.",))), True),
                 (f"<|im_end|>\n<|im_start|>user\n{info}<|im_end|>\n<|im_start|>assistant\n", False),
                 (render_step(Answer(name, ("I adopt its reply.",))) + "<|im_end|>", True)]
        for text, trained in turns:
            piece = tok(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if trained else [-100] * len(piece)
        out = model(input_ids=torch.tensor([ids], device=model.device), labels=torch.tensor([labels], device=model.device))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    return losses


def train_router(env: Environment, model_path: Path, cfg: TrainConfig, *, on_episode: Callable[[Episode], None] | None = None,
                 on_step: Callable[[dict[str, float]], None] | None = None, workdir: Path | None = None,
                 on_warmup: Callable[[int, float], None] | None = None):
    """Format warm-up (optional), then GRPO (``steps`` = 0: the warm-up alone, the RL stage's
    start, for comparison); returns (trained peft model, tokenizer, History)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    tok = AutoTokenizer.from_pretrained(model_path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    gpu = cfg.device != "cpu"
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if gpu else torch.float32).to(cfg.device)
    history = History()
    n_rows = cfg.steps * cfg.prompts_per_step
    rows = random.Random(cfg.seed).sample(range(len(env)), k=min(n_rows, len(env)))
    dataset = Dataset.from_dict({"prompt": [f"row:{r}" for r in rows]})
    rng = random.Random(cfg.seed)

    def rollout_func(prompts: list[str], trainer) -> dict[str, Any]:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        episodes = []
        for p in prompts:
            row = int(p.split(":", 1)[1])
            episodes.append(run_episode(env, row, tok, model, cfg, rng=rng, candidates=candidate_pool(env, row, cfg)))
            if on_episode:
                on_episode(episodes[-1])
        if was_training:
            model.train()
        row = history.add(episodes)
        if on_step:
            on_step(row)
        return {"prompt_ids": [e.prompt_ids for e in episodes], "completion_ids": [e.completion_ids for e in episodes],
                "logprobs": None, "env_mask": [e.mask for e in episodes],
                "router_reward": [e.outcome.reward.total for e in episodes]}

    def reward_func(prompts, completions, router_reward, **kwargs) -> list[float]:
        return list(router_reward)

    reward_func.__name__ = "router_r1"
    out = Path(workdir or tempfile.mkdtemp(prefix="router-r1-"))
    args = GRPOConfig(
        output_dir=str(out), max_steps=cfg.steps, per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
        num_generations=cfg.num_generations, gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        beta=0.0, num_iterations=1, logging_steps=1, save_strategy="no", report_to=[], use_cpu=not gpu, bf16=gpu,
        seed=cfg.seed, max_completion_length=cfg.max_new_tokens * (cfg.max_rounds + cfg.max_retries + 1) + 256,
        disable_tqdm=True, dataloader_num_workers=0, gradient_checkpointing=False, shuffle_dataset=False, remove_unused_columns=False)
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=cfg.target_modules,
                             task_type="CAUSAL_LM")
    if cfg.init_adapter:
        from peft import PeftModel

        folder, _manifest = verify_router_artifact(Path(cfg.init_adapter))
        model = PeftModel.from_pretrained(base, folder, is_trainable=True)
    else:
        model = get_peft_model(base, peft_config)
    history.warmup_loss = format_warmup(model, tok, env, cfg, on_step=on_warmup) if cfg.warmup_steps else []
    if cfg.steps == 0:
        model.eval()
        return model, tok, history
    trainer = GRPOTrainer(model=model, reward_funcs=reward_func, args=args, train_dataset=dataset, processing_class=tok,
                          rollout_func=rollout_func)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.eval()
    if workdir is None:
        shutil.rmtree(out, ignore_errors=True)
    return model, tok, history


# ---- artifact --------------------------------------------------------------------------------------
def save_router_artifact(model, root: Path, *, cfg: TrainConfig, env_info: dict[str, Any], history: History,
                         metrics: dict[str, Any] | None = None, base_model: str = "", flat: bool = False) -> Path:
    """Write the LoRA adapter and its manifest as the next version under ``root`` (atomically)."""
    with new_version(root, flat=flat, what="router-r1 artifact") as (tmp, version, target):
        model.save_pretrained(tmp, safe_serialization=True)
        files = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size} for name in ADAPTER_FILES}
        manifest = {
            "format": FORMAT, "format_version": 1, "policy": POLICY, "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "base_model": base_model,
            "hyperparameters": asdict(cfg), "data": env_info, "metrics": metrics or {},
            "reward_curve": history.rows, "warmup_loss": history.warmup_loss, "files": files,
        }
        for extra in tmp.iterdir():  # peft also writes a README; keep only what the manifest vouches for
            if extra.name not in ADAPTER_FILES:
                extra.unlink() if extra.is_file() else shutil.rmtree(extra)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return target


def verify_router_artifact(path: Path) -> tuple[Path, dict[str, Any]]:
    """(folder, manifest) after checking format and every file's sha256; ``PolicyError`` otherwise.
    ``path`` may be a version folder or a root holding ``v1``, ``v2``, … (the newest is taken)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        found = [v for v in versions(path) if (v / MANIFEST).is_file()]
        if not found:
            raise PolicyError(f"router-r1 artifact {path}: no {MANIFEST}")
        path = found[-1]
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PolicyError(f"router-r1 artifact {path}: unreadable manifest ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("policy") != POLICY:
        raise PolicyError(f"router-r1 artifact {path}: not a {FORMAT} manifest")
    for name in ADAPTER_FILES:
        entry = (manifest.get("files") or {}).get(name)
        if not entry or not (path / name).is_file():
            raise PolicyError(f"router-r1 artifact {path}: {name} missing")
        if sha256_file(path / name) != entry.get("sha256"):
            raise PolicyError(f"router-r1 artifact {path}: {name} does not match its sha256")
    return path, manifest


def plot_history(history: History, out: Path, *, title: str = "Router-R1 training", window: int = 5) -> Path:
    """Reward (per step and its running mean), well-formed share and quality per step; below, the
    share of episodes adopting each expert, which is what the RL stage moves (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = history.rows
    steps = [r["step"] for r in rows]
    experts = sorted({k for r in rows for k in r if k.startswith("share:")})
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(6.4, 6.0), sharex=True)
    reward = np.array([r["reward"] for r in rows])
    ax.plot(steps, reward, marker="o", ms=3, alpha=0.45, label="mean reward")
    if len(rows) >= window:
        ax.plot(steps[window - 1:], np.convolve(reward, np.ones(window) / window, "valid"), lw=2.2,
                label=f"mean reward, running mean of {window}")
    ax.plot(steps, [r["well_formed"] for r in rows], marker="s", ms=3, label="well-formed share")
    ax.plot(steps, [r["quality"] for r in rows], marker="^", ms=3, alpha=0.6, label="mean quality")
    ax.set_ylim(-1.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title)
    for key in experts:
        share = np.array([r.get(key, 0.0) for r in rows])
        smooth = np.convolve(share, np.ones(window) / window, "valid") if len(rows) >= window else share
        bx.plot(steps[len(steps) - len(smooth):], smooth, lw=1.8, label=key.split(":", 1)[1])
    bx.set_ylabel(f"adopted share\n(running mean of {window})" if len(rows) >= window else "adopted share")
    bx.set_xlabel("GRPO step")
    bx.set_ylim(-0.02, 1.02)
    bx.grid(alpha=0.3)
    if experts:
        bx.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - t0
