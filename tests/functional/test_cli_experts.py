"""`expertmux experts up|status|down` and `expertmux db upgrade` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
import yaml

from core.settings import PROJECT_ROOT
from experts.backends.process import pid_alive

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def env(tmp_path):
    full = yaml.safe_load((PROJECT_ROOT / "config" / "expertmux.yaml").read_text())
    full["experts"] = full["experts"][:1]  # SmolLM2 only: quick
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(full))
    return {**os.environ, "EXPERTMUX_CONFIG": str(tmp_path / "c.yaml"), "EXPERTMUX_DATA_DIR": str(tmp_path / "var"),
            "COLUMNS": "200"}


def test_experts_up_status_down(env, tmp_path):
    up = cli("experts", "up", env=env)
    assert up.returncode == 0, up.stderr
    assert "smollm2-135m: started http://127.0.0.1:" in up.stdout
    state = yaml.safe_load((tmp_path / "var" / "experts-state.json").read_text())
    api_base, pid = state["smollm2-135m"]["api_base"], state["smollm2-135m"]["pid"]
    try:
        assert httpx.get(f"{api_base}/models").status_code == 200  # outlives the command
        status = cli("experts", "status", env=env)
        assert "smollm2-135m" in status.stdout and "up" in status.stdout
        again = cli("experts", "up", env=env)
        assert f"reused {api_base}" in again.stdout  # a second `up` (or `serve`) reuses the server
    finally:
        down = cli("experts", "down", env=env)
    assert "stopped: smollm2-135m" in down.stdout
    assert not pid_alive(pid)
    assert "down" in cli("experts", "status", env=env).stdout


def test_db_upgrade_and_current(env, tmp_path):
    out = cli("db", "upgrade", env=env)
    assert out.returncode == 0, out.stderr
    from router.ledger.migrate import head

    assert head() in out.stdout and (tmp_path / "var" / "expertmux.db").exists()
    assert head() in cli("db", "current", env=env).stdout


def test_bad_config_is_a_clear_cli_error(env, tmp_path):
    (tmp_path / "c.yaml").write_text("experts: [{name: a, backend: tpu, model: m}]")
    out = cli("experts", "status", env=env)
    assert out.returncode == 1 and "experts.0.backend" in out.stderr


def test_serve_refuses_a_busy_port_before_starting_experts(env, tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = cli("serve", "--port", str(port), env=env)
    assert out.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert not (tmp_path / "var" / "experts-state.json").exists()  # no expert was started
