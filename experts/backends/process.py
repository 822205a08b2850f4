"""A backend that owns a local server subprocess: free port, readiness wait, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from abc import abstractmethod
from pathlib import Path

import httpx

from core.config import ExpertConfig
from core.errors import BackendError
from experts.backends.base import Backend


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # A zombie still answers kill(0); read its state to be sure.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class ProcessBackend(Backend):
    """Runs ``command()`` as a subprocess on 127.0.0.1 and waits for ``ready_path`` to answer."""

    ready_path = "/v1/models"

    def __init__(self, config: ExpertConfig, *, data_dir: Path) -> None:
        super().__init__(config)
        self.data_dir = Path(data_dir)
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None
        self._port: int | None = None
        self._ready = False  # api_base stays None until the server answers: no traffic to a booting server

    # -- to implement ------------------------------------------------------------------------
    @abstractmethod
    def command(self, port: int) -> list[str]:
        """The argv that starts the server on ``port``."""

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    @abstractmethod
    def configured_port(self) -> int:
        """Port from config; 0 means pick a free one."""

    @property
    @abstractmethod
    def startup_timeout_s(self) -> float: ...

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def is_local(self) -> bool:
        return True

    @property
    def api_base(self) -> str | None:
        return f"http://127.0.0.1:{self._port}/v1" if self._port and self._ready else None

    def is_running(self) -> bool:
        """The server process exists (it may still be starting)."""
        return pid_alive(self._pid)

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / f"expert-{self.config.name}.log"

    def adopt(self, api_base: str, pid: int | None) -> bool:
        port = int(api_base.rsplit(":", 1)[1].split("/")[0])
        if not pid_alive(pid):
            return False
        # Keep the pid even when unhealthy, so stop() can still end a hung server.
        self._port, self._pid, self._ready = port, pid, True
        self._ready = self.health()
        return self._ready

    def start(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        port = self.configured_port or free_port()
        cmd = self.command(port)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            # Own process group: stop() can take down the server and anything it forked.
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=self.env(), start_new_session=True)
        except OSError as exc:
            raise BackendError(f"expert {self.config.name!r}: cannot start {cmd[0]}: {exc}") from exc
        finally:
            log.close()
        self._pid, self._port = self._proc.pid, port
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://127.0.0.1:{self._port}{self.ready_path}"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                self._port = self._pid = None
                raise BackendError(f"expert {self.config.name!r} exited with code {code} while starting:\n{self._log_tail()}")
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    self._ready = True
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise BackendError(f"expert {self.config.name!r} not ready after {self.startup_timeout_s:.0f}s:\n{self._log_tail()}")

    def _log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 10.0) -> None:
        """TERM the server's whole process group, KILL what is left after ``timeout``.

        Servers fork helpers into their group (vLLM: engine core, workers, resource tracker) that
        can outlive the main process; waiting for the group means a restart never finds the old
        one still holding memory or ports.
        """
        pgid = self._pid
        if pgid:  # the leader may be gone while its helpers live on
            for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                if self._signal_group(pgid, sig) and self._wait_group_gone(pgid, wait_s):
                    break
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._proc = None
        self._pid = self._port = None
        self._ready = False

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> bool:
        try:
            os.killpg(pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False  # no member left

    def _wait_group_gone(self, pgid: int, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self._proc is not None:
                self._proc.poll()  # reap our own child: a zombie would keep the group alive
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return True
            time.sleep(0.05)
        return False
