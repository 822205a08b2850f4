"""The experts of a deployment, built from config: backends, what policies may know, live state."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from core.config import ExpertConfig
from core.errors import BackendError
from core.types import ExpertInfo
from experts.backends import make_backend
from experts.backends.base import Backend
from experts.breaker import CircuitBreaker

log = logging.getLogger("expertmux.experts")


# Requests a server of each backend works on at once when the config does not say (read by the
# load-aware request path, router.request.load).
DEFAULT_SLOTS = {"llamacpp": 1, "vllm": 64, "remote": 64}


@dataclass(slots=True)
class Expert:
    config: ExpertConfig
    backend: Backend
    info: ExpertInfo
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)
    in_flight: int = 0
    owned: bool = False  # started by this process (and so stopped by it)

    @property
    def name(self) -> str:
        return self.config.name

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.info.cost_usd(prompt_tokens, completion_tokens)

    @property
    def slots(self) -> int:
        """Requests the server works on at once (configured, else typical for the backend)."""
        return self.config.max_concurrency or DEFAULT_SLOTS.get(self.config.backend, 1)


def expert_info(config: ExpertConfig) -> ExpertInfo:
    return ExpertInfo(
        name=config.name,
        input_usd_per_mtok=config.input_usd_per_mtok,
        output_usd_per_mtok=config.output_usd_per_mtok,
        params_b=config.params_b,
        context_window=config.context_window,
        description=config.description,
        tags=tuple(config.tags),
        prior_quality=config.prior_quality,
        release_date=config.release_date.isoformat() if config.release_date else None,
    )


class ExpertRegistry:
    """Name → Expert. Starts and stops the local ones; remembers them in a state file so
    ``expertmux experts up`` and ``expertmux serve`` share running servers."""

    def __init__(self, configs: list[ExpertConfig], *, data_dir: Path, secrets: dict[str, str | None] | None = None,
                 breaker_failures: int = 3, breaker_reset_s: float = 10.0) -> None:
        self.data_dir = Path(data_dir)
        secrets = secrets or {}
        self._experts: dict[str, Expert] = {}
        for cfg in configs:
            backend = make_backend(cfg, data_dir=self.data_dir, api_key=secrets.get(cfg.name))
            self._experts[cfg.name] = Expert(config=cfg, backend=backend, info=expert_info(cfg),
                                             breaker=CircuitBreaker(breaker_failures, breaker_reset_s))

    # -- lookup -------------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self._experts

    def __getitem__(self, name: str) -> Expert:
        return self._experts[name]

    def __iter__(self):
        return iter(self._experts.values())

    @property
    def names(self) -> list[str]:
        return list(self._experts)

    def infos(self) -> list[ExpertInfo]:
        return [e.info for e in self._experts.values()]

    def unavailable(self) -> frozenset[str]:
        """Experts that cannot take a call now: a local server not running, or an open breaker."""
        return frozenset(e.name for e in self._experts.values()
                         if (e.backend.is_local and (e.backend.api_base is None or not e.backend.is_running()))
                         or not e.breaker.available())

    # -- lifecycle of local servers -----------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.data_dir / "experts-state.json"

    def _read_state(self) -> dict[str, dict]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        state = {e.name: {"api_base": e.backend.api_base, "pid": e.backend.pid, "backend": e.config.backend}
                 for e in self._experts.values() if e.backend.is_local and e.backend.api_base}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(state, indent=2))

    def start_local(self, names: list[str] | None = None) -> dict[str, str]:
        """Start (or adopt already running) local experts in parallel; returns name → status."""
        state = self._read_state()
        todo = [e for e in self._experts.values() if e.backend.is_local and (names is None or e.name in names)]
        results: dict[str, str] = {}

        def bring_up(expert: Expert) -> tuple[str, str]:
            previous = state.get(expert.name)
            if previous and previous.get("api_base") and expert.backend.adopt(previous["api_base"], previous.get("pid")):
                return expert.name, f"reused {expert.backend.api_base}"
            expert.backend.stop()  # a stale or hung server from an earlier run, if any
            expert.backend.start()
            expert.owned = True
            return expert.name, f"started {expert.backend.api_base}"

        errors: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, len(todo))) as pool:
            for fut in [pool.submit(bring_up, e) for e in todo]:
                try:
                    name, status = fut.result()
                    results[name] = status
                except BackendError as exc:
                    errors.append(str(exc))
        self._write_state()
        if errors:
            raise BackendError("; ".join(errors))
        return results

    def restart_dead(self) -> list[str]:
        """Restart local servers this process runs that have died (the supervisor's tick)."""
        restarted = []
        for e in self._experts.values():
            backend = e.backend
            if not backend.is_local or backend.pid is None or backend.is_running():
                continue
            log.warning("expert %s (pid %s) died; restarting it", e.name, backend.pid)
            backend.stop()  # clears the dead server's state
            try:
                backend.start()
            except BackendError as exc:
                log.error("could not restart expert %s: %s", e.name, exc)
                continue
            e.owned = True
            restarted.append(e.name)
        if restarted:
            self._write_state()
        return restarted

    def stop_local(self, *, only_owned: bool = True, names: list[str] | None = None) -> list[str]:
        """Stop local experts (by default only those this process started)."""
        state = self._read_state()
        stopped = []
        for e in self._experts.values():
            if not e.backend.is_local or (names is not None and e.name not in names):
                continue
            if not only_owned and e.backend.pid is None and e.name in state:
                e.backend.adopt(state[e.name]["api_base"], state[e.name].get("pid"))
            if e.owned or not only_owned:
                e.backend.stop()
                e.owned = False
                stopped.append(e.name)
        self._write_state()
        return stopped

    def status(self) -> dict[str, dict]:
        """Name → {backend, api_base, healthy, pid} (reads the state file for local servers)."""
        state = self._read_state()
        out = {}
        for e in self._experts.values():
            if e.backend.is_local and e.backend.api_base is None and e.name in state:
                e.backend.adopt(state[e.name]["api_base"], state[e.name].get("pid"))
            out[e.name] = {
                "backend": e.config.backend,
                "model": e.config.model,
                "api_base": e.backend.api_base,
                "pid": e.backend.pid,
                "healthy": e.backend.health(),
            }
        return out
