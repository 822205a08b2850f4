"""Promote and roll back a learned policy's version from the dashboard in headless Chromium:
the running app serves the promoted version on the next request, and the configured one again
after the rollback."""

from __future__ import annotations

import os

import openai
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy.orm import Session

from core.settings import Settings
from router.ledger.models import RequestRow
from tests.conftest import remote_expert
from tests.support.servers import serve_in_thread

CHROMIUM = "/usr/bin/chromium"
ADMIN = "promote-admin-token"
MAP = {"small": "cheap", "mid": "cheap", "large": "strong"}

pytestmark = pytest.mark.slow
if not os.path.exists(CHROMIUM):
    pytest.skip("Chromium is not installed (make system-deps installs the Debian package)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("pyarrow", reason="the ml extra is not installed")


def test_promote_and_roll_back_from_the_page(tmp_path, upstreams):
    from api.app import create_app
    from policies.embeddings import configure_encoders
    from policies.training import train_policy
    from router.lifecycle import registry as policy_registry
    from tests.support.routing_matrix import write_matrix
    from tests.unit.test_policy_registry import PARAMS, _matrix

    configure_encoders(cache_dir=None)
    bad = train_policy("knn", _matrix(True), params=PARAMS, out=tmp_path / "artifacts" / "knn").path
    good = train_policy("knn", _matrix(False), params=PARAMS, out=tmp_path / "artifacts" / "knn").path
    bench = write_matrix(tmp_path / "bench", n_per_task=40, seed=3)
    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8)]
    cfg = tmp_path / "expertmux.yaml"
    cfg.write_text(yaml.safe_dump({"experts": experts, "policy": {
        "active": "knn", "lambda": 0, "options": {"knn": {"artifact": str(bad), "expert_map": MAP}},
        "gate": {"data": str(bench), "split": "test"}},
        "tuning": {"data": str(bench), "expert_map": {"small": "cheap", "large": "strong"}}}))
    settings = Settings(config=cfg, data_dir=tmp_path / "var", autostart_experts=False, registry_poll_s=0,
                        admin_token=SecretStr(ADMIN))
    app = create_app(settings)
    with serve_in_thread(app) as url, playwright_api.sync_playwright() as p:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)

        def served_version() -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="expertmux/auto", messages=[{"role": "user", "content": "solve this integer equation"}])
            assert app.state.service.ledger.flush(10)
            with Session(app.state.service.ledger.engine) as s:
                return s.get(RequestRow, raw.headers["x-expertmux-request-id"]).policy_version

        configured = served_version()
        good_version = policy_registry.register(app.state.service.ledger.engine, "knn", good)
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(f"{url}/admin/login")
        page.fill("#token", ADMIN)
        page.click("#login-submit")
        page.wait_for_url(f"{url}/admin")
        page.click("a[data-tab=tuning]")
        page.wait_for_selector("#chart-curve .scatterlayer .trace")
        assert page.input_value("#tu-policy") == "knn"
        page.click("#versions-table button.promote")
        page.wait_for_selector("#tu-registry-result:has-text('promote')")
        assert good_version in page.inner_text("#tu-registry-result")
        assert served_version() == good_version  # the next request, no restart
        assert "active" in page.inner_text("#versions-table")
        page.fill("#tu-reason", "checking the rollback")
        page.click("#tu-rollback")
        page.wait_for_selector("#tu-registry-result:has-text('rollback')")
        assert served_version() == configured
        history = page.inner_text("#events-table")
        assert "promote" in history and "rollback" in history and "checking the rollback" in history
        browser.close()
    assert problems == []
