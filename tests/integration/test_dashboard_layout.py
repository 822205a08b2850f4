"""The dashboard's layout in Debian's headless Chromium (Playwright) at 1280×800 and 1920×1080:
no card, chart or table is wider than the box it sits in; the x-axis tick labels of every chart
are pairwise disjoint, inside the chart's SVG and clear of its legend; a chart with nothing to
draw says so in words instead of showing empty axes. Screenshots of every state go to
var/screenshots/ (git-ignored)."""

from __future__ import annotations

import os
import re
from itertools import combinations

import pytest

from tests.conftest import REPO
from tests.integration.conftest import CHROMIUM, dashboard_app, signed_in_page

SHOTS = REPO / "var" / "screenshots"
VIEWPORTS = [pytest.param({"width": 1280, "height": 800}, id="1280x800"),
             pytest.param({"width": 1920, "height": 1080}, id="1920x1080")]
TIME_CHARTS = ("chart-requests", "chart-cost", "chart-latency")
# Tick labels by the overview's range: clock times within a day, dates over days.
CLOCK, DATE = re.compile(r"^\d\d:\d\d$"), re.compile(r"^[A-Z][a-z]{2} \d{1,2}$")
RANGES = {"1": CLOCK, "24": CLOCK, "168": DATE, "720": DATE}
LONG_NAMES = ("llama-3.3-70b-instruct-turbo.us-east-2.production", "qwen2.5-72b-instruct-awq.eu-west-1.canary-deployment")

pytestmark = pytest.mark.slow
if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed (make system-deps installs the Debian package)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")

# Every visible box whose content is wider than its own width (scrollWidth > clientWidth), and
# every data table whose right edge passes its card's content box.
OVERFLOWS = """() => {
  const shown = (e) => e.getClientRects().length > 0;
  const name = (e) => {
    const title = e.closest(".card") && e.closest(".card").querySelector("h2");
    return e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.className ? "." + String(e.className).trim().replace(/ +/g, ".") : "")
      + (title ? ` in card '${title.textContent}'` : "");
  };
  const out = [];
  for (const e of document.querySelectorAll("html, body, main, section.tab, .toolbar, .grid, .card, .chart, table.data, dl, pre")) {
    if (shown(e) && e.scrollWidth > e.clientWidth) out.push(`${name(e)}: scrollWidth ${e.scrollWidth} > clientWidth ${e.clientWidth}`);
  }
  for (const t of document.querySelectorAll(".card table.data")) {
    if (!shown(t)) continue;
    const card = t.closest(".card"), style = getComputedStyle(card);
    const inner = card.getBoundingClientRect().right - parseFloat(style.borderRightWidth) - parseFloat(style.paddingRight);
    const right = t.getBoundingClientRect().right;
    if (right > inner + 0.5) out.push(`${name(t)}: right edge ${right} past its card's content box (${inner})`);
  }
  return out;
}"""

# A chart's SVG box, legend box and tick labels (those with text and a size), in page pixels.
AXES = """(id) => {
  const el = document.getElementById(id);
  const box = (e) => {
    const r = e.getBoundingClientRect();
    return { left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width };
  };
  const labels = (sel) => [...el.querySelectorAll(sel)].filter((t) => t.textContent.trim())
    .map((t) => ({ text: t.textContent, ...box(t) })).filter((b) => b.width > 0);
  const svg = el.querySelector("svg.main-svg"), legend = el.querySelector("g.legend");
  return { empty: el.classList.contains("is-empty"), words: el.innerText.trim(), svg: svg && box(svg),
    legend: legend && box(legend), xticks: labels(".xtick text"), yticks: labels(".ytick text"),
    axes: el.querySelectorAll(".xaxislayer-above, .yaxislayer-above, .xtick, .ytick").length };
}"""


def _disjoint(a: dict, b: dict) -> bool:
    return a["right"] <= b["left"] or b["right"] <= a["left"] or a["bottom"] <= b["top"] or b["bottom"] <= a["top"]


def _inside(inner: dict, outer: dict, slack: float = 0.5) -> bool:
    return (inner["left"] >= outer["left"] - slack and inner["right"] <= outer["right"] + slack
            and inner["top"] >= outer["top"] - slack and inner["bottom"] <= outer["bottom"] + slack)


def assert_no_overflow(page, where: str) -> None:
    overflows = page.evaluate(OVERFLOWS)
    assert overflows == [], f"{where}: " + "; ".join(overflows)


def assert_axis_readable(page, chart: str, pattern: re.Pattern | None = None) -> list[str]:
    """The chart is drawn; its x tick labels (at least two) neither overlap each other nor the
    legend, and lie inside the chart's SVG, as do its y tick labels. Returns the x labels."""
    info = page.evaluate(AXES, chart)
    assert not info["empty"] and info["svg"], f"{chart} is not drawn: {info['words']!r}"
    ticks = info["xticks"]
    assert len(ticks) >= 2, f"{chart}: x tick labels {ticks}"
    for a, b in combinations(ticks, 2):
        assert _disjoint(a, b), f"{chart}: x tick labels overlap: {a} and {b}"
    for t in ticks + info["yticks"]:
        assert _inside(t, info["svg"]), f"{chart}: tick label {t} clipped by the chart's box {info['svg']}"
        if info["legend"] and t in ticks:
            assert _disjoint(t, info["legend"]), f"{chart}: x tick label {t} under the legend {info['legend']}"
    labels = [t["text"] for t in ticks]
    if pattern:
        assert all(pattern.match(text) for text in labels), f"{chart}: x tick labels {labels}"
    return labels


def assert_says_empty(page, chart: str, words: str) -> None:
    """No plot at all in the chart's box (no SVG, no axis), only the sentence."""
    info = page.evaluate(AXES, chart)
    assert info["empty"] and words in info["words"], f"{chart}: {info['words']!r}"
    assert info["svg"] is None and info["axes"] == 0 and info["xticks"] == [], f"{chart} draws axes: {info}"


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def show_overview(page, hours: str) -> None:
    """Select the range (when it is not the current one) and wait until the tab is drawn."""
    if page.input_value("#ov-range") != hours:
        with page.expect_response(lambda r: f"/admin/api/overview?hours={hours}&" in r.url):
            page.select_option("#ov-range", hours)
    page.wait_for_selector("#tab-overview:not([aria-busy])")
    page.wait_for_selector("#experts-table tbody tr")


@pytest.fixture(scope="module")
def quiet_app(tmp_path_factory):
    """An app that has served nothing yet."""
    with dashboard_app(tmp_path_factory.mktemp("quiet"), requests=0) as served:
        yield served


@pytest.fixture(scope="module")
def unrated_app(tmp_path_factory):
    """Traffic to two experts with long deployment names, and no feedback at all."""
    with dashboard_app(tmp_path_factory.mktemp("unrated"), LONG_NAMES, feedback_every=None) as served:
        yield served


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_overview_fits_and_axes_are_readable_in_every_range(browser, app_url, viewport):
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, app_url[0], viewport) as page:
        for hours, pattern in RANGES.items():
            show_overview(page, hours)
            where = f"overview, last {hours} h, {vp}"
            page.wait_for_selector("#chart-requests .barlayer .point", state="attached")
            assert_no_overflow(page, where)
            # The table that used to overflow: all of it inside its card, every row there.
            assert page.locator("#experts-table tbody tr").count() == 3
            for chart in TIME_CHARTS:
                assert_axis_readable(page, chart, pattern)
            assert_axis_readable(page, "chart-quality")
            assert page.locator("#chart-share .pielayer .slice").count() == 3
            shot(page, f"{vp}-overview-{hours}h.png")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_tuning_and_ledger_fit(browser, app_url, viewport):
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, app_url[0], viewport) as page:
        page.click("a[data-tab=tuning]")
        page.wait_for_selector("#chart-curve .scatterlayer .trace")
        page.wait_for_selector("#versions-table thead")
        assert_no_overflow(page, f"tuning, {vp}")
        assert_axis_readable(page, "chart-curve")
        shot(page, f"{vp}-tuning.png")

        page.click("a[data-tab=ledger]")
        page.wait_for_selector("#lg-table tbody tr[data-id]")
        page.locator("#lg-table tbody tr[data-id]").nth(1).click()  # an answered request: candidates, attempts
        page.wait_for_selector("#lg-attempts tbody tr")
        assert_no_overflow(page, f"ledger with a request's detail, {vp}")
        shot(page, f"{vp}-ledger.png")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_charts_without_data_say_so(browser, quiet_app, viewport):
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, quiet_app[0], viewport) as page:
        show_overview(page, "24")
        for chart in (*TIME_CHARTS, "chart-share"):
            assert_says_empty(page, chart, "No requests in this range")
        assert_says_empty(page, "chart-quality", "No feedback yet")
        assert page.is_hidden("#quality-table")
        assert "No requests in this range" in page.inner_text("#experts-table")
        assert_no_overflow(page, f"empty overview, {vp}")
        shot(page, f"{vp}-overview-no-traffic.png")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_no_feedback_and_long_expert_names(browser, unrated_app, viewport):
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, unrated_app[0], viewport) as page:
        show_overview(page, "24")
        assert_says_empty(page, "chart-quality", "No feedback yet")
        for chart in TIME_CHARTS:
            assert_axis_readable(page, chart, CLOCK)
        assert_no_overflow(page, f"overview with long expert names, {vp}")
        # Long names end in an ellipsis inside their column; the cell's tooltip is the whole name.
        cells = page.eval_on_selector_all("#experts-table td.name", """cells => cells.map((td) => ({
            title: td.title, text: td.textContent, clipped: td.scrollWidth > td.clientWidth,
            ellipsis: getComputedStyle(td).textOverflow === "ellipsis" }))""")
        assert {c["title"] for c in cells} >= set(LONG_NAMES)
        assert all(c["title"] == c["text"] and c["ellipsis"] for c in cells)
        assert any(c["clipped"] for c in cells)
        # The pie's legend shortens the names too, so the pie keeps its size.
        legend = page.evaluate(AXES, "chart-share")["legend"]
        svg = page.evaluate(AXES, "chart-share")["svg"]
        assert legend["width"] < 0.5 * (svg["right"] - svg["left"])
        shot(page, f"{vp}-overview-no-feedback-long-names.png")
