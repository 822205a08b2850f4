"""The dashboard's "Own experts" tab in Debian's headless Chromium (Playwright), against an app whose
autolearn job runs on simulated experts of known per-skill accuracy (tests/support/sim_experts.py,
through the World of tests/functional/test_calibration.py).

Shown: while the job calibrates (one expert held mid-run) the tab shows the stage, a progress bar
with done/total and ETA and a row of throughput per expert, and says in words that no matrix
exists yet; the page keeps polling and, without a reload, reaches "serving" once the expert is
released. Then the served policy reads knn, the gate's verdict, reason sentence and comparison
rows are those of the API, and the heat table has every skill × expert cell with the API's
quality and the best expert of each skill outlined. With autolearn off the tab explains why and
shows the empty state in words; a matrix with many skills and long expert names stays readable
(names clipped with a tooltip). Nothing overflows at 1280×800 or 1920×1080; screenshots go to
var/screenshots/ (git-ignored).
"""

from __future__ import annotations

import os
import re

import httpx
import numpy as np
import pytest
import yaml
from pydantic import SecretStr

from tests.conftest import remote_expert
from tests.integration.conftest import ADMIN, CHROMIUM, signed_in_page
from tests.integration.test_dashboard_layout import VIEWPORTS, assert_no_overflow, shot

pytestmark = pytest.mark.slow
if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed (make system-deps installs the Debian package)", allow_module_level=True)
pytest.importorskip("playwright.sync_api")
pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from core.settings import Settings  # noqa: E402
from tests.functional.test_calibration import PRICES, SKILLS, World  # noqa: E402
from tests.support.servers import serve_in_thread  # noqa: E402

PRIOR = {"math": 0.5, "words": 0.5, "big": 0.8}  # the hand-set prior sends everything to the dear generalist
HELD = 60  # the "math" expert answers this many calibration prompts, then waits until released
LEARN_TIMEOUT_MS = 300_000  # calibration, training and the gate on two shared cores
LONG = ["llama-3.3-70b-instruct-turbo.us-east-2.production", "qwen2.5-72b-instruct-awq.eu-west-1.canary-deployment",
        "mistral-small-24b", "phi-4-mini", "gemma-3-27b-it.eu-central-1", "deepseek-r1-distill-qwen-32b", "smollm2-135m"]
MANY_SKILLS = [f"skill-{i:02d}-" + w for i, w in enumerate(
    ["arithmetic", "count_letters", "reverse_word", "sentiment", "even_odd", "multiple_choice", "sql-generation",
     "python-code-completion-with-docstrings", "translation-en-de", "summarisation-of-long-legal-contracts", "trivia",
     "date-arithmetic", "unit-conversion", "regex", "json-extraction", "spelling", "analogies", "logic-puzzles",
     "chemistry", "geography", "biology-multiple-choice", "physics-word-problems", "poetry", "email-triage",
     "named-entities", "table-question-answering", "code-review", "math-proofs"])]

# The tab's state as the page shows it: stage, words, progress, the gate and both matrix tables.
VIEW = """() => {
  const $ = (id) => document.getElementById(id);
  const texts = (sel) => [...document.querySelectorAll(sel)].map((e) => e.textContent);
  const shown = (id) => $(id).getClientRects().length > 0;
  const heatRows = [...document.querySelectorAll("#al-heat tbody tr")].map((tr) => ({
    cls: tr.className, cells: [...tr.cells].map((td) => ({ text: td.textContent, title: td.title,
      best: td.classList.contains("best"), bg: td.style.background })) }));
  return {
    stage: $("al-stage").textContent, dataStage: $("tab-experts").dataset.stage, message: $("al-message").textContent,
    explain: $("al-explain").textContent, live: $("al-live").textContent,
    progressShown: shown("al-progress"), progressText: $("al-progress-text").textContent,
    bar: { now: $("al-bar").getAttribute("aria-valuenow"), max: $("al-bar").getAttribute("aria-valuemax"),
      width: $("al-bar").firstElementChild.style.width },
    progressRows: [...document.querySelectorAll("#al-progress-table tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
    progressHead: texts("#al-progress-table thead th"),
    served: $("al-served-policy").textContent, header: $("serving").textContent,
    verdict: $("al-verdict").textContent, verdictWords: $("al-verdict-words").textContent,
    reason: shown("al-reason") ? $("al-reason").textContent : null,
    gateShown: shown("al-gate-table"), gateHead: texts("#al-gate-table thead th"),
    gateRows: [...document.querySelectorAll("#al-gate-table tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
    gateDetails: $("al-gate-details").textContent,
    candidatesShown: shown("al-candidates-table"),
    candidateRows: [...document.querySelectorAll("#al-candidates-table tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
    expertRows: [...document.querySelectorAll("#al-matrix-experts tbody tr")].map((tr) => [...tr.cells].map((c) => c.textContent)),
    summary: $("al-matrix-summary").textContent,
    heatShown: shown("al-heat"), heatEmpty: shown("al-heat-empty") ? $("al-heat-empty").innerText : null,
    heatHead: [...document.querySelectorAll("#al-heat thead th")].map((th) => ({ text: th.textContent, title: th.title })),
    heatRows,
  };
}"""

# Every name cell and expert header of the tab's tables that is clipped: its tooltip must be the full text.
CLIPPED = """() => [...document.querySelectorAll("#tab-experts table.data td.name, #al-heat th")]
  .filter((e) => e.getClientRects().length > 0)
  .map((e) => ({ text: e.textContent, title: e.title, clipped: e.scrollWidth > e.clientWidth,
    ellipsis: getComputedStyle(e).textOverflow === "ellipsis" }))"""


def _settings(world: World, tmp_path, *, enabled: bool = True, tuning=None) -> Settings:
    """The pattern of tests/functional/test_autolearn.py, with a long expert timeout (an expert is
    held mid-calibration while the browser looks) and the dashboard's admin token."""
    experts = []
    for name, url in world.urls.items():
        pin, pout = PRICES[name]
        experts.append(remote_expert(name, url, input_usd_per_mtok=pin, output_usd_per_mtok=pout, params_b=1.0,
                                     prior_quality=PRIOR[name], description=f"simulated expert {name}", timeout_s=180))
    cfg = {"experts": experts, "policy": {"active": "prior", "lambda": 0},
           "autolearn": {"enabled": enabled, "source": f"jsonl:{world.prompts}", "limit": None, "policy": "knn",
                         "out": str(tmp_path / "calibration"), "start_delay_s": 0.5}}
    if tuning is not None:
        cfg["tuning"] = {"data": str(tuning)}
    path = tmp_path / "expertmux.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Settings(config=path, data_dir=tmp_path / "var", autostart_experts=False, registry_poll_s=0,
                    admin_token=SecretStr(ADMIN))


def _board(url: str) -> dict:
    return httpx.get(f"{url}/admin/api/autolearn", headers={"authorization": f"Bearer {ADMIN}"}, timeout=30).json()


def _open_tab(page, stage: str | None = None, timeout: float = 30_000):
    page.click("a[data-tab=experts]")
    page.wait_for_selector("#tab-experts:not([hidden]):not([aria-busy])")
    if stage:
        page.wait_for_selector(f"#tab-experts[data-stage={stage}]", timeout=timeout)
    return page.evaluate(VIEW)


@pytest.fixture(scope="module")
def learning(tmp_path_factory):
    """The app with autolearn on; "math" holds its answers after HELD calibration prompts until
    released (the tests release it). Yields (url, world)."""
    from api.app import create_app

    tmp = tmp_path_factory.mktemp("autolearn")
    with World(tmp, math={"hold_after": HELD}) as world:
        app = create_app(_settings(world, tmp))
        with serve_in_thread(app) as url:
            yield url, world


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """Two apps with autolearn off: one with no matrix at all, one whose tuning data set is a
    matrix of many skills and long expert names. Yields {"empty": url, "wide": (url, matrix)}."""
    import pandas as pd

    from api.app import create_app

    tmp = tmp_path_factory.mktemp("autolearn-off")
    rng = np.random.default_rng(0)
    rows = [{"qid": f"q{i}", "prompt": f"prompt {i}", "task": skill, "split": "test" if i % 10 < 3 else "train"}
            for i, skill in enumerate(MANY_SKILLS * 5)]
    frame = pd.DataFrame(rows)
    for j, name in enumerate(LONG):
        frame[f"score::{name}"] = (rng.random(len(frame)) < 0.2 + 0.1 * j).astype(float)
        frame[f"cost_usd::{name}"] = 1e-6 * (j + 1) ** 3
        frame[f"latency_s::{name}"] = 0.05 * (j + 1)
    wide = tmp / "wide-matrix"
    wide.mkdir()
    frame.to_parquet(wide / "matrix.parquet", index=False)
    with World(tmp) as world:
        (tmp / "empty").mkdir()
        (tmp / "wide").mkdir()
        empty_app = create_app(_settings(world, tmp / "empty", enabled=False))
        wide_app = create_app(_settings(world, tmp / "wide", enabled=False, tuning=wide))
        with serve_in_thread(empty_app) as empty_url, serve_in_thread(wide_app) as wide_url:
            yield {"empty": empty_url, "wide": (wide_url, frame)}


def test_progress_while_calibrating_then_serving_without_a_reload(browser, learning):
    url, world = learning
    pages = []
    try:
        for viewport in (VIEWPORTS[0].values[0], VIEWPORTS[1].values[0]):
            vp = f"{viewport['width']}x{viewport['height']}"
            cm = signed_in_page(browser, url, viewport)
            page = cm.__enter__()
            pages.append(cm)
            view = _open_tab(page, "calibrating")
            # the page polls: wait until every expert has a row and the free ones are through
            page.wait_for_function("""() => {
              const rows = [...document.querySelectorAll("#al-progress-table tbody tr")].map((tr) => tr.cells[1].textContent);
              return rows.length === 3 && rows.filter((s) => s === "done").length === 2;
            }""", timeout=60_000)
            view = page.evaluate(VIEW)
            assert view["stage"] == "calibrating" and "grading big, math, words" in view["message"]
            assert "grading every answer" in view["explain"] and "live" in view["live"]
            assert view["progressShown"]
            total = 3 * len(world.items)
            done = int(view["bar"]["now"])
            assert view["bar"]["max"] == str(total) and 2 * len(world.items) <= done < total
            assert float(view["bar"]["width"].rstrip("%")) == pytest.approx(100 * done / total, abs=0.05), view["bar"]
            assert re.search(rf"[\d,]+ of {total:,} answers graded \(\d+\.\d%\)", view["progressText"]), view["progressText"]
            assert "spent" in view["progressText"] and "elapsed" in view["progressText"]
            assert view["progressHead"] == ["expert", "state", "graded", "failed", "answers/s", "tokens/s", "spent", "left"]
            by_name = {row[0]: row for row in view["progressRows"]}
            assert set(by_name) == {"math", "words", "big"}
            assert by_name["math"][1] == "running" and by_name["math"][2].endswith(f"/ {len(world.items)}")
            assert by_name["words"][2] == f"{len(world.items)} / {len(world.items)}"
            assert all(float(row[4]) > 0 for row in view["progressRows"])  # throughput per expert
            # no matrix yet: said in words, no table
            assert "No calibration matrix yet" in view["heatEmpty"] and not view["heatShown"]
            assert view["verdict"] == "not gated" and view["served"] == "prior"
            assert_no_overflow(page, f"own experts while calibrating, {vp}")
            shot(page, f"{vp}-own-experts-calibrating.png")
        # released, the last page follows the job to "serving" by polling alone
        world.sims["math"].release.set()
        page.wait_for_selector("#tab-experts[data-stage=serving]", timeout=LEARN_TIMEOUT_MS)
        view = page.evaluate(VIEW)
        assert view["served"] == "knn" and "knn" in view["header"] and view["verdict"] == "promoted"
    finally:
        world.sims["math"].release.set()
        for cm in reversed(pages):
            cm.__exit__(None, None, None)


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_serving_shows_the_gate_and_the_matrix(browser, learning, viewport):
    url, world = learning
    world.sims["math"].release.set()
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, url, viewport) as page:
        view = _open_tab(page, "serving", timeout=LEARN_TIMEOUT_MS)
        board = _board(url)
        job, matrix, gate = board["job"], board["matrix"], board["job"]["gate"]
        assert job["stage"] == "serving" and board["active_policy"] == "knn"
        view = page.evaluate(VIEW)  # drawn from the same final state

        # the job and the served policy
        assert view["stage"] == "serving" and view["message"] == job["message"]
        assert "passed the gate" in view["explain"] and "live" not in view["live"]
        assert not view["progressShown"]
        assert view["served"] == "knn" and "serving: knn" in view["header"]
        # the gate: verdict, its reason sentence, and one row per compared metric
        assert view["verdict"] == "promoted" and job["version"] in view["verdictWords"]
        assert view["reason"] == gate["reason"] and "beats" in gate["reason"]
        assert view["gateShown"] and view["gateHead"] == ["metric", "knn", "prior", "delta"]
        assert [r[0] for r in view["gateRows"]] == [r["metric"] for r in gate["rows"]]
        aiq = next(r for r in view["gateRows"] if r[0] == "aiq")
        row = next(r for r in gate["rows"] if r["metric"] == "aiq")
        assert aiq[3].startswith("+") and row["delta"] > 0
        for text, value in zip(aiq[1:], (row["candidate"], row["incumbent"], row["delta"]), strict=True):
            assert float(text.lstrip("+")) == pytest.approx(value, abs=0.0005 + 1e-9)
        assert "against policy:prior" in view["gateDetails"] and "test split" in view["gateDetails"]

        # per expert: every expert, its quality
        experts = matrix["experts"]
        assert sorted(experts) == ["big", "math", "words"]
        assert [r[0] for r in view["expertRows"]] == experts
        for r in view["expertRows"]:
            assert float(r[1]) == pytest.approx(matrix["overall"][r[0]]["quality"], abs=0.0005 + 1e-9)
        # skill × expert: every expert a column, every skill a row, each cell the API's quality
        assert [h["title"] for h in view["heatHead"][2:]] == experts
        assert view["heatRows"][0]["cells"][0]["text"] == "all skills"
        skills = [r["cells"][0]["text"] for r in view["heatRows"][1:]]
        assert skills == matrix["skills"] == sorted(SKILLS)
        for r in view["heatRows"][1:]:
            skill = r["cells"][0]["text"]
            qualities = {e: matrix["per_skill"][skill][e]["quality"] for e in experts}
            cells = dict(zip(experts, r["cells"][2:], strict=True))
            for e in experts:
                assert float(cells[e]["text"]) == pytest.approx(qualities[e], abs=0.005 + 1e-9), (skill, e)
                assert cells[e]["bg"].startswith("rgba(47, 111, 222") and skill in cells[e]["title"]
            top = max(qualities.values())
            assert [e for e in experts if cells[e]["best"]] == [e for e in experts if qualities[e] == top], skill
        assert "6 skills" in view["summary"] and view["heatShown"] and view["heatEmpty"] is None

        assert_no_overflow(page, f"own experts serving, {vp}")
        shot(page, f"{vp}-own-experts-serving.png")
        # the stage is final: the page stops polling
        calls: list[str] = []
        page.on("request", lambda r: calls.append(r.url) if "/admin/api/autolearn" in r.url else None)
        page.wait_for_timeout(2_500 + 3_000)
        assert calls == []


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_autolearn_off_says_why_and_shows_the_empty_state(browser, idle, viewport):
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, idle["empty"], viewport) as page:
        view = _open_tab(page, "off")
        assert view["stage"] == "off"
        assert "autolearn.enabled: false" in view["message"]
        assert "Autolearn does not run in this process" in view["explain"] and "prior" in view["explain"]
        assert view["served"] == "prior" and view["verdict"] == "not gated" and view["verdictWords"] == "autolearn is off"
        assert view["reason"] is None and not view["gateShown"] and not view["progressShown"]
        assert not view["heatShown"] and "No calibration matrix: autolearn is off" in view["heatEmpty"]
        assert len(view["expertRows"]) == 1 and len(view["expertRows"][0]) == 1  # one row: the sentence
        assert "No calibration matrix" in view["expertRows"][0][0]
        assert_no_overflow(page, f"own experts, autolearn off, {vp}")
        shot(page, f"{vp}-own-experts-off.png")


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_many_skills_and_long_expert_names_stay_readable(browser, idle, viewport):
    url, frame = idle["wide"]
    vp = f"{viewport['width']}x{viewport['height']}"
    with signed_in_page(browser, url, viewport) as page:
        view = _open_tab(page, "off")
        assert view["heatShown"] and view["heatEmpty"] is None
        assert [h["title"] for h in view["heatHead"][2:]] == LONG
        assert [r["cells"][0]["text"] for r in view["heatRows"][1:]] == sorted(MANY_SKILLS)
        assert [r[0] for r in view["expertRows"]] == LONG
        for r in view["heatRows"][1:]:
            skill = r["cells"][0]["text"]
            for e, cell in zip(LONG, r["cells"][2:], strict=True):
                mean = frame.loc[frame["task"] == skill, f"score::{e}"].mean()
                assert float(cell["text"]) == pytest.approx(mean, abs=0.005 + 1e-9), (skill, e)
            means = {e: frame.loc[frame["task"] == skill, f"score::{e}"].mean() for e in LONG}
            best = [e for e, cell in zip(LONG, r["cells"][2:], strict=True) if cell["best"]]
            assert best == [e for e in LONG if means[e] == max(means.values())], skill  # every tie outlined
        # long names end in an ellipsis inside their column, the tooltip is the whole name
        cells = page.evaluate(CLIPPED)
        assert all(c["ellipsis"] and (not c["clipped"] or c["title"] == c["text"]) for c in cells), cells
        assert any(c["clipped"] and c["text"] in LONG for c in cells)
        assert_no_overflow(page, f"own experts, {len(MANY_SKILLS)} skills × {len(LONG)} experts, {vp}")
        shot(page, f"{vp}-own-experts-many-skills.png")


REFUSED_ROWS = [{"metric": "aiq", "candidate": 0.6012, "incumbent": 0.6348, "delta": -0.0336, "higher_is_better": True},
                {"metric": "cost@λ", "candidate": 0.00031, "incumbent": 0.00023, "delta": 0.00008, "higher_is_better": False}]
REFUSED_REASON = "aiq on calibration/test 0.6012 is not above 0.6348 (needs > +0)"


@pytest.mark.parametrize("viewport", VIEWPORTS)
def test_refused_and_failed_read_in_words(browser, idle, viewport):
    """The two outcomes the simulated experts do not produce, answered by the page's own route
    (payloads in the endpoint's shape, as router/lifecycle/autolearn.py writes them)."""
    vp = f"{viewport['width']}x{viewport['height']}"
    base = {"policy": "knn", "version": "v2-5e1f", "artifact": "/var/policies/autolearn/knn/v2", "matrix": "/var/calibration/own",
            "experts": ["big", "math", "words"], "progress": {}, "started_at": 1.7e9, "finished_at": 1.7e9 + 95}
    candidates = [{"policy": "knn", "params": {}, "cv_aiq": 0.6011, "chosen": True},
                  {"policy": "probe", "params": {"conditioning": "category", "dtype": "int8"}, "cv_aiq": 0.5987},
                  {"policy": "graphrouter", "params": {}, "error": "too few rows"}]
    refused = {**base, "stage": "refused", "message": f"kept prior: {REFUSED_REASON}", "candidates": candidates,
               "gate": {"passed": False, "reason": REFUSED_REASON, "rows": REFUSED_ROWS, "action": "refuse", "previous": None,
                        "details": {"gate": "benchmark", "data": "/var/calibration/own", "split": "test", "lambda": 0.0,
                                    "incumbent_artifact": "policy:prior", "n_queries": 36}}}
    failed = {**base, "stage": "failed", "version": None, "gate": None, "message": "CalibrationError: every expert is down"}
    payload = {"job": refused, "matrix": None, "active_policy": "prior"}
    with signed_in_page(browser, idle["empty"], viewport) as page:
        page.route("**/admin/api/autolearn", lambda route: route.fulfill(json=payload))
        view = _open_tab(page, "refused")
        assert view["verdict"] == "refused" and view["verdictWords"] == "prior kept"
        assert view["reason"] == REFUSED_REASON and "did not beat prior" in view["explain"]
        assert view["gateRows"] == [["aiq", "0.601", "0.635", "−0.034"], ["cost@λ", "$0.00031", "$0.00023", "+$8.0e-5"]]
        worse = page.eval_on_selector_all("#al-gate-table td.delta", "tds => tds.map((td) => td.className)")
        assert worse == ["num delta worse", "num delta worse"]  # lower aiq, higher cost: both worse
        assert "No calibration matrix" in view["heatEmpty"]
        assert view["candidatesShown"] and view["candidateRows"] == [
            ["knn", "0.6011", "trained"], ["probe (conditioning=category, dtype=int8)", "0.5987", ""],
            ["graphrouter", "–", "could not be fitted"]]
        assert_no_overflow(page, f"own experts, refused, {vp}")
        shot(page, f"{vp}-own-experts-refused.png")

        payload["job"] = failed  # a final stage is not polled: load the page again (on #experts)
        page.reload()
        page.wait_for_selector("#tab-experts[data-stage=failed]")
        view = page.evaluate(VIEW)
        assert view["stage"] == "failed" and view["message"] == failed["message"]
        assert "keeps serving prior" in view["explain"] and view["verdictWords"] == "the job ended before the gate"
        assert not view["candidatesShown"]  # a job without candidates trains its one policy
        assert page.get_attribute("#al-stage", "class") == "badge bad"
        assert_no_overflow(page, f"own experts, failed, {vp}")
