"""`expertmux serve` moves what is alive at start-up out of the collector's reach, unless told not to,
and runs on the event loop the settings name."""

from __future__ import annotations

import gc
import types

import pytest
from typer.testing import CliRunner


@pytest.fixture
def served(monkeypatch, tmp_path):
    """Runs `serve` with the app and the server replaced: the server only calls the app's on_ready."""
    import api.app
    import cli.serve
    from cli.app import app

    def fake_create_app(settings, *, on_ready=None):
        state = types.SimpleNamespace(service=types.SimpleNamespace(experts=types.SimpleNamespace(names=[])))
        return types.SimpleNamespace(state=state, on_ready=on_ready)

    loops = []

    class FakeServer:
        def __init__(self, config, service):
            self.on_ready = config.app.on_ready
            loops.append(config.loop)

        def run(self):
            self.on_ready()

    monkeypatch.setattr(api.app, "create_app", fake_create_app)
    monkeypatch.setattr(cli.serve, "_draining_server", FakeServer)
    monkeypatch.setattr(cli.serve, "_check_port_free", lambda host, port: None)
    monkeypatch.setenv("EXPERTMUX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EXPERTMUX_ADMIN_TOKEN", "t" * 32)

    def run(*args: str):
        gc.unfreeze()
        try:
            result = CliRunner().invoke(app, ["serve", "--no-experts", "--port", "18999", *args])
            assert result.exit_code == 0, result.output
            run.loop = loops[-1]
            return gc.get_freeze_count()
        finally:
            gc.unfreeze()

    return run


def test_serve_freezes_start_up_objects_once_ready(served):
    assert served() > 10_000  # modules, config, app: everything alive when the proxy is ready


def test_the_freeze_can_be_switched_off(served, monkeypatch):
    monkeypatch.setenv("EXPERTMUX_GC_FREEZE", "false")
    assert served() == 0


def test_serve_runs_on_asyncios_loop_unless_told_otherwise(served, monkeypatch):
    # uvloop left a burst of new connections waiting behind the open ones (docs/reliability.md)
    served()
    assert served.loop == "asyncio"
    monkeypatch.setenv("EXPERTMUX_EVENT_LOOP", "uvloop")
    served()
    assert served.loop == "uvloop"
