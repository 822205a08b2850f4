"""Keeps a running service on the registry's active versions, without a restart.

Every ``interval_s`` the service reads the active versions (one small query) and, for each
learned policy whose active version differs from the one it serves, loads that artifact next to
the current one and swaps it in (``PolicySet.reload``). No active version means the configured
artifact. A version that fails to load is logged once and the previous policy keeps serving;
each replica polls the shared database, so a promotion reaches all of them.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from sqlalchemy import Engine

from core.errors import ExpertmuxError
from router.lifecycle.policy_set import PolicySet
from router.lifecycle.registry import active_versions

log = logging.getLogger("expertmux.policies")


class RegistrySync:
    def __init__(self, policies: PolicySet, engine: Engine, *, interval_s: float = 5.0) -> None:
        self.policies = policies
        self.engine = engine
        self.interval_s = interval_s
        self.served: dict[str, str | None] = {}  # policy → registry version served (None: configured artifact)
        self.errors: dict[str, str] = {}
        self._lock = threading.Lock()  # the poll and an admin action may sync at the same time

    def sync(self) -> list[str]:
        """Apply the registry's active versions; returns the policies that changed."""
        with self._lock:
            return self._sync()

    def _sync(self) -> list[str]:
        try:
            wanted = active_versions(self.engine)
        except Exception as exc:  # the ledger being down must not disturb serving
            log.warning("policy registry poll failed: %s", exc)
            return []
        changed = []
        for status in self.policies.status():
            name = status["name"]
            if not status["learned"]:
                continue
            version, artifact = wanted.get(name, (None, None))
            if self.served.get(name) == version:
                continue
            if version is None and not self.policies.config.options.get(name, {}).get("artifact"):
                self.served[name] = None  # nothing configured to go back to: keep what serves
                continue
            try:
                self.policies.reload(name, artifact)
                self.errors.pop(name, None)
                changed.append(name)
                log.info("policy %s now serves registry version %s", name, version or "(configured artifact)")
            except ExpertmuxError as exc:
                self.errors[name] = exc.message
                log.error("policy %s: registry version %s cannot be served, keeping the previous one: %s",
                          name, version, exc.message)
            self.served[name] = version
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await asyncio.to_thread(self.sync)
