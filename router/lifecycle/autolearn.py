"""The background job that makes a fresh deployment route on its own experts' results.

While the proxy serves with the configured policy (the hand-set ``prior`` by default), the job
(1) calibrates the configured experts on a graded prompt set (``router.calibration``: resumable,
every finished cell on disk), (2) trains the configured learned policy on that matrix with no
``expert_map`` (its models are the experts, by name) — or, given ``candidates``, the one of them
with the best cross-validated aiq on the matrix's train rows (``router.lifecycle.candidates``) —
(3) compares it with the served policy on the matrix's held-out split through the promotion gate
(``BenchmarkGate``: not worse on the cost–quality frontier and at the served λ), and (4) if it
passes, registers and promotes the version and swaps it in as the active policy without a
restart; requests in flight finish on the policy they started with.

Every step's outcome is kept in ``<data dir>/autolearn.json``, beside the registry database and
the artifacts it names, so a restart reuses what was done: a promoted version is served again at
once, a calibration resumes where it stopped (its cells are in the calibration folder), and a
refusal is not retried for the same matrix. The state names its calibration folder: a deployment
with another data dir that shares the folder reuses its graded cells but never serves the other
deployment's artifact. Progress and the gate's reason are on
``status()`` (the dashboard and ``/admin/api/autolearn``) and in the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import AutoLearnConfig
from core.errors import ExpertmuxError

log = logging.getLogger("expertmux.autolearn")

@dataclass
class AutoLearnStatus:
    """What the dashboard shows: the stage, calibration progress, and the outcome with its reason."""

    stage: str = "waiting"  # waiting | calibrating | choosing | training | gating | serving | refused | failed | stopped
    policy: str | None = None
    version: str | None = None
    artifact: str | None = None
    matrix: str | None = None
    experts: list[str] = field(default_factory=list)
    progress: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # each candidate's cross-validated aiq
    gate: dict[str, Any] | None = None
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None

    def public(self) -> dict[str, Any]:
        return asdict(self)


class AutoLearn:
    """One job per process; ``run`` is the task the runtime starts and cancels."""

    def __init__(self, cfg: AutoLearnConfig, *, settings, policies, experts, engine) -> None:
        from core.settings import PROJECT_ROOT

        self.cfg, self.settings, self.policies, self.experts, self.engine = cfg, settings, policies, experts, engine
        out = Path(cfg.out)
        self.out = out if out.is_absolute() else PROJECT_ROOT / out
        from router.lifecycle.candidates import parse_candidates

        self.candidates = parse_candidates(cfg.candidates)  # a typo fails at start, not after calibrating
        self.policy, self.params = cfg.policy, {}  # the candidate chosen by cross-validation, when there are several
        self._status = AutoLearnStatus(policy=cfg.policy, matrix=str(self.out), experts=sorted(experts.names))
        self._last_logged = 0.0

    # ---- what the dashboard reads ---------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self._status.public()

    @property
    def state_path(self) -> Path:
        return Path(self.settings.data_dir) / "autolearn.json"

    # ---- the job --------------------------------------------------------------------------------
    async def run(self) -> None:
        st = self._status
        st.started_at = time.time()
        try:
            await asyncio.sleep(self.cfg.start_delay_s)
            if await self._resume():
                return
            await self._calibrate()
            path = await self._train()
            await self._gate_and_swap(path)
        except asyncio.CancelledError:
            st.stage, st.message = "stopped", "stopped with the proxy; the next start resumes the calibration"
            raise
        except ExpertmuxError as exc:
            self._fail(exc.message)
        except Exception as exc:  # the proxy keeps serving whatever happens here
            log.exception("autolearn failed")
            self._fail(f"{type(exc).__name__}: {exc}")
        finally:
            st.finished_at = time.time()

    def _fail(self, message: str) -> None:
        self._status.stage, self._status.message = "failed", message
        log.warning("autolearn failed: %s (the service keeps serving %s)", message, self.policies.active_name)

    async def _resume(self) -> bool:
        """Serve what an earlier run promoted; skip a matrix whose candidate was refused."""
        state = self._read_state()
        if (not state or state.get("matrix") != str(self.out) or state.get("experts") != self._status.experts
                or state.get("choice") != self._choice()):
            return False  # never run, or the folder, the experts or the policies changed: calibrate (new cells only)
        st = self._status
        self.policy = st.policy = state.get("policy") or self.cfg.policy  # the candidate that run chose
        if state.get("stage") == "serving" and state.get("artifact") and Path(state["artifact"]).exists():
            await asyncio.to_thread(self.policies.reload, self.policy, state["artifact"])
            self.policies.tune(active=self.policy)
            st.stage, st.version, st.artifact, st.gate = "serving", state.get("version"), state["artifact"], state.get("gate")
            st.candidates = state.get("candidates") or []
            st.message = f"serving {self.policy} {st.version}, promoted by an earlier run"
            log.info("autolearn: %s", st.message)
            return True
        if state.get("stage") == "refused" and state.get("matrix_rows") == self._matrix_rows():
            st.stage, st.gate, st.candidates = "refused", state.get("gate"), state.get("candidates") or []
            st.message = "an earlier run's candidate was refused on this calibration; calibrate more prompts to retry"
            return True
        return False

    async def _calibrate(self) -> None:
        from router.calibration.runner import calibrate
        from router.calibration.sources import parse_source

        st = self._status
        st.stage, st.message = "calibrating", f"grading {', '.join(st.experts)} on the {self.cfg.source} prompt set"
        log.info("autolearn: %s", st.message)
        result = await calibrate(self.settings, source=parse_source(self.cfg.source), out_dir=self.out,
                                 limit=self.cfg.limit, budget_usd=self.cfg.budget_usd, progress=self._on_progress,
                                 registry=self.experts)
        st.message = f"calibration done: {result.graded} cells graded"
        log.info("autolearn: %s", st.message)

    def _on_progress(self, snapshot) -> None:
        data = snapshot.as_dict()
        self._status.progress = data
        now = time.monotonic()
        if now - self._last_logged > 30:
            self._last_logged = now
            log.info("autolearn calibration: %s", {k: data[k] for k in ("done", "total", "eta_s") if k in data})

    async def _train(self) -> Path:
        from policies.data import RoutingData
        from policies.training import train_policy

        st = self._status
        data = await asyncio.to_thread(RoutingData.load, self.out)
        if self.cfg.candidates:
            await self._choose(data)
        st.stage, st.message = "training", f"training {self.policy} on the calibration matrix"
        log.info("autolearn: %s", st.message)
        artifacts = Path(self.settings.data_dir) / "policies" / "autolearn" / self.policy
        result = await asyncio.to_thread(train_policy, self.policy, data, params=self.params, out=artifacts, eval_split="test")
        st.artifact = str(result.path)
        return result.path

    def _choice(self) -> dict[str, Any]:
        """What decides which policy is trained: a saved outcome is reused only while it is unchanged."""
        return {"policy": self.cfg.policy, "candidates": [[n, p] for n, p in self.candidates]}

    async def _choose(self, data) -> None:
        """Cross-validate the candidates on the train rows; the best is trained and gated."""
        from router.lifecycle.candidates import choose_by_cv

        st = self._status
        st.stage = "choosing"
        st.message = f"cross-validating {', '.join(n for n, _ in self.candidates)} on the calibration matrix's train rows"
        log.info("autolearn: %s", st.message)
        (self.policy, self.params), st.candidates = await asyncio.to_thread(choose_by_cv, data, self.candidates)
        st.policy = self.policy
        log.info("autolearn: chose %s %s by cross-validation: %s", self.policy, self.params, st.candidates)

    async def _gate_and_swap(self, path: Path) -> None:
        from router.lifecycle import registry
        from router.lifecycle.gate import BenchmarkGate

        st = self._status
        st.stage = "gating"
        served = self.policies.get(self.policies.active_name)
        gate = BenchmarkGate(self.out, split="test", lambda_=self.policies.default_lambda, min_gain=self.cfg.min_gain,
                             fallback_incumbent=served)
        provenance = {"source": "autolearn", "calibration": str(self.out), "reason": "trained on the experts' own calibration"}
        version = await asyncio.to_thread(registry.register, self.engine, self.policy, path, provenance=provenance,
                                          actor="autolearn")
        st.version = version
        # Another policy serves now (a candidate other than the last one won): the served policy is the
        # incumbent, whatever the chosen name's own registry history says.
        switching = self.policy != self.policies.active_name
        current = await asyncio.to_thread(registry.active, self.engine, self.policy)
        if current is not None and current.version == version and switching:  # promoted before, since replaced
            result = await asyncio.to_thread(gate, current, None)
            st.gate = {**result.as_dict(), "action": "promote" if result.passed else "refuse", "reason": result.reason,
                       "previous": None}
        elif current is not None and current.version == version:  # the same artifact was promoted before
            st.gate = {"action": "promote", "reason": f"{version} is already the active version"}
        else:
            against_served = (lambda candidate, _incumbent: gate(candidate, None)) if switching else gate
            outcome = await asyncio.to_thread(registry.promote, self.engine, self.policy, version, gate=against_served,
                                              actor="autolearn")
            st.gate = {**(outcome.gate or {}), "action": outcome.action, "reason": outcome.reason, "previous": outcome.previous}
        if st.gate["action"] != "promote":
            st.stage = "refused"
            st.message = f"kept {self.policies.active_name}: {st.gate['reason']}"
            log.info("autolearn: %s", st.message)
            self._write_state()
            return
        await asyncio.to_thread(self.policies.reload, self.policy, path)
        previous = self.policies.active_name
        self.policies.tune(active=self.policy)
        st.stage = "serving"
        st.message = f"serving {self.policy} {version} instead of {previous}: {st.gate['reason']}"
        log.info("autolearn: %s", st.message)
        self._write_state()

    # ---- state on disk --------------------------------------------------------------------------
    def _matrix_rows(self) -> int | None:
        try:
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.out / "matrix.parquet").metadata.num_rows
        except Exception:
            return None

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def _write_state(self) -> None:
        st = self._status
        state = {"stage": st.stage, "policy": st.policy, "version": st.version, "artifact": st.artifact,
                 "experts": st.experts, "choice": self._choice(), "candidates": st.candidates, "gate": st.gate,
                 "matrix": str(self.out), "matrix_rows": self._matrix_rows(), "written_at": time.time()}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, default=str))
        os.replace(tmp, self.state_path)

