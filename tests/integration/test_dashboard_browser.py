"""The admin dashboard in Debian's headless Chromium (Playwright): sign-in, charts, the λ slider
changing the next request's routing, the ledger browser. The app is real (SQLite ledger, two
OpenAI-compatible experts on real ports); screenshots go to var/test-artifacts/."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import REPO
from tests.integration.conftest import ADMIN, CHROMIUM, signed_in_page

ARTIFACTS = REPO / "var" / "test-artifacts"

pytestmark = pytest.mark.slow
if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed (make system-deps installs the Debian package)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")
# The app with its traffic (app_url) and the browser are fixtures of tests/integration/conftest.py.


@pytest.fixture
def page(browser, app_url):
    """A signed-in page; fails the test on any console error or uncaught exception."""
    with signed_in_page(browser, app_url[0]) as pg:
        yield pg


def _shot(pg, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    pg.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_wrong_or_missing_token_is_refused(browser, app_url):
    url, _ = app_url
    assert httpx.get(f"{url}/admin/api/overview").status_code == 401
    wrong = httpx.get(f"{url}/admin/api/overview", headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_admin_token"
    assert httpx.get(f"{url}/admin/api/overview", headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert httpx.get(f"{url}/admin/api/requests", cookies={"expertmux_admin": "forged"}).status_code == 401
    context = browser.new_context()
    pg = context.new_page()
    pg.goto(f"{url}/admin")
    assert pg.url.endswith("/admin/login")  # no session: the dashboard is not shown
    pg.fill("#token", "not-the-token")
    pg.click("#login-submit")
    pg.wait_for_url("**/admin/login?error=1")
    assert pg.is_visible("#login-error")
    assert context.cookies() == []
    # A signed-in browser cannot be made to change anything without the dashboard's own header.
    pg.fill("#token", ADMIN)
    pg.click("#login-submit")
    pg.wait_for_url(f"{url}/admin")
    forged = pg.request.post(f"{url}/admin/api/apply", data={"lambda": 5})
    assert forged.status == 403
    cookie = context.cookies()[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["value"] != ADMIN
    context.close()


def test_overview_charts_render(page):
    page.wait_for_selector("#chart-requests .main-svg")
    page.wait_for_selector("#chart-latency .scatterlayer .trace")
    page.wait_for_selector("#chart-share .pielayer .slice")
    page.wait_for_selector("#chart-quality .barlayer .point")
    assert page.locator("#chart-requests .barlayer .point").count() > 0
    assert page.locator("#chart-share .pielayer .slice").count() == 3  # cheap, strong, rejected (no expert)
    rows = page.locator("#experts-table tbody tr")
    assert rows.count() == 3
    assert "57 requests" in page.inner_text("#ov-total")
    timing = page.locator("#routing-time-table tbody tr")  # 42 routed by the prior; 14 named an expert
    timing.first.wait_for()
    assert timing.count() == 1
    cells = timing.first.locator("td").all_inner_texts()
    assert cells[:2] == ["prior", "42"] and all(c.endswith("ms") for c in cells[2:])
    _shot(page, "dashboard-overview.png")


def test_slider_and_apply_change_the_next_requests_routing(page, app_url):
    url, app = app_url
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
    ask = lambda: client.chat.completions.with_raw_response.create(  # noqa: E731
        model="expertmux/auto", messages=[{"role": "user", "content": "which expert?"}]).headers
    assert ask()["x-expertmux-expert"] == "strong"  # λ = 0: the better prior wins
    page.click("a[data-tab=tuning]")
    page.wait_for_selector("#chart-curve .scatterlayer .trace")
    first = page.inner_text("#tu-cost1k")
    assert page.input_value("#tu-policy") == "prior"
    assert "strong 100.0%" in page.inner_text("#tu-share")
    page.focus("#tu-slider")
    page.keyboard.press("End")  # the largest λ on the grid: cost dominates
    assert page.inner_text("#tu-cost1k") != first
    assert "cheap 100.0%" in page.inner_text("#tu-share")
    lam = float(page.input_value("#tu-lambda"))
    assert lam > 0
    _shot(page, "dashboard-tuning.png")
    page.click("#tu-apply")
    page.wait_for_selector("#tu-status:has-text('applied')")
    assert abs(app.state.service.policies.default_lambda - lam) < 1e-5 * lam  # the field shows 6 digits
    headers = ask()
    assert (headers["x-expertmux-expert"], headers["x-expertmux-policy"]) == ("cheap", "prior")
    assert "tune" in page.inner_text("#events-table")  # recorded in the registry history
    # Back to λ = 0 with the exact field: the next request goes to the strong expert again.
    page.fill("#tu-lambda", "0")
    page.dispatch_event("#tu-lambda", "change")
    page.wait_for_selector("#tu-share:has-text('strong 100.0%')")
    page.click("#tu-apply")
    page.wait_for_selector("#tu-status:has-text('with λ = 0')")
    assert ask()["x-expertmux-expert"] == "strong"


def test_ledger_filter_pagination_and_detail(page):
    page.click("a[data-tab=ledger]")
    page.wait_for_selector("#lg-table tbody tr[data-id]")
    assert page.locator("#lg-table tbody tr").count() == 50
    assert page.is_enabled("#lg-next")
    first_page = page.locator("#lg-table tbody tr").first.get_attribute("data-id")
    page.click("#lg-next")
    page.wait_for_selector("#lg-page:has-text('page 2')")
    second = page.locator("#lg-table tbody tr[data-id]")
    assert 1 <= second.count() < 50
    assert first_page not in {second.nth(i).get_attribute("data-id") for i in range(second.count())}
    page.click("#lg-prev")
    page.wait_for_selector("#lg-page:has-text('page 1')")
    page.select_option("#lg-expert", "cheap")
    page.select_option("#lg-policy", "direct")
    page.click("#lg-search")
    page.wait_for_selector("#lg-page:has-text('14 rows')")  # every 4th of the 56 requests named the cheap expert
    page.select_option("#lg-policy", "")
    page.select_option("#lg-expert", "")
    page.select_option("#lg-status", "rejected")
    page.click("#lg-search")
    page.wait_for_selector("#lg-page:has-text('1 rows')")
    page.select_option("#lg-status", "ok")
    page.select_option("#lg-policy", "prior")
    page.click("#lg-search")
    page.wait_for_selector("#lg-table tbody tr[data-id]")
    page.locator("#lg-table tbody tr[data-id]").first.click()
    page.wait_for_selector("#lg-candidates tbody tr")
    candidates = page.inner_text("#lg-candidates")
    assert "(chosen)" in candidates and "cheap" in candidates and "strong" in candidates
    assert "1.0000" in candidates  # the chosen expert's propensity
    assert page.locator("#lg-attempts tbody tr").count() >= 1
    _shot(page, "dashboard-ledger.png")
