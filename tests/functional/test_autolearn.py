"""The autolearn job inside a running proxy, against simulated experts of known per-skill accuracy.

Shown: the proxy serves the prior from the first request; in the background the job calibrates
the experts, trains knn on their own matrix, the gate compares it with the prior on the held-out
split, and the promoted version becomes the active policy while clients keep sending requests
(none fails, and the responses say which policy routed them). A restart serves the promoted
version again without calling any expert for calibration; the dashboard API shows the matrix and
the gate's reason. A second deployment (another data dir) sharing the calibration folder reuses its
graded cells but trains, registers and serves its own artifact.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from pydantic import SecretStr

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from openai import OpenAI  # noqa: E402

from core.settings import Settings  # noqa: E402
from tests.conftest import remote_expert  # noqa: E402
from tests.functional.test_calibration import PRICES, World  # noqa: E402
from tests.support.servers import serve_in_thread  # noqa: E402

ADMIN = "autolearn-admin-token"
PRIOR = {"math": 0.5, "words": 0.5, "big": 0.8}  # the hand-set prior sends everything to the dear generalist


def _settings(world: World, tmp_path, *, enabled: bool = True, **autolearn) -> Settings:
    experts = []
    for name, url in world.urls.items():
        pin, pout = PRICES[name]
        experts.append(remote_expert(name, url, input_usd_per_mtok=pin, output_usd_per_mtok=pout, params_b=1.0,
                                     prior_quality=PRIOR[name], description=f"simulated expert {name}"))
    cfg = {"experts": experts, "policy": {"active": "prior", "lambda": 0},
           "autolearn": {"enabled": enabled, "source": f"jsonl:{world.prompts}", "limit": None, "policy": "knn",
                         "out": str(tmp_path / "calibration"), "start_delay_s": 0.5, **autolearn}}
    path = tmp_path / "expertmux.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Settings(config=path, data_dir=tmp_path / "var", autostart_experts=False, registry_poll_s=0,
                    admin_token=SecretStr(ADMIN))


class Traffic(threading.Thread):
    """Clients sending one request after another through the official openai client."""

    def __init__(self, url: str, prompts: list[str]) -> None:
        super().__init__(daemon=True)
        self.client = OpenAI(base_url=f"{url}/v1", api_key="local", max_retries=0, timeout=30)
        self.prompts, self.stop = prompts, threading.Event()
        self.policies: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            prompt = self.prompts[i % len(self.prompts)]
            i += 1
            try:
                raw = self.client.chat.completions.with_raw_response.create(
                    model="expertmux/auto", messages=[{"role": "user", "content": prompt}], max_tokens=8)
                raw.parse()
                self.policies.append(raw.headers["x-expertmux-policy"])
            except Exception as exc:  # every failure is a finding
                self.failures.append(repr(exc))


def _wait_for(job, stages, timeout_s: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = job.status()
        if status["stage"] in stages:
            return status
        time.sleep(0.2)
    raise AssertionError(f"autolearn did not reach {stages}: {job.status()}")


def test_autolearn_calibrates_trains_gates_and_swaps_under_traffic(tmp_path):
    from api.app import create_app

    with World(tmp_path) as world:
        settings = _settings(world, tmp_path)
        app = create_app(settings)
        job = app.state.runtime.autolearn
        with serve_in_thread(app) as url:
            traffic = Traffic(url, [it.prompt for it in world.items[:40]])
            traffic.start()
            status = _wait_for(job, {"serving", "refused", "failed"})
            time.sleep(1.0)  # requests after the swap
            traffic.stop.set()
            traffic.join(timeout=30)

            assert status["stage"] == "serving", status
            assert traffic.failures == []
            # served by the prior first, then by the learned policy, with no gap in between
            assert traffic.policies[0] == "prior" and traffic.policies[-1] == "knn"
            switch = traffic.policies.index("knn")
            assert set(traffic.policies[switch:]) == {"knn"}
            assert app.state.service.policies.active_name == "knn"
            models = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
            assert "expertmux/knn" in models
            # the gate compared the candidate with the served prior on the held-out split
            assert status["gate"]["passed"] is True and "aiq" in status["gate"]["reason"]
            assert status["gate"]["details"]["incumbent_artifact"] == "policy:prior"
            board = httpx.get(f"{url}/admin/api/autolearn", headers={"authorization": f"Bearer {ADMIN}"}).json()
            assert board["job"]["stage"] == "serving" and board["active_policy"] == "knn"
            matrix = board["matrix"]
            assert set(matrix["experts"]) == {"math", "words", "big"}
            assert matrix["per_skill"]["arithmetic"]["math"]["quality"] > matrix["per_skill"]["arithmetic"]["words"]["quality"]
        calls_after_first_run = {n: s.total_calls for n, s in world.sims.items()}

        # A restart reuses what was done: the promoted version serves at once, nothing is recalibrated.
        app2 = create_app(settings)
        with serve_in_thread(app2):
            status2 = _wait_for(app2.state.runtime.autolearn, {"serving", "refused", "failed"}, timeout_s=120)
            assert status2["stage"] == "serving" and "earlier run" in status2["message"]
            assert app2.state.service.policies.active_name == "knn"
        assert {n: s.total_calls for n, s in world.sims.items()} == calls_after_first_run


def test_another_data_dir_sharing_the_calibration_folder_serves_its_own_artifact(tmp_path):
    from api.app import create_app

    with World(tmp_path) as world:
        first = _settings(world, tmp_path)
        app = create_app(first)
        with serve_in_thread(app):
            status = _wait_for(app.state.runtime.autolearn, {"serving", "refused", "failed"})
        assert status["stage"] == "serving", status
        calls = {n: s.total_calls for n, s in world.sims.items()}

        second = first.model_copy(update={"data_dir": tmp_path / "other"})
        app2 = create_app(second)
        with serve_in_thread(app2):
            status2 = _wait_for(app2.state.runtime.autolearn, {"serving", "refused", "failed"})
            assert status2["stage"] == "serving", status2
            assert "earlier run" not in status2["message"]  # the first deployment's promotion is not this one's
            assert Path(status2["artifact"]).is_relative_to(tmp_path / "other")
            assert app2.state.service.policies.active_name == "knn"
        assert {n: s.total_calls for n, s in world.sims.items()} == calls  # the graded cells were reused
        states = [json.loads((d / "autolearn.json").read_text()) for d in (tmp_path / "var", tmp_path / "other")]
        assert [s["matrix"] for s in states] == [str(tmp_path / "calibration")] * 2
        assert Path(states[0]["artifact"]).is_relative_to(tmp_path / "var")
        assert not (tmp_path / "calibration" / "autolearn.json").exists()


def test_the_config_switch_turns_the_job_off(tmp_path):
    from api.app import create_app

    with World(tmp_path) as world:
        app = create_app(_settings(world, tmp_path, enabled=False))
        assert app.state.runtime.autolearn is None
        settings = _settings(world, tmp_path)
        assert create_app(settings.model_copy(update={"autolearn": False})).state.runtime.autolearn is None


def test_autolearn_trains_the_candidate_that_cross_validates_best(tmp_path):
    from api.app import create_app

    with World(tmp_path) as world:
        app = create_app(_settings(world, tmp_path, candidates=["knn", {"tryage": {"random_state": 1}}]))
        job = app.state.runtime.autolearn
        with serve_in_thread(app) as url:
            status = _wait_for(job, {"serving", "refused", "failed"})
            assert status["stage"] in ("serving", "refused"), status
            table = status["candidates"]
            assert [(r["policy"], r["params"]) for r in table] == [("knn", {}), ("tryage", {"random_state": 1})]
            best = max(table, key=lambda r: r["cv_aiq"])  # both fit on these rows
            assert status["policy"] == best["policy"]
            if status["stage"] == "serving":
                assert app.state.service.policies.active_name == best["policy"]
            board = httpx.get(f"{url}/admin/api/autolearn", headers={"authorization": f"Bearer {ADMIN}"}).json()
            assert board["job"]["candidates"] == table
        app2 = create_app(_settings(world, tmp_path, candidates=["knn", {"tryage": {"random_state": 1}}]))
        with serve_in_thread(app2):  # a restart serves the chosen candidate's promoted version again
            again = _wait_for(app2.state.runtime.autolearn, {"serving", "refused", "failed"}, timeout_s=120)
            assert (again["stage"], again["policy"]) == (status["stage"], status["policy"])
