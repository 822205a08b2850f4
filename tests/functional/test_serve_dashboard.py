"""`expertmux serve` on loopback without EXPERTMUX_ADMIN_TOKEN: the dashboard works out of the box,
with a generated token kept in the data dir and shown in the start-up banner."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import httpx

from tests.conftest import REPO, write_config
from tests.support import fake_openai
from tests.support.servers import free_port, serve_in_thread


def _serve(tmp_path, port: int, **env_extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "EXPERTMUX_ADMIN_TOKEN"}
    env.update({"EXPERTMUX_DATA_DIR": str(tmp_path / "var"), "EXPERTMUX_CONFIG": str(tmp_path / "cfg.yaml"),
                "EXPERTMUX_SUPERVISE_INTERVAL_S": "0", **env_extra})
    return subprocess.Popen([sys.executable, "-m", "cli", "serve", "--no-experts", "--port", str(port)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _banner(proc: subprocess.Popen) -> str:
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "".join(lines)[-2000:]
        lines.append(line)
        if line.startswith("dashboard:"):
            return line
    raise AssertionError("no dashboard line in the banner:\n" + "".join(lines)[-2000:])


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_loopback_serve_generates_a_private_admin_token_and_keeps_it(tmp_path):
    with serve_in_thread(fake_openai.make_app(fake_openai.Behaviour())) as upstream:
        write_config(tmp_path / "cfg.yaml", [{"name": "up", "backend": "remote", "model": "fake-model",
                                              "endpoint": f"{upstream}/v1"}])
        port = free_port()
        proc = _serve(tmp_path, port)
        try:
            line = _banner(proc)
            token_file = tmp_path / "var" / "admin-token"
            token = token_file.read_text().strip()
            assert f"http://127.0.0.1:{port}/admin" in line and token in line and len(token) >= 24
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            url = f"http://127.0.0.1:{port}/admin/api/policies"
            assert httpx.get(url, timeout=10).status_code == 401
            assert httpx.get(url, headers={"authorization": f"Bearer {token}"}, timeout=10).status_code == 200
            assert httpx.get(f"http://127.0.0.1:{port}/admin/login", timeout=10).status_code == 200
        finally:
            _stop(proc)
        proc = _serve(tmp_path, free_port())  # a restart keeps the token
        try:
            assert token in _banner(proc)
        finally:
            _stop(proc)


def test_a_configured_token_is_used_and_never_printed(tmp_path):
    write_config(tmp_path / "cfg.yaml", [{"name": "up", "backend": "remote", "model": "fake-model",
                                          "endpoint": "http://127.0.0.1:9/v1"}])
    proc = _serve(tmp_path, free_port(), EXPERTMUX_ADMIN_TOKEN="configured-secret-token")
    try:
        line = _banner(proc)
        assert "configured-secret-token" not in line and "EXPERTMUX_ADMIN_TOKEN" in line
        assert not (tmp_path / "var" / "admin-token").exists()
    finally:
        _stop(proc)
