"""``expertmux serve``: the proxy, its local experts and its dashboard."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.app import app
from cli.common import console, fail, load_settings
from core.errors import ExpertmuxError


@app.command()
def serve(
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: $EXPERTMUX_CONFIG or config/expertmux.yaml)"),
    host: str = typer.Option(None, help="bind address (default 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default 8080)"),
    no_experts: bool = typer.Option(False, "--no-experts", help="do not start local experts"),
) -> None:
    """Start the OpenAI-compatible router (and its local experts)."""
    from core import llama_thread

    llama_thread.spin_briefly()  # before llama.cpp loads here (tokenizer, probe): the local experts share the cores
    import uvicorn

    from api.app import create_app

    settings = load_settings(config, host=host, port=port, autostart_experts=False if no_experts else None)
    url = f"http://{settings.host}:{settings.port}"
    token_file = _local_admin_token(settings)

    def banner() -> None:
        lines = [
            f"\n[bold green]expertmux is ready[/] at {url}   (OpenAI base URL: {url}/v1)",
            f"experts: {', '.join(application.state.service.experts.names)}   active policy: {settings.app_config.policy.active}",
            f"ledger: {settings.resolved_database_url}",
            f"dashboard: {url}/admin" + (f"   (admin token: {settings.admin_token.get_secret_value()}, kept in {token_file})"
                                          if token_file else "   (sign in with EXPERTMUX_ADMIN_TOKEN)" if settings.admin_token
                                          else "   (off: set EXPERTMUX_ADMIN_TOKEN)"),
            "try:",
            f"  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\",
            '    -d \'{"model": "expertmux/auto", "messages": [{"role": "user", "content": "Say hello"}]}\'',
            "",
        ]
        for line in lines:
            console.print(line, highlight=False, soft_wrap=True)

    def on_ready() -> None:
        if settings.gc_freeze:
            _freeze_startup_objects()
        banner()

    _check_port_free(settings.host, settings.port)
    try:
        console.print(f"starting expertmux with {settings.config} …")
        application = create_app(settings, on_ready=on_ready)
    except ExpertmuxError as exc:
        fail(exc)
    config = uvicorn.Config(application, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, loop=settings.event_loop, http="httptools",
                            timeout_graceful_shutdown=settings.shutdown_grace_s)
    _draining_server(config, application.state.service).run()


def _freeze_startup_objects() -> None:
    """Everything alive once the proxy is up (torch, transformers, litellm, the policies) lives as
    long as the process: without this, each full collection walks those millions of objects and
    stops the event loop for hundreds of milliseconds under load (benchmarks/proxy_overhead.py)."""
    import gc

    gc.collect()
    gc.freeze()


def _local_admin_token(settings) -> Path | None:
    """On a loopback-only proxy without EXPERTMUX_ADMIN_TOKEN, use a generated token kept in the data
    dir (readable by its owner only), so the dashboard works out of the box on a laptop. Anything
    listening beyond loopback must set its own token (else the admin API stays off)."""
    import secrets

    from pydantic import SecretStr

    from core.settings import _is_loopback

    if settings.admin_token is not None or not _is_loopback(settings.host):
        return None
    path = Path(settings.data_dir) / "admin-token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24) + "\n")
    settings.admin_token = SecretStr(path.read_text().strip())
    return path


def _draining_server(config, service):
    """uvicorn's server, telling the service when a graceful shutdown starts (SIGTERM/SIGINT)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            service.draining = True
            super().handle_exit(sig, frame)

    return DrainingServer(config)


def _check_port_free(host: str, port: int) -> None:
    """Fail before starting experts (which takes a while) if the port is taken."""
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} ({exc.strerror}); is another expertmux running? "
                 "Choose another port with --port or EXPERTMUX_PORT")
