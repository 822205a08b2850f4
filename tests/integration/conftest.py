"""Shared by the dashboard's browser tests: Debian's headless Chromium driven by Playwright, the
app with recorded traffic (real SQLite ledger, two OpenAI-compatible experts on real ports), and
a signed-in page."""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ADMIN = "dashboard-admin-token"


@contextmanager
def dashboard_app(tmp: Path, names: tuple[str, str] = ("cheap", "strong"), *, requests: int = 56,
                  feedback_every: int | None = 3):
    """The app with a cheap and a strong expert (named ``names``) and a tuning data set; then
    ``requests`` chat requests (every 4th naming the cheap expert, the rest routed), a score of
    0.75 on every ``feedback_every``-th (None: no feedback at all), and one rejected request.
    Yields (url, app)."""
    import httpx
    import openai

    from tests.conftest import make_settings, remote_expert
    from tests.support import fake_openai
    from tests.support.routing_matrix import write_matrix
    from tests.support.servers import serve_in_thread

    cheap_name, strong_name = names
    matrix = write_matrix(tmp / "matrix", n_per_task=40)
    cheap, strong = fake_openai.Behaviour(answer="cheap answer"), fake_openai.Behaviour(answer="strong answer")
    with ExitStack() as stack:
        cheap_url = stack.enter_context(serve_in_thread(fake_openai.make_app(cheap)))
        strong_url = stack.enter_context(serve_in_thread(fake_openai.make_app(strong)))
        experts = [remote_expert(cheap_name, cheap_url, prior_quality=0.3, params_b=1.0),
                   remote_expert(strong_name, strong_url, prior_quality=0.8, params_b=70.0,
                                 input_usd_per_mtok=10.0, output_usd_per_mtok=30.0)]
        settings = make_settings(tmp, experts, {"active": "prior", "lambda": 0}, admin_token=ADMIN, registry_poll_s=0)
        cfg = settings.config
        cfg.write_text(cfg.read_text() + f"tuning:\n  data: {matrix}\n  expert_map: {{small: {cheap_name}, large: {strong_name}}}\n")
        from api.app import create_app

        app = create_app(settings)
        url = stack.enter_context(serve_in_thread(app))
        if requests:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
            for i in range(requests):
                model = cheap_name if i % 4 == 0 else "expertmux/auto"
                raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": f"q{i}"}])
                if feedback_every and i % feedback_every == 0:
                    httpx.post(f"{url}/v1/feedback", json={"request_id": raw.headers["x-expertmux-request-id"], "score": 0.75},
                               headers={"authorization": f"Bearer {ADMIN}"}).raise_for_status()
            httpx.post(f"{url}/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
            assert app.state.service.ledger.flush(10)
        yield url, app


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app after 56 requests (more than one page of the ledger browser), feedback on every
    third, and one rejected request: (url, app)."""
    with dashboard_app(tmp_path_factory.mktemp("dashboard")) as served:
        yield served


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Chromium is not installed (make system-deps installs the Debian package)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@contextmanager
def signed_in_page(browser, url: str, viewport: dict | None = None):
    """A page signed in to the dashboard at ``url``; fails on any console error or uncaught
    exception in it."""
    context = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.goto(f"{url}/admin")
    assert pg.url.endswith("/admin/login")
    pg.fill("#token", ADMIN)
    pg.click("#login-submit")
    pg.wait_for_url(f"{url}/admin")
    yield pg
    context.close()
    assert problems == []
