"""A throw-away PostgreSQL cluster for tests: initdb in a temp dir, a loopback port, stopped after."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager

from tests.support.servers import free_port


def pg_bin() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb refuses to run as root: run the cluster as the `postgres` system user.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_cluster():
    """Yields a SQLAlchemy URL of a fresh database on a private cluster."""
    with postgres_server() as server:
        yield server.url


class PgServer:
    """A running private cluster: its URL, and a restart (fast shutdown, then start again)."""

    def __init__(self, url: str, restart_cmds: tuple[list[str], list[str]]) -> None:
        self.url, self._stop, self._start = url, *restart_cmds

    def stop(self) -> None:
        subprocess.run(_as_postgres(self._stop), check=True, capture_output=True)

    def start(self) -> None:
        subprocess.run(_as_postgres(self._start), check=True, capture_output=True)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def postgres_server():
    """Yields a PgServer with a fresh database on a private cluster."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (make test installs the `postgresql` package)")
    root = tempfile.mkdtemp(prefix="expertmux-pg-")
    data, sock = os.path.join(root, "data"), os.path.join(root, "sock")
    os.makedirs(sock)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    run = lambda cmd: subprocess.run(_as_postgres(cmd), check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run([f"{bindir}/initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        start = [f"{bindir}/pg_ctl", "-D", data, "-w", "-l", os.path.join(root, "log"), "-o",
                 f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300", "start"]
        run(start)
        run([f"{bindir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "expertmux"])
        stop = [f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]
        yield PgServer(f"postgresql://postgres@127.0.0.1:{port}/expertmux", (stop, start))
    finally:
        subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", data, "-m", "fast", "-w", "stop"]), capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
