"""The YAML configuration file: which experts exist and which policy is active.

Validated with pydantic so a typo fails at start-up with the field's path in the message.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LlamaCppOptions(_Strict):
    """Arguments for one ``experts.llamacpp_server`` subprocess (``llama_cpp.server``, evaluating on one thread)."""

    model_path: str | None = None  # default: resolved from the expert's ``model`` (a packaged GGUF)
    n_threads: int = 2
    n_ctx: int = 2048
    chat_format: str | None = None
    port: int = 0  # 0 = a free loopback port
    startup_timeout_s: float = 120.0
    extra_args: list[str] = Field(default_factory=list)
    share_prefill: bool = False  # hand its prefill states to a probe reading this model (runtime "llamacpp"); the answer reuses them

    @model_validator(mode="after")
    def _template_for_sharing(self) -> LlamaCppOptions:
        if self.share_prefill and self.chat_format:
            raise ValueError("share_prefill formats prompts with the model's own chat template: leave chat_format unset")
        return self


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
    router: str | None = None  # router artifact folder; default: `<data_dir>/artifacts/r2r/<slm>+<llm>` (`expertmux train r2r`)
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
    """Exploration of the serving policy, with logged propensities (router/lifecycle/exploration.py)."""

    method: Literal["epsilon", "softmax"]
    epsilon: float = Field(0.1, ge=0, le=1)  # epsilon: share of uniformly random choices
    temperature: float = Field(0.1, gt=0)  # softmax: over utilities (quality points)
    seed: int | None = None  # reproducible draws (tests, simulations)


class JudgeConfig(_Strict):
    """An expert that scores a sampled share of answered requests in the background (router/learning/judge.py)."""

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
    """The evaluation set behind the dashboard's cost–quality curves (router/lifecycle/tuning.py): a routing
    matrix folder (relative paths: against the project root), its split, and which matrix model
    each expert stands for ({model: expert}; an expert named like a model needs no entry)."""

    data: str
    split: str = "test"
    expert_map: dict[str, str] = Field(default_factory=dict)
    max_rows: int = Field(2000, gt=0)  # a seeded sample of the split when it is larger


class AutoLearnConfig(_Strict):
    """The background job that learns how the configured experts do on a graded prompt set: it
    calibrates them (router/calibration), trains a policy on their own matrix, compares it with the
    prior on the held-out split, promotes it through the gate only if it is not worse and swaps it in
    (router/lifecycle/autolearn.py). Run it on one replica only; the others pick the promoted
    version up from the registry."""

    enabled: bool = True
    source: str = "default"  # default | jsonl:PATH | ledger: the prompts calibration grades
    limit: int | None = Field(120, gt=0)  # prompts (stratified by skill); None: the whole source
    policy: str = "knn"  # the learned policy trained on the calibration matrix
    # each cross-validated on the matrix's train rows; the best by aiq is trained in place of ``policy``
    candidates: list[str | dict[str, dict[str, Any]]] = Field(default_factory=list)  # chosen among by train-row CV: NAME or {NAME: params}
    out: str = "var/calibration/own"  # the calibration folder (relative: against the project root)
    min_gain: float = -1e-9  # aiq gain over the prior needed to promote; just below 0 = not worse
    budget_usd: float | None = Field(None, ge=0)  # stop calibrating before spending more (hosted experts)
    start_delay_s: float = Field(2.0, ge=0)  # let the proxy take its first requests before the job starts


class SessionsConfig(_Strict):
    """Session-aware routing (router/sessions): a conversation or agent loop keeps its expert unless
    switching is worth the switch's price, and moves up one tier when it stalls. State lives in the
    ledger database (shared by replicas) behind a per-replica cache; when the store is unreachable
    requests are routed one by one, as with sessions off."""

    enabled: bool = True  # false: every request routed alone, as without this section
    from_user: bool = True  # the OpenAI `user` field names the session when no expertmux.session_id is sent
    from_prefix: bool = True  # else a hash of the conversation's opening (system messages and the first user message)
    switch_cost: Literal["cache", "none"] = "cache"  # cache: the prefix the current expert has read, at the new expert's input price
    cache_discount: float = Field(1.0, ge=0, le=1)  # share of that input price a prefix-cache hit saves
    switch_penalty: float = Field(0.0, ge=0)  # quality points a switch must gain on top of its price (voice, consistency)
    escalate: bool = True  # move a stalled session one tier up (tiers: experts by price, then size)
    loop_repeats: int = Field(3, ge=2)  # the same tool call (name and arguments) this many times in a row is a stall
    max_failures: int = Field(2, ge=1)  # this many failed requests in a row is a stall
    negative_feedback: float | None = Field(0.3, ge=0, le=1)  # feedback ≤ this on the session's last answer is a stall; None: off
    cache_ttl_s: float = Field(30.0, ge=0)  # a replica re-reads a session's state from the database after this long
    idle_timeout_s: float = Field(3600.0, gt=0)  # a session unused this long starts afresh
    retention_s: float = Field(7 * 86400.0, gt=0)  # session rows older than this are deleted
    load_timeout_s: float = Field(0.25, gt=0)  # reading a session's state may take this long; else the request is routed alone
    max_cached: int = Field(100_000, gt=0)  # sessions held in memory per replica (least recently used dropped)


class PacingConfig(_Strict):
    """Budget pacing (router/pacing): a key with a budget gets its own λ, adjusted online so that its
    spend follows the budget over the window; near the cap requests go to the cheapest expert that
    meets their constraints before a hard cap refuses one (429)."""

    enabled: bool = True  # false: budgets are hard caps only, as without this section
    window: Literal["day", "month"] = "day"  # the budget window keys pace against (budget_usd_day or budget_usd_month)
    global_budget_usd: float | None = Field(None, gt=0)  # all traffic's spend target per window (paced, never refused)
    target_share: float = Field(0.97, gt=0, le=1)  # share of the budget to aim at by the window's end
    profile: list[float] | None = Field(None, min_length=24, max_length=24)  # expected traffic per UTC hour (24 weights); None: flat
    lambda_init: float | None = Field(None, gt=0)  # λ a key starts from; None: the policy's λ (at least lambda_min)
    lambda_min: float = Field(1.0, gt=0)  # the lowest λ pacing sets (quality points per USD)
    lambda_max: float = Field(1e7, gt=0)  # the highest: at it the policy all but ignores quality
    gain: float = Field(0.5, gt=0)  # change of ln λ per unit of ln(spend rate / planned rate)
    max_step: float = Field(0.2, gt=0)  # largest change of ln λ in one update
    smoothing: float = Field(0.3, gt=0, le=1)  # weight of the newest interval in the spend rate's moving average
    update_s: float = Field(60.0, gt=0)  # how often each paced key's spend is read and its λ updated
    downgrade_at: float = Field(0.95, gt=0, le=1)  # share of the budget spent from which requests go to the cheapest fitting expert

    @model_validator(mode="after")
    def _bounds(self) -> PacingConfig:
        if self.lambda_max <= self.lambda_min:
            raise ValueError("pacing.lambda_max must be greater than pacing.lambda_min")
        if self.profile is not None and (min(self.profile) < 0 or sum(self.profile) <= 0):
            raise ValueError("pacing.profile needs 24 non-negative weights, not all zero")
        return self


class ShadowConfig(_Strict):
    """Shadow evaluation (router/shadow): a candidate policy decides on a sampled share of live
    requests off the request path; its decisions are logged beside the served ones, and where they
    differ its expert may be called and both answers judged blind. Never holds up a response."""

    enabled: bool = True  # false: no shadow, as without this section
    policy: str  # the candidate policy
    version: str | None = None  # its registry version (artifact); None: the newest registered one, else as configured
    sample_rate: float = Field(1.0, ge=0, le=1)  # share of routed requests the candidate decides on
    call_experts: bool = False  # call the candidate's expert where it differs from the served one
    judge: bool = True  # with call_experts: both answers rated by the configured judge, neither labelled
    budget_usd_day: float = Field(0.0, ge=0)  # what the candidate's calls may cost per UTC day, per replica
    max_pending: int = Field(64, gt=0)  # requests waiting for the shadow at once; more are skipped (and counted)
    gate_min_judged: int = Field(0, ge=0)  # promotion: judged pairs needed before the shadow record can refuse; 0 = shown only
    gate_min_win_share: float = Field(0.5, ge=0, le=1)  # promotion: share of judged pairs (ties half) the candidate must win
    seed: int | None = None  # reproducible sampling and judging order (tests, benchmarks)


class AppConfig(_Strict):
    experts: list[ExpertConfig]
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    judge: JudgeConfig | None = None  # off by default
    tuning: TuningConfig | None = None  # off: the dashboard shows no curve
    autolearn: AutoLearnConfig | None = None  # off unless configured (the shipped config turns it on)
    sessions: SessionsConfig | None = None  # off unless configured: every request routed alone
    pacing: PacingConfig | None = None  # off unless configured: budgets are hard caps only
    shadow: ShadowConfig | None = None  # off unless configured

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
