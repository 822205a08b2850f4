"""VllmBackend without vLLM: the command line and environment it builds, and /metrics parsing."""

from __future__ import annotations

import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from core.config import ExpertConfig
from core.contracts import LoadSnapshot
from core.errors import ConfigError
from experts.backends import make_backend
from experts.backends import vllm as vllm_module
from experts.backends.vllm import VllmBackend, parse_metrics

METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="big"} 3.0
vllm:num_requests_running{engine="1",model_name="big"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="big"} 4.0
vllm:num_requests_waiting{engine="1",model_name="big"} 1.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="big"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="big"} 0.5
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="big"} 1234.0
"""

OLD_METRICS = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="small"} 1.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="small"} 0.0
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{model_name="small"} 0.75
"""


@pytest.fixture()
def fake_python(tmp_path):
    path = tmp_path / "venv" / "bin" / "python"
    path.parent.mkdir(parents=True)
    path.write_text("")
    return path


def _config(**vllm) -> ExpertConfig:
    return ExpertConfig(name="big", backend="vllm", model="org/Big-Model-70B-Instruct", vllm=vllm)


def test_command_line_from_config(fake_python, tmp_path):
    config = _config(
        python=str(fake_python), dtype="bfloat16", max_model_len=8192, gpu_memory_utilization=0.9,
        tensor_parallel_size=4, extra_args=["--enable-prefix-caching"],
    )
    cmd = VllmBackend(config, data_dir=tmp_path).command(8123)

    assert cmd == [
        str(fake_python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", "org/Big-Model-70B-Instruct",  # not a local path: passed through for vLLM to resolve
        "--served-model-name", "big",
        "--host", "127.0.0.1",
        "--port", "8123",
        "--dtype", "bfloat16",
        "--tensor-parallel-size", "4",
        "--max-model-len", "8192",
        "--gpu-memory-utilization", "0.9",
        "--enable-prefix-caching",
    ]


def test_optional_arguments_are_left_to_vllm(fake_python, tmp_path):
    cmd = VllmBackend(_config(python=str(fake_python)), data_dir=tmp_path).command(9000)
    assert "--max-model-len" not in cmd
    assert "--gpu-memory-utilization" not in cmd
    assert cmd[cmd.index("--tensor-parallel-size") + 1] == "1"
    assert cmd[cmd.index("--dtype") + 1] == "auto"


def test_served_model_name_is_the_model_id(fake_python, tmp_path):
    named = VllmBackend(_config(python=str(fake_python), served_model_name="big-70b"), data_dir=tmp_path)
    assert named.model_id == "big-70b"
    assert named.command(1)[named.command(1).index("--served-model-name") + 1] == "big-70b"
    assert VllmBackend(_config(python=str(fake_python)), data_dir=tmp_path).model_id == "big"


def test_local_model_folder_becomes_absolute(fake_python, tmp_path, monkeypatch):
    (tmp_path / "models" / "small-hf").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = ExpertConfig(name="small", backend="vllm", model="models/small-hf", vllm={"python": str(fake_python)})
    cmd = VllmBackend(config, data_dir=tmp_path).command(1)
    assert cmd[cmd.index("--model") + 1] == str((tmp_path / "models" / "small-hf").resolve())


def test_venv_option_picks_its_interpreter(fake_python, tmp_path):
    backend = VllmBackend(_config(venv=str(fake_python.parent.parent)), data_dir=tmp_path)
    assert backend.command(1)[0] == str(fake_python)


def test_default_interpreter_is_the_project_vllm_venv(fake_python, tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_module, "DEFAULT_VENV", fake_python.parent.parent)
    assert VllmBackend(_config(), data_dir=tmp_path).command(1)[0] == str(fake_python)


@pytest.mark.parametrize("opts", [{}, {"python": "/nonexistent/bin/python"}, {"venv": "/nonexistent/venv"}])
def test_missing_interpreter_is_a_config_error(opts, tmp_path, monkeypatch):
    monkeypatch.setattr(vllm_module, "DEFAULT_VENV", tmp_path / "no-venv")
    backend = VllmBackend(_config(**opts), data_dir=tmp_path)
    with pytest.raises(ConfigError, match="make vllm-env"):
        backend.command(1)


def test_env_places_gpus_and_applies_config_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("EXPERTMUX_TEST_MARKER", "kept")
    config = _config(cuda_visible_devices="2,3", tensor_parallel_size=2,
                     env={"VLLM_CPU_KVCACHE_SPACE": "4", "NCCL_P2P_DISABLE": "1"})
    env = VllmBackend(config, data_dir=tmp_path).env()
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3"  # config placement wins over the ambient value
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4"  # config env overrides the CPU default
    assert env["NCCL_P2P_DISABLE"] == "1"
    assert env["EXPERTMUX_TEST_MARKER"] == "kept"


def test_env_without_placement_keeps_cpu_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    env = VllmBackend(_config(), data_dir=tmp_path).env()
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["VLLM_CPU_KVCACHE_SPACE"] == vllm_module.CPU_ENV_DEFAULTS["VLLM_CPU_KVCACHE_SPACE"]


def test_make_backend_builds_a_vllm_backend(tmp_path):
    assert isinstance(make_backend(_config(), data_dir=tmp_path), VllmBackend)


def test_parse_metrics_sums_label_sets():
    snap = parse_metrics(METRICS)
    assert snap == LoadSnapshot(running=5.0, waiting=5.0, kv_cache_usage=0.75)


def test_parse_metrics_reads_the_older_cache_gauge():
    assert parse_metrics(OLD_METRICS) == LoadSnapshot(running=1.0, waiting=0.0, kv_cache_usage=0.75)


def test_parse_metrics_of_a_non_vllm_server_is_none():
    assert parse_metrics("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n") is None


# -- load() against a real loopback HTTP server that plays the vLLM endpoints -------------------------
class _Handler(BaseHTTPRequestHandler):
    metrics_status = 200

    def do_GET(self):  # noqa: N802 - http.server naming
        if self.path == "/v1/models":
            self._send(200, b'{"object":"list","data":[{"id":"big","object":"model"}]}', "application/json")
        elif self.path == "/metrics":
            self._send(self.server.metrics_status, METRICS.encode(), "text/plain; version=0.0.4")
        else:
            self._send(404, b"", "text/plain")

    def _send(self, status, body, ctype):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def fake_vllm_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.metrics_status = 200
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_load_scrapes_metrics(fake_vllm_server, tmp_path):
    backend = VllmBackend(_config(), data_dir=tmp_path)
    assert backend.load() is None  # not running: nothing to scrape
    port = fake_vllm_server.server_address[1]
    assert backend.adopt(f"http://127.0.0.1:{port}/v1", os.getpid())
    assert backend.load() == LoadSnapshot(running=5.0, waiting=5.0, kv_cache_usage=0.75)


def test_load_failure_is_none(fake_vllm_server, tmp_path):
    backend = VllmBackend(_config(), data_dir=tmp_path)
    port = fake_vllm_server.server_address[1]
    assert backend.adopt(f"http://127.0.0.1:{port}/v1", os.getpid())
    fake_vllm_server.metrics_status = 500
    assert backend.load() is None
