"""The running router: builds every service from one Settings object, starts and stops them in
order, and reports their health. The HTTP layer (``api.app``) holds one ``Runtime`` and wires its
routes to it; nothing here knows about HTTP."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from core.errors import ConfigError
from core.settings import Settings
from experts import client
from experts.breaker import STATE_VALUE
from experts.registry import ExpertRegistry
from policies.model_home import configure_model_home
from router.access.budgets import BudgetGuard
from router.access.estimate import ReservationEstimator, TokenBounds
from router.access.keys import key_store
from router.learning.feedback import FeedbackService
from router.learning.judge import Judge
from router.ledger.db import make_engine
from router.ledger.repository import sync_experts
from router.ledger.spool import LedgerSpool
from router.ledger.writer import LedgerWriter
from router.lifecycle.autolearn import AutoLearn
from router.lifecycle.policy_set import PolicySet
from router.lifecycle.sync import RegistrySync
from router.request.metrics import Metrics
from router.request.service import RoutingService

log = logging.getLogger("expertmux")


def build_service(settings: Settings) -> RoutingService:
    """The request path wired from one Settings object (no experts started yet)."""
    cfg = settings.app_config
    secrets = {e.name: settings.secret(e.api_key_env) for e in cfg.experts}
    experts = ExpertRegistry(cfg.experts, data_dir=settings.data_dir, secrets=secrets,
                             breaker_failures=settings.breaker_failures, breaker_reset_s=settings.breaker_reset_s)
    configure_model_home(data_dir=settings.data_dir)  # models derived for the policies live under the data folder
    policies = PolicySet(cfg.policy, experts.infos())
    engine = make_engine(settings.resolved_database_url)
    spool = LedgerSpool(settings.data_dir / "spool", capacity_bytes=settings.ledger_spool_bytes) if settings.ledger_spool_bytes else None
    ledger = LedgerWriter(engine, batch_size=settings.ledger_batch_size, spool=spool)
    return RoutingService(settings=settings, experts=experts, policies=policies, ledger=ledger, metrics=Metrics(),
                          keys=key_store(settings, engine),
                          budgets=BudgetGuard(engine, estimator=reservation_estimator(settings)))


def reservation_estimator(settings: Settings) -> ReservationEstimator:
    """How budget reservations bound a request's tokens (Settings ``reserve_*``)."""
    bounds = TokenBounds(template_tokens=settings.reserve_template_tokens, tokens_per_message=settings.reserve_tokens_per_message,
                         tokens_per_attachment=settings.reserve_tokens_per_attachment)
    return ReservationEstimator(bounds, data_dir=settings.data_dir)


@dataclass
class Runtime:
    """Every long-lived service of one router process."""

    settings: Settings
    service: RoutingService
    feedback: FeedbackService
    judge: Judge | None
    registry: RegistrySync
    autolearn: AutoLearn | None = None

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        if settings.auth_required and settings.require_api_keys is False:
            raise ConfigError(f"keyless serving is only allowed on a loopback address, not {settings.host}; create keys with "
                              "`expertmux keys create` and drop EXPERTMUX_REQUIRE_API_KEYS=false")
        service = build_service(settings)
        feedback = FeedbackService(engine=service.ledger.engine, ledger=service.ledger, keys=service.keys,
                                   auth_required=settings.auth_required, in_progress=service.open_ids.__contains__)
        judge_cfg = settings.app_config.judge
        judge = Judge(judge_cfg, experts=service.experts, feedback=feedback, metrics=service.metrics) if judge_cfg else None
        service.cascade.judge = judge  # verdicts for cascades whose estimator reads them (policy.options.cascades.judge)
        if judge is not None and judge_cfg.sample_rate > 0:
            service.finish_hooks.append(judge.observe)
        from router.request.over_time import OverTime

        service.over_time = OverTime.create(service, judge=judge)  # sessions, budget pacing, shadow: None when all off
        registry = RegistrySync(service.policies, service.ledger.engine, interval_s=settings.registry_poll_s)
        auto_cfg = settings.app_config.autolearn
        run_auto = auto_cfg is not None and (auto_cfg.enabled if settings.autolearn is None else settings.autolearn)
        autolearn = AutoLearn(auto_cfg, settings=settings, policies=service.policies, experts=service.experts,
                              engine=service.ledger.engine) if run_auto else None
        return cls(settings=settings, service=service, feedback=feedback, judge=judge, registry=registry, autolearn=autolearn)

    # ---- start and stop ------------------------------------------------------------------------
    async def start(self) -> list[asyncio.Task]:
        """Migrate, sync, start the writer and the local experts; returns the background tasks."""
        settings, service = self.settings, self.service
        if settings.auto_migrate:
            from router.ledger.migrate import upgrade

            await asyncio.to_thread(upgrade, settings.resolved_database_url)
        try:
            await asyncio.to_thread(sync_experts, service.ledger.engine, experts=settings.app_config.experts)
        except Exception as exc:  # the ledger being down must not stop the proxy; rows get spooled
            log.warning("could not sync experts to the ledger: %s", exc)
        try:  # a replica with the wrong key hash secret would reject every key: refuse to start instead
            await asyncio.to_thread(service.keys.check_secret)
        except SQLAlchemyError as exc:
            log.warning("could not check the API key hash secret against the ledger: %s", exc)
        service.ledger.start()
        if settings.registry_poll_s:  # serve the registry's active versions from the first request on
            await asyncio.to_thread(self.registry.sync)
        if settings.autostart_experts:
            started = await asyncio.to_thread(service.experts.start_local)
            for name, status in started.items():
                log.info("expert %s: %s", name, status)
        await asyncio.to_thread(client.warm_up)
        tasks = [asyncio.create_task(self._watch_loop_lag())]
        if settings.autostart_experts and settings.supervise_interval_s:
            tasks.append(asyncio.create_task(self._supervise(settings.supervise_interval_s)))
        if any(e.config.backend == "vllm" for e in service.experts):
            tasks.append(asyncio.create_task(self._scrape_load()))
        if settings.registry_poll_s:
            tasks.append(asyncio.create_task(self.registry.run()))
        if self.autolearn is not None:  # learn the experts' own results while serving
            tasks.append(asyncio.create_task(self.autolearn.run()))
        if service.over_time is not None:
            tasks += await service.over_time.start()
        return tasks

    async def stop(self, tasks: list[asyncio.Task]) -> None:
        service = self.service
        if service.over_time is not None:  # the shadow's queue and the sessions' last states
            await service.over_time.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # cancelled jobs unwind (calibration keeps its cells)
        if self.judge is not None:
            await self.judge.close()
        # Requests cancelled when the grace time ran out record their rows as they unwind:
        # give them a moment, while the loop still runs them, before the writer stops.
        for _ in range(50):
            if not service.open_ids:
                break
            await asyncio.sleep(0.1)
        # Drain the ledger before anything else goes away: nothing is lost on shutdown.
        await asyncio.to_thread(service.ledger.close)
        service.features.close()
        await service.prefill.close()
        await client.aclose()
        await asyncio.to_thread(service.experts.stop_local)
        service.ledger.engine.dispose()

    async def _watch_loop_lag(self, interval_s: float = 0.05) -> None:
        """Sleep a fixed time and record how late the loop woke up: the wait any callback (an
        accepted connection, a request's body, an answer's bytes) had at that moment."""
        loop, lag = asyncio.get_running_loop(), self.service.metrics.loop_lag
        while True:
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            lag.observe(max(0.0, loop.time() - due))

    async def _scrape_load(self, interval_s: float = 1.0) -> None:
        """Poll servers that expose their own queue (vLLM /metrics) for load-aware routing."""
        while True:
            for expert in self.service.experts:
                snap = await asyncio.to_thread(expert.backend.load)
                if snap is not None:
                    self.service.load.set_server_queue(expert.name, snap.running, snap.waiting)
            await asyncio.sleep(interval_s)

    async def _supervise(self, interval_s: float) -> None:
        """Restart local experts whose process died; a fresh server starts with a closed breaker."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                for name in await asyncio.to_thread(self.service.experts.restart_dead):
                    self.service.experts[name].breaker.record_success()
                    log.warning("expert %s restarted", name)
            except Exception:  # the supervisor must outlive any one failure
                log.exception("expert supervisor tick failed")

    # ---- health and metrics --------------------------------------------------------------------
    def alive(self) -> bool:
        """The liveness probe: serving, not shutting down, and some expert can take a call (from
        what this process already knows: breakers and local servers; nothing is probed)."""
        service = self.service
        return not service.draining and len(service.experts.unavailable()) < len(service.experts.names)

    async def health(self) -> tuple[dict[str, Any], bool]:
        """Every expert's liveness, breaker and load, the served policy and the ledger's state."""
        service = self.service
        experts = list(service.experts)
        ups = await asyncio.gather(*(asyncio.to_thread(e.backend.health, 1.0) for e in experts))
        for e, up in zip(experts, ups):
            service.metrics.expert_up.labels(e.name).set(1 if up else 0)
        body = {
            "status": "ok" if any(ups) else "degraded",
            "experts": {e.name: {"up": up, "backend": e.config.backend, "in_flight": e.in_flight, "breaker": e.breaker.state}
                        for e, up in zip(experts, ups)},
            "policy": service.policies.active_name,
            "ledger": {"pending": service.ledger.pending, "written": service.ledger.rows_written,
                       "spooled_files": service.ledger.spooled_files(), "write_failures": service.ledger.write_failures},
        }
        return body, any(ups)

    def render_metrics(self) -> bytes:
        """Prometheus exposition, with the gauges read at scrape time refreshed first."""
        service, m = self.service, self.service.metrics
        m.ledger_pending.set(service.ledger.pending)
        m.ledger_written.set(service.ledger.rows_written)
        for e in service.experts:
            m.in_flight.labels(e.name).set(e.in_flight)
            m.breaker_state.labels(e.name).set(STATE_VALUE[e.breaker.state])
        return m.render()
