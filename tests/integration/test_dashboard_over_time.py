"""The Over time tab and the Overview's Cascades card in Debian's headless Chromium (Playwright),
at 1280×800 and 1920×1080: a pacing chart per paced budget (spend, pacing line, budget, λ), the
sessions with most switches first, the shadow's candidate, cascade escalations per policy; with
the features off, each card names the config key that turns it on. Nothing overflows its card.
The app is real (SQLite ledger, two OpenAI-compatible experts on real ports); cascade requests
are written through the app's own ledger writer. Screenshots go to var/screenshots/."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.conftest import ADMIN, CHROMIUM, signed_in_page

pytestmark = pytest.mark.slow
if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed (make system-deps installs the Debian package)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

from tests.integration.test_dashboard_layout import (  # noqa: E402
    CLOCK,
    VIEWPORTS,
    assert_axis_readable,
    assert_no_overflow,
    shot,
)

LONG_POLICY = "cascade_threshold.eu-west-1.canary-deployment-with-a-long-name"


@contextmanager
def over_time_app(tmp):
    """An app with sessions, pacing (all traffic, $0.01 a day) and a shadow candidate; sessions
    "alpha" (6 turns alternating experts: 5 switches) and "beta" (3 turns on one expert), pacing
    updates 10 minutes apart between them, and cascade requests of two policies. Yields (url, app)."""
    import httpx
    import yaml

    from router.request.over_time import OverTime
    from tests.conftest import make_settings, remote_expert
    from tests.support import fake_openai
    from tests.support.cascade_ledger import Step, cascade_record
    from tests.support.servers import serve_in_thread

    with ExitStack() as stack:
        cheap_url = stack.enter_context(serve_in_thread(fake_openai.make_app(fake_openai.Behaviour(answer="cheap answer"))))
        strong_url = stack.enter_context(serve_in_thread(fake_openai.make_app(fake_openai.Behaviour(answer="strong answer"))))
        experts = [remote_expert("cheap", cheap_url, prior_quality=0.3, params_b=1.0),
                   remote_expert("strong", strong_url, prior_quality=0.8, params_b=70.0, input_usd_per_mtok=10.0,
                                 output_usd_per_mtok=30.0)]
        settings = make_settings(tmp, experts, {"active": "prior", "lambda": 0}, admin_token=ADMIN, registry_poll_s=0)
        settings.config.write_text(settings.config.read_text() + yaml.safe_dump({
            "sessions": {}, "pacing": {"global_budget_usd": 0.01, "update_s": 3600},
            "shadow": {"policy": "cheapest", "sample_rate": 1.0, "seed": 1}}))
        from api.app import create_app

        app = create_app(settings)
        url = stack.enter_context(serve_in_thread(app))
        over_time: OverTime = app.state.service.over_time
        start = datetime.now(UTC)
        with httpx.Client(base_url=url, timeout=30) as http:
            def chat(model: str, user: str, i: int) -> None:
                body = {"model": model, "user": user, "messages": [{"role": "user", "content": f"{user} turn {i}"}]}
                http.post("/v1/chat/completions", json=body).raise_for_status()

            for i in range(6):
                chat("cheap" if i % 2 else "strong", "alpha", i)
                if i % 2:
                    assert app.state.service.ledger.flush(10)
                    over_time.pacer.update(now=start + timedelta(minutes=10 * (i + 1)))
            for i in range(3):
                chat("expertmux/auto", "beta", i)
            # cascades: 3 of 5 escalated for "cascade", 1 of 2 for the long-named one
            at = lambda m: start - timedelta(minutes=m)  # noqa: E731
            for record in (
                cascade_record("c1", at(50), "cascade", [Step("cheap", 0.001, 200, True)]),
                cascade_record("c2", at(40), "cascade", [Step("cheap", 0.001, 300), Step("strong", 0.01, 800, True)]),
                cascade_record("c3", at(30), "cascade", [Step("cheap", 0.001, 250), Step("strong", 0.01, 900, True)]),
                cascade_record("c4", at(20), "cascade", [Step("cheap", 0.0, 100, status="error"),
                                                          Step("strong", 0.01, 700, True)]),
                cascade_record("c5", at(10), "cascade", [Step("cheap", 0.001, 200, True)]),
                cascade_record("t1", at(45), LONG_POLICY, [Step("cheap", 0.002, 400), Step("strong", 0.02, 1000, True)]),
                cascade_record("t2", at(15), LONG_POLICY, [Step("cheap", 0.002, 350, True)]),
            ):
                app.state.service.ledger.submit(record)
            assert app.state.service.ledger.flush(10)
            over_time.pacer.update(now=start + timedelta(minutes=70))
            deadline = time.monotonic() + 30  # the shadow decides off the request path
            while over_time.shadow.counts["logged"] < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert over_time.shadow.counts["logged"] >= 3
        yield url, app


@pytest.fixture(scope="module")
def busy_app(tmp_path_factory):
    with over_time_app(tmp_path_factory.mktemp("over-time")) as served:
        yield served


def show_over_time(page) -> None:
    page.click("a[data-tab=overtime]")
    page.wait_for_selector("#tab-overtime:not([hidden]):not([aria-busy])")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_over_time_tab_draws_pacing_sessions_and_shadow(browser, busy_app, viewport):
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, busy_app[0], viewport) as page:
        show_over_time(page)
        page.wait_for_selector("#chart-pacing-0 .scatterlayer .trace")
        assert page.locator("#ot-pacing .scope").count() == 1  # all traffic: the only paced scope
        assert page.inner_text("#ot-pacing .scope h3") == "All traffic"
        assert "λ now" in page.inner_text("#ot-pacing .scope p") and "of $0.0100 this day" in page.inner_text("#ot-pacing .scope p")
        assert page.locator("#chart-pacing-0 .scatterlayer .trace").count() == 4  # spent, pacing line, budget, λ
        assert page.locator("#chart-pacing-0 .y2tick").count() >= 1  # λ's own axis
        assert_axis_readable(page, "chart-pacing-0", CLOCK)
        assert page.is_hidden("#ot-pacing-note") and page.is_hidden("#ot-sessions-note") and page.is_hidden("#ot-shadow-note")

        rows = page.locator("#sessions-table tbody tr")
        assert rows.count() == 2
        first = [rows.nth(0).locator("td").nth(i).inner_text() for i in range(5)]
        assert first[1:4] == ["6", "5", "2"] and first[4] == "cheap"  # turns, switches, experts used, the last turn's; most switches first
        assert [rows.nth(1).locator("td").nth(i).inner_text() for i in (1, 2, 3)] == ["3", "0", "1"]
        assert "2 sessions, 9 turns, 5 switches" in page.inner_text("#ot-sessions-totals")

        shadow = page.locator("#shadow-table tbody tr")
        assert shadow.count() == 1 and shadow.first.locator("td").first.inner_text().startswith("cheapest")
        assert "running cheapest" in page.inner_text("#ot-shadow-live")
        assert_no_overflow(page, f"over time, {vp}")
        shot(page, f"{vp}-over-time.png")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_cascades_card_shows_escalations_per_policy(browser, busy_app, viewport):
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, busy_app[0], viewport) as page:
        page.wait_for_selector("#tab-overview:not([aria-busy])")
        page.wait_for_selector("#cascades-table tbody tr td.num")
        rows = page.locator("#cascades-table tbody tr")
        assert rows.count() == 2
        cells = [[rows.nth(r).locator("td").nth(i).inner_text() for i in range(8)] for r in range(2)]
        # policy, requests, escalated, mean steps, added cost, per request, added time p50, p95
        assert cells[0] == ["cascade", "5", "60.0%", "1.60", "$0.002", "$0.0004", "250 ms", "300 ms"]
        assert cells[1][1:] == ["2", "50.0%", "1.50", "$0.002", "$0.001", "400 ms", "400 ms"]
        name = rows.nth(1).locator("td.name")
        assert name.get_attribute("title") == LONG_POLICY  # the whole name in the tooltip, however narrow the column
        assert_no_overflow(page, f"overview with cascades, {vp}")
        shot(page, f"{vp}-overview-cascades.png")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_features_that_are_off_say_how_to_turn_them_on(browser, app_url, viewport):
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, app_url[0], viewport) as page:
        page.wait_for_selector("#tab-overview:not([aria-busy])")
        page.wait_for_selector("#cascades-table tbody td.empty")
        assert "No cascade requests in this range" in page.inner_text("#cascades-table")
        show_over_time(page)
        for card, key in (("pacing", "pacing:"), ("sessions", "sessions:"), ("shadow", "shadow:")):
            note = f"#ot-{card}-note"
            assert page.is_visible(note), card
            assert key in page.eval_on_selector_all(f"{note} code", "els => els.map((e) => e.textContent)"), card
        assert "is off" in page.inner_text("#ot-pacing-note") and page.locator("#ot-pacing .chart").count() == 0
        assert page.is_hidden("#sessions-table") and page.is_hidden("#shadow-table")  # no empty boxes
        assert_no_overflow(page, f"over time with every feature off, {vp}")
        shot(page, f"{vp}-over-time-off.png")
