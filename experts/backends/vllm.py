"""vLLM expert: one OpenAI-compatible vLLM server subprocess per expert on a loopback port.

vLLM runs from its own virtualenv (``make vllm-env``): it pins torch, transformers and fastapi
versions the proxy must not be tied to, so the server is started with that venv's interpreter.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from core.contracts import LoadSnapshot
from core.errors import ConfigError
from experts.backends.process import ProcessBackend

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = PROJECT_ROOT / ".venv-vllm"

# Read only by the CPU build of vLLM (GPU builds ignore it). Without an explicit KV-cache size
# (whole GiB) the CPU build claims gpu_memory_utilization (0.92 by default) of its NUMA node's
# memory and refuses to start once the proxy and other experts hold part of it. 1 GiB holds ~46k
# tokens of SmolLM2 cache. The ambient environment and the config's ``env`` override it.
CPU_ENV_DEFAULTS = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
}


class VllmBackend(ProcessBackend):
    # /health answers only once the engine has loaded the weights; /v1/models can answer earlier.
    ready_path = "/health"

    @property
    def configured_port(self) -> int:
        return self.config.vllm.port

    @property
    def startup_timeout_s(self) -> float:
        return self.config.vllm.startup_timeout_s

    @property
    def served_model_name(self) -> str:
        return self.config.vllm.served_model_name or self.config.name

    @property
    def model_id(self) -> str:
        return self.served_model_name

    def python(self) -> Path:
        """Interpreter of the virtualenv that has vLLM: explicit path, then venv, then the project's."""
        opts = self.config.vllm
        if opts.python:
            candidate = Path(opts.python).expanduser()
        elif opts.venv:
            candidate = Path(opts.venv).expanduser() / "bin" / "python"
        else:
            candidate = DEFAULT_VENV / "bin" / "python"
        if not candidate.exists():
            raise ConfigError(
                f"expert {self.config.name!r}: no vLLM interpreter at {candidate}; "
                "run `make vllm-env` or set vllm.python / vllm.venv in the config"
            )
        return candidate

    def model_arg(self) -> str:
        """A local model folder as an absolute path (the server may run from another directory);
        anything else is passed through as a model name for vLLM to resolve."""
        model = Path(self.config.model).expanduser()
        for candidate in (model, PROJECT_ROOT / model):
            if candidate.exists():
                return str(candidate.resolve())
        return self.config.model

    def command(self, port: int) -> list[str]:
        opts = self.config.vllm
        cmd = [
            str(self.python()), "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_arg(),
            "--served-model-name", self.served_model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--dtype", opts.dtype,
            "--tensor-parallel-size", str(opts.tensor_parallel_size),
        ]
        if opts.max_model_len is not None:
            cmd += ["--max-model-len", str(opts.max_model_len)]
        if opts.gpu_memory_utilization is not None:
            cmd += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization)]
        return cmd + list(opts.extra_args)

    def env(self) -> dict[str, str]:
        opts = self.config.vllm
        env = {**CPU_ENV_DEFAULTS, **os.environ}
        if opts.cuda_visible_devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = opts.cuda_visible_devices
        env.update(opts.env)
        return env

    def load(self) -> LoadSnapshot | None:
        """Running/waiting requests and KV-cache use from the server's Prometheus ``/metrics``."""
        if not self.api_base:
            return None
        url = self.api_base.removesuffix("/v1") + "/metrics"
        try:
            response = httpx.get(url, timeout=2.0)
            response.raise_for_status()
            return parse_metrics(response.text)
        except (httpx.HTTPError, ValueError):
            return None


def parse_metrics(text: str) -> LoadSnapshot | None:
    """Sum each vLLM gauge over its label sets (one per served model / engine); None if the text
    has no vLLM request gauges (not a vLLM server)."""
    from prometheus_client.parser import text_string_to_metric_families

    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    if "vllm:num_requests_running" not in totals and "vllm:num_requests_waiting" not in totals:
        return None
    # vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc (it is a 0–1 fraction in both).
    kv = totals.get("vllm:kv_cache_usage_perc", totals.get("vllm:gpu_cache_usage_perc"))
    return LoadSnapshot(
        running=totals.get("vllm:num_requests_running", 0.0),
        waiting=totals.get("vllm:num_requests_waiting", 0.0),
        kv_cache_usage=kv,
    )
