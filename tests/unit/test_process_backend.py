"""Lifecycle of a local server subprocess: start, readiness, adopt, stop, clear start-up errors."""

from __future__ import annotations

import sys

import pytest

from core.config import ExpertConfig
from core.errors import BackendError
from experts.backends.process import ProcessBackend, pid_alive

# A stand-in server: answers GET /v1/models like an OpenAI endpoint.
SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/v1/models" else 404); self.end_headers(); self.wfile.write(b'{"data": []}')
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


class ScriptBackend(ProcessBackend):
    def __init__(self, script: str, data_dir, timeout: float = 20.0) -> None:
        super().__init__(ExpertConfig(name="stand-in", backend="llamacpp", model="x"), data_dir=data_dir)
        self.script, self.timeout = script, timeout

    configured_port = 0

    @property
    def startup_timeout_s(self) -> float:
        return self.timeout

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-c", self.script, str(port)]


def test_start_health_adopt_stop(tmp_path):
    backend = ScriptBackend(SERVER, tmp_path)
    backend.start()
    try:
        assert backend.health() and pid_alive(backend.pid)
        other = ScriptBackend(SERVER, tmp_path)  # e.g. `expertmux serve` reusing `experts up`
        assert other.adopt(backend.api_base, backend.pid)
        assert other.api_base == backend.api_base
    finally:
        pid = backend.pid
        backend.stop()
    assert not pid_alive(pid) and backend.api_base is None
    assert not ScriptBackend(SERVER, tmp_path).adopt(f"http://127.0.0.1:{1}/v1", pid)


def test_crash_during_start_reports_exit_code_and_log(tmp_path):
    backend = ScriptBackend("import sys; print('model file is corrupt'); sys.exit(3)", tmp_path)
    with pytest.raises(BackendError, match=r"exited with code 3(.|\n)*model file is corrupt"):
        backend.start()
    assert backend.api_base is None


def test_never_ready_times_out_and_is_killed(tmp_path):
    backend = ScriptBackend("import time; time.sleep(60)", tmp_path, timeout=1.0)
    with pytest.raises(BackendError, match="not ready after 1s"):
        backend.start()
    assert backend.pid is None


def test_registry_restarts_a_dead_local_server(tmp_path, monkeypatch):
    import os
    import signal
    import time

    from experts import registry as registry_mod
    from experts.registry import ExpertRegistry

    monkeypatch.setattr(registry_mod, "make_backend", lambda cfg, **kw: ScriptBackend(SERVER, tmp_path))
    reg = ExpertRegistry([ExpertConfig(name="stand-in", backend="llamacpp", model="x")], data_dir=tmp_path)
    reg.start_local()
    backend = reg["stand-in"].backend
    first_pid = backend.pid
    try:
        assert reg.restart_dead() == []  # healthy: nothing to do
        os.kill(first_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_alive(first_pid) and time.monotonic() < deadline:
            backend._proc.poll()  # reap, as the supervisor's process would
            time.sleep(0.05)
        assert "stand-in" in reg.unavailable()  # a dead server is no candidate, even before its restart
        assert reg.restart_dead() == ["stand-in"]
        assert backend.pid != first_pid and backend.health() and "stand-in" not in reg.unavailable()
    finally:
        reg.stop_local()


def test_stop_ends_helpers_that_outlive_the_server(tmp_path):
    """A server forks a helper that ignores SIGTERM (as vLLM's resource tracker does): stop() ends
    the whole process group, KILLing what TERM did not end."""
    import os
    import time

    forking = ("import subprocess, sys\n"
               "subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               "time.sleep(60)'])\n" + SERVER)
    backend = ScriptBackend(forking, tmp_path)
    backend.start()
    pgid = backend.pid
    time.sleep(0.3)
    started = time.monotonic()
    backend.stop(timeout=0.5)
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert time.monotonic() - started < 7
