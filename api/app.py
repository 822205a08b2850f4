"""The FastAPI app factory: one ``router.runtime.Runtime`` started and stopped by the app's lifespan,
its services on ``app.state``, the routes included, errors mapped to the OpenAI error body."""

from __future__ import annotations

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
from api.routes_over_time import router as over_time_router
from api.routes_policies import router as policies_router
from core.settings import Settings
from router.runtime import Runtime


def create_app(settings: Settings | None = None, *, on_ready=None) -> FastAPI:
    """``on_ready`` is called once the experts are up and the app is about to serve."""
    settings = settings or Settings()
    runtime = Runtime.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        tasks = await runtime.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await runtime.stop(tasks)

    app = FastAPI(title="expertmux", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible multi-LLM router")
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.service = runtime.service
    app.state.feedback, app.state.judge, app.state.registry_sync = runtime.feedback, runtime.judge, runtime.registry
    app.state.started_at = int(time.time())
    install_error_handlers(app)
    app.include_router(openai_router)
    app.include_router(ops_router)
    app.include_router(admin_router)
    app.include_router(policies_router)
    app.include_router(dashboard_pages)
    app.include_router(dashboard_router)
    app.include_router(over_time_router)
    app.include_router(feedback_router)
    return app
