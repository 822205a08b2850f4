"""The policy registry end to end: a running app (real port, SQLite file, fake upstream experts)
serves a learned policy; `expertmux policies promote` (the real CLI, another process) gates a
candidate on a benchmark set, and the app serves it without a restart; a worse candidate is
refused; `rollback` brings the configured artifact back."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy.orm import Session

from core.settings import Settings
from router.ledger.models import RequestRow
from tests.conftest import remote_expert
from tests.support.servers import serve_in_thread
from tests.unit.test_policy_registry import PARAMS, _matrix

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

ADMIN = "admin-secret"
HI = [{"role": "user", "content": "compute the sum of this integer equation"}]
MAP = {"small": "cheap", "mid": "cheap", "large": "strong"}


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "policies", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_promote_and_rollback_reach_the_running_app(tmp_path, upstreams):
    from api.app import create_app
    from policies.embeddings import configure_encoders
    from policies.training import train_policy
    from tests.support.routing_matrix import write_matrix

    configure_encoders(cache_dir=None)
    bad = train_policy("knn", _matrix(True), params=PARAMS, out=tmp_path / "artifacts" / "knn").path
    good = train_policy("knn", _matrix(False), params=PARAMS, out=tmp_path / "artifacts" / "knn").path
    bench = write_matrix(tmp_path / "bench", n_per_task=40, seed=3)
    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8)]
    cfg_path = tmp_path / "expertmux.yaml"
    cfg_path.write_text(yaml.safe_dump({"experts": experts, "policy": {
        "active": "knn", "lambda": 0, "options": {"knn": {"artifact": str(bad), "expert_map": MAP}},
        "gate": {"data": str(bench), "split": "test"}}}))
    settings = Settings(config=cfg_path, data_dir=tmp_path / "var", autostart_experts=False, registry_poll_s=0.2,
                        admin_token=SecretStr(ADMIN))
    env = {**os.environ, "COLUMNS": "250", "EXPERTMUX_CONFIG": str(cfg_path), "EXPERTMUX_DATA_DIR": str(tmp_path / "var")}
    app = create_app(settings)
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0)

        def served_version() -> str:
            raw = client.chat.completions.with_raw_response.create(model="expertmux/auto", messages=HI)
            assert app.state.service.ledger.flush(10)
            with Session(app.state.service.ledger.engine) as s:
                version = s.get(RequestRow, raw.headers["x-expertmux-request-id"]).policy_version
            assert raw.headers["x-expertmux-policy-version"] == version  # the client sees what the ledger records
            return version

        def wait_for(version: str) -> None:
            deadline = time.monotonic() + 15
            while served_version() != version:
                assert time.monotonic() < deadline, f"the app still serves {served_version()}, not {version}"
                time.sleep(0.1)

        configured = served_version()
        assert configured.startswith("v1-")
        out = cli("register", "knn", str(good), "--source", "synthetic", env=env)
        assert out.returncode == 0, out.stderr
        good_version = out.stdout.split()[2]
        assert good_version.startswith("v2-")
        bad_version = cli("register", "knn", str(bad), env=env).stdout.split()[2]
        assert bad_version == configured  # the same artifact: the version decisions already record

        promoted = cli("promote", "knn", good_version, "--actor", "alice", env=env)
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "promoted" in promoted.stdout and "aiq" in promoted.stdout and "utility@λ" in promoted.stdout
        wait_for(good_version)
        listed = httpx.get(f"{url}/admin/policies", headers={"authorization": f"Bearer {ADMIN}"}).json()["data"]
        assert next(p for p in listed if p["name"] == "knn")["version"] == good_version

        refused = cli("promote", "knn", bad_version, env=env)
        assert refused.returncode == 1 and "refused" in refused.stdout and "does not beat" in refused.stdout
        assert served_version() == good_version

        rolled = cli("rollback", "knn", "--reason", "test", env=env)
        assert rolled.returncode == 0 and "(configured artifact)" in rolled.stdout, rolled.stdout + rolled.stderr
        wait_for(configured)

        shown = cli("show", "knn", good_version, env=env)
        assert shown.returncode == 0 and "rollback" in shown.stdout and "refuse" in shown.stdout and "alice" in shown.stdout
        listing = cli("list", env=env)
        assert good_version in listing.stdout and bad_version in listing.stdout
