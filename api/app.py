"""The composition root: builds settings → experts → policies → ledger → service, and the app."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.dashboard_auth import router as dashboard_pages
from api.errors import install_error_handlers
from api.routes_admin import router as admin_router
from api.routes_dashboard import router as dashboard_router
from api.routes_feedback import router as feedback_router
from api.routes_openai import router as openai_router
from api.routes_ops import router as ops_router
from api.routes_policies import router as policies_router
from experts import client
from experts.registry import ExpertRegistry
from router.budgets import BudgetGuard
from router.errors import ConfigError
from router.feedback import FeedbackService
from router.judge import Judge
from router.keys import KeyStore
from router.ledger.db import make_engine
from router.ledger.repository import sync_experts
from router.ledger.spool import LedgerSpool
from router.ledger.writer import LedgerWriter
from router.metrics import Metrics
from router.policy_set import PolicySet
from router.policy_sync import RegistrySync
from router.service import RoutingService
from router.settings import Settings

log = logging.getLogger("expertmux")


def build_service(settings: Settings) -> RoutingService:
    """Everything the routes need, wired from one Settings object (no experts started yet)."""
    cfg = settings.app_config
    secrets = {e.name: settings.secret(e.api_key_env) for e in cfg.experts}
    experts = ExpertRegistry(cfg.experts, data_dir=settings.data_dir, secrets=secrets,
                             breaker_failures=settings.breaker_failures, breaker_reset_s=settings.breaker_reset_s)
    policies = PolicySet(cfg.policy, experts.infos())
    engine = make_engine(settings.resolved_database_url)
    spool = LedgerSpool(settings.data_dir / "spool", capacity_bytes=settings.ledger_spool_bytes) if settings.ledger_spool_bytes else None
    ledger = LedgerWriter(engine, batch_size=settings.ledger_batch_size, spool=spool)
    return RoutingService(settings=settings, experts=experts, policies=policies, ledger=ledger, metrics=Metrics(),
                          keys=KeyStore(engine, cache_ttl_s=settings.key_cache_ttl_s), budgets=BudgetGuard(engine))


async def _scrape_load(service: RoutingService, interval_s: float = 1.0) -> None:
    """Poll servers that expose their own queue (vLLM /metrics) for load-aware routing."""
    while True:
        for expert in service.experts:
            snap = await asyncio.to_thread(expert.backend.load)
            if snap is not None:
                service.load.set_server_queue(expert.name, snap.running, snap.waiting)
        await asyncio.sleep(interval_s)


async def _supervise(service: RoutingService, interval_s: float) -> None:
    """Restart local experts whose process died; a fresh server starts with a closed breaker."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            for name in await asyncio.to_thread(service.experts.restart_dead):
                service.experts[name].breaker.record_success()
                log.warning("expert %s restarted", name)
        except Exception:  # the supervisor must outlive any one failure
            log.exception("expert supervisor tick failed")


def create_app(settings: Settings | None = None, *, on_ready=None) -> FastAPI:
    """``on_ready`` is called once the experts are up and the app is about to serve."""
    settings = settings or Settings()
    if settings.auth_required and settings.require_api_keys is False:
        raise ConfigError(f"keyless serving is only allowed on a loopback address, not {settings.host}; create keys with "
                          "`expertmux keys create` and drop EXPERTMUX_REQUIRE_API_KEYS=false")
    service = build_service(settings)
    feedback = FeedbackService(engine=service.ledger.engine, ledger=service.ledger, keys=service.keys,
                               auth_required=settings.auth_required, in_progress=service.open_ids.__contains__)
    judge_cfg = settings.app_config.judge
    judge = Judge(judge_cfg, experts=service.experts, feedback=feedback, metrics=service.metrics) if judge_cfg else None
    if judge is not None and judge_cfg.sample_rate > 0:
        service.finish_hooks.append(judge.observe)
    registry = RegistrySync(service.policies, service.ledger.engine, interval_s=settings.registry_poll_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.auto_migrate:
            from router.ledger.migrate import upgrade

            await asyncio.to_thread(upgrade, settings.resolved_database_url)
        try:
            await asyncio.to_thread(sync_experts, service.ledger.engine, experts=settings.app_config.experts)
        except Exception as exc:  # the ledger being down must not stop the proxy; rows get spooled
            log.warning("could not sync experts to the ledger: %s", exc)
        service.ledger.start()
        if settings.registry_poll_s:  # serve the registry's active versions from the first request on
            await asyncio.to_thread(registry.sync)
        if settings.autostart_experts:
            started = await asyncio.to_thread(service.experts.start_local)
            for name, status in started.items():
                log.info("expert %s: %s", name, status)
        await asyncio.to_thread(client.warm_up)
        tasks = []
        if settings.autostart_experts and settings.supervise_interval_s:
            tasks.append(asyncio.create_task(_supervise(service, settings.supervise_interval_s)))
        if any(e.config.backend == "vllm" for e in service.experts):
            tasks.append(asyncio.create_task(_scrape_load(service)))
        if settings.registry_poll_s:
            tasks.append(asyncio.create_task(registry.run()))
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            if judge is not None:
                await judge.close()
            # Requests cancelled when the grace time ran out record their rows as they unwind:
            # give them a moment, while the loop still runs them, before the writer stops.
            for _ in range(50):
                if not service.open_ids:
                    break
                await asyncio.sleep(0.1)
            # Drain the ledger before anything else goes away: nothing is lost on shutdown.
            await asyncio.to_thread(service.ledger.close)
            await client.aclose()
            await asyncio.to_thread(service.experts.stop_local)
            service.ledger.engine.dispose()

    app = FastAPI(title="expertmux", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible multi-LLM router")
    app.state.settings = settings
    app.state.service = service
    app.state.feedback, app.state.judge, app.state.registry_sync = feedback, judge, registry
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(ops_router)
    app.include_router(admin_router)
    app.include_router(policies_router)
    app.include_router(dashboard_pages)
    app.include_router(dashboard_router)
    app.include_router(feedback_router)
    return app
