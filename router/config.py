"""The YAML configuration file: which experts exist and which policy is active.

Validated with pydantic so a typo fails at start-up with the field's path in the message.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from router.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LlamaCppOptions(_Strict):
    """Arguments for one ``llama_cpp.server`` subprocess."""

    model_path: str | None = None  # default: resolved from the expert's ``model`` (a packaged GGUF)
    n_threads: int = 2
    n_ctx: int = 2048
    chat_format: str | None = None
    port: int = 0  # 0 = a free loopback port
    startup_timeout_s: float = 120.0
    extra_args: list[str] = Field(default_factory=list)


class VllmOptions(_Strict):
    """Arguments for one vLLM OpenAI server (``python -m vllm.entrypoints.openai.api_server``)."""

    python: str | None = None  # interpreter of the virtualenv that has vLLM; default: <venv>/bin/python
    venv: str | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    cuda_visible_devices: str | None = None  # GPU placement, e.g. "0,1"
    served_model_name: str | None = None
    port: int = 0
    startup_timeout_s: float = 600.0
    env: dict[str, str] = Field(default_factory=dict)
    extra_args: list[str] = Field(default_factory=list)


class R2ROptions(_Strict):
    """The ``r2r`` virtual expert: a small model writes, a learned router hands the few
    path-divergent tokens to a large model (``python -m experts.r2r.server`` subprocess)."""

    mode: Literal["local", "remote"] = "local"  # remote: both models behind OpenAI-compatible servers
    slm: str | None = None  # packaged model name or GGUF path (remote: served model name); default: slm_expert's model
    llm: str | None = None
    slm_expert: str | None = None  # an expert of this config whose model and prices the SLM side uses
    llm_expert: str | None = None
    router: str | None = None  # router artifact folder; default: the one shipped in experts/r2r/default_router
    threshold: float | None = Field(None, ge=0, le=1)  # hand over when the router's score ≥ this; default: the artifact's
    slm_format: str | None = None  # prompt format (smollm2, chatml, gemma, plain); default: from the model name
    llm_format: str | None = None
    slm_input_usd_per_mtok: float | None = Field(None, ge=0)  # default: slm_expert's prices, else 0
    slm_output_usd_per_mtok: float | None = Field(None, ge=0)
    llm_input_usd_per_mtok: float | None = Field(None, ge=0)
    llm_output_usd_per_mtok: float | None = Field(None, ge=0)
    n_threads: int = 2
    n_ctx: int = 2048
    default_max_tokens: int = Field(256, gt=0)
    slm_endpoint: str | None = None  # remote mode: base URLs (…/v1)
    llm_endpoint: str | None = None
    remote_chunk: int = Field(8, gt=0)  # remote mode: SLM tokens requested per call
    port: int = 0
    startup_timeout_s: float = 120.0
    extra_args: list[str] = Field(default_factory=list)


class ExpertConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:+\-]*$")  # "+" names pairs, e.g. r2r:smollm2+gemma3
    backend: Literal["llamacpp", "vllm", "remote", "r2r"]
    model: str
    endpoint: str | None = None  # base URL (…/v1) of an already running OpenAI-compatible server
    api_key_env: str | None = None  # environment variable holding the key (remote experts)
    input_usd_per_mtok: float = Field(0.0, ge=0)
    output_usd_per_mtok: float = Field(0.0, ge=0)
    params_b: float | None = Field(None, gt=0)
    context_window: int = Field(2048, gt=0)
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    timeout_s: float = Field(60.0, gt=0)
    # How calls reach the expert: `http` forwards the OpenAI request as it is over a pooled
    # connection (any OpenAI-compatible server); `litellm` translates it for the provider named
    # in `model`. `auto`: http whenever the expert has an OpenAI-compatible base URL.
    transport: Literal["auto", "http", "litellm"] = "auto"
    # Requests the server works on at once (llama.cpp: 1; vLLM batches many): turns in-flight
    # counts into expected queueing delay for load-aware routing. Default: by backend.
    max_concurrency: int | None = Field(None, gt=0)
    prior_quality: float | None = None  # used by the `strongest` and `prior` policies
    release_date: date | None = None
    chat: bool = True  # False: a base model, prompted through a plain text template
    llamacpp: LlamaCppOptions = Field(default_factory=LlamaCppOptions)
    vllm: VllmOptions = Field(default_factory=VllmOptions)
    r2r: R2ROptions = Field(default_factory=R2ROptions)


class ExplorationConfig(_Strict):
    """Exploration of the serving policy, with logged propensities (router/exploration.py)."""

    method: Literal["epsilon", "softmax"]
    epsilon: float = Field(0.1, ge=0, le=1)  # epsilon: share of uniformly random choices
    temperature: float = Field(0.1, gt=0)  # softmax: over utilities (quality points)
    seed: int | None = None  # reproducible draws (tests, simulations)


class JudgeConfig(_Strict):
    """An expert that scores a sampled share of answered requests in the background (router/judge.py)."""

    expert: str
    sample_rate: float = Field(0.1, ge=0, le=1)
    prompt: str | None = None  # template with {question} and {answer}; default: a 1–10 rating prompt
    max_tokens: int = Field(16, gt=0)
    scale_min: float = 1.0  # the rating scale the prompt asks for; integers on it map to [0, 1]
    scale_max: float = 10.0
    max_pending: int = Field(16, gt=0)  # judgements queued at once; more are skipped (and counted)
    seed: int | None = None


class GateConfig(_Strict):
    """The promotion gate's benchmark (``expertmux policies promote``): a routing matrix and split."""

    data: str  # routing-matrix folder; relative paths resolve against the project root
    split: str = "test"
    min_gain: float = Field(0.0, ge=0)  # aiq the candidate must gain over the active version
    tolerance: float = Field(0.0, ge=0)  # utility at the served λ it may lose


class PolicyConfig(_Strict):
    active: str = "prior"
    lambda_: float = Field(0.0, alias="lambda", ge=0)
    options: dict[str, dict[str, Any]] = Field(default_factory=dict)  # per-policy hyperparameters
    # Load-aware routing: utility −= latency_weight × expected latency (s); experts whose expected
    # latency exceeds the SLO are avoided while any other candidate meets it.
    latency_weight: float = Field(0.0, ge=0)
    latency_slo_s: float | None = Field(None, gt=0)
    exploration: ExplorationConfig | None = None  # default: none (the policy's own choice)
    gate: GateConfig | None = None  # default: compare the figures recorded in the manifests

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class TuningConfig(_Strict):
    """The evaluation set behind the dashboard's cost–quality curves (router/tuning.py): a routing
    matrix folder (relative paths: against the project root), its split, and which matrix model
    each expert stands for ({model: expert}; an expert named like a model needs no entry)."""

    data: str
    split: str = "test"
    expert_map: dict[str, str] = Field(default_factory=dict)
    max_rows: int = Field(2000, gt=0)  # a seeded sample of the split when it is larger


class AppConfig(_Strict):
    experts: list[ExpertConfig]
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    judge: JudgeConfig | None = None  # off by default
    tuning: TuningConfig | None = None  # off: the dashboard shows no curve

    @field_validator("experts")
    @classmethod
    def _unique_names(cls, experts: list[ExpertConfig]) -> list[ExpertConfig]:
        names = [e.name for e in experts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"expert names must be unique, repeated: {', '.join(dupes)}")
        if not experts:
            raise ValueError("at least one expert is required")
        return experts

    @model_validator(mode="after")
    def _judge_expert_exists(self) -> AppConfig:
        if self.judge is not None and self.judge.expert not in {e.name for e in self.experts}:
            raise ValueError(f"judge.expert {self.judge.expert!r} is not an expert of this config")
        if self.judge is not None and self.judge.scale_max <= self.judge.scale_min:
            raise ValueError("judge.scale_max must be greater than judge.scale_min")
        return self

    @model_validator(mode="after")
    def _link_r2r(self) -> AppConfig:
        """An R2R expert may name the experts it pairs: their models and prices fill its gaps."""
        by_name = {e.name: e for e in self.experts}
        for expert in self.experts:
            if expert.backend != "r2r":
                continue
            opts = expert.r2r
            for side in ("slm", "llm"):
                ref = getattr(opts, f"{side}_expert")
                if ref is None:
                    continue
                other = by_name.get(ref)
                if other is None or other.backend == "r2r":
                    raise ValueError(f"expert {expert.name!r}: r2r.{side}_expert {ref!r} is not a (non-r2r) expert of this config")
                if getattr(opts, side) is None:
                    model = other.llamacpp.model_path or other.model if other.backend == "llamacpp" else other.model
                    setattr(opts, side, model)
                for kind in ("input", "output"):
                    field = f"{side}_{kind}_usd_per_mtok"
                    if getattr(opts, field) is None:
                        setattr(opts, field, getattr(other, f"{kind}_usd_per_mtok"))
            if opts.mode == "remote" and not (opts.slm_endpoint and opts.llm_endpoint):
                raise ValueError(f"expert {expert.name!r}: r2r remote mode needs slm_endpoint and llm_endpoint")
        return self


def load_config(path: str | Path) -> AppConfig:
    """Read and validate the YAML config; errors name the file and the offending field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    try:
        return AppConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"config file {path} is invalid: {problems}") from exc
