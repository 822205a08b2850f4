"""Routing over time on the request path: sessions, budget pacing and the shadow, wired together.

The service asks three things of this module and nothing more:

- ``prepare`` (before routing, async): the request's session state (``router.sessions``; a
  bounded read, None when the store is unreachable) and its key's pacing (``router.pacing``;
  from memory) in a ``RouteContext``;
- ``RouteContext.lambda_for`` / ``RouteContext.adjust`` (inside routing): the paced λ the policy
  decides with, then the session rule and the near-cap downgrade applied to its decision;
- ``downgrade`` (when a budget reservation is refused) and ``observe`` (a finish hook: advance
  the session, hand the answered request to the shadow).

Each part is optional (``sessions``, ``pacing``, ``shadow`` in the config) and none of them can
fail a request: a store or a ledger that cannot be reached means routing as if it were off.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.types import Decision, ExpertInfo, RouteRequest, RoutingOptions, SessionView
from router.pacing.pacer import Pace, Pacer, SpendSource, cheapest
from router.sessions.identity import session_key, tool_loop
from router.sessions.rule import Ruling, SessionRule
from router.sessions.state import Outcome, SessionState
from router.sessions.store import SessionStore

if TYPE_CHECKING:
    from router.shadow.runner import ShadowRunner

log = logging.getLogger("expertmux.over_time")


@dataclass
class RouteContext:
    """What routing over time knows about one request, from ``prepare`` to its finish hook."""

    owner: OverTime
    request: Any  # the parsed ChatCompletionRequest
    session_key: str | None = None
    state: SessionState | None = None
    view: SessionView | None = None
    pace: Pace | None = None
    lambda_: float | None = None  # the λ the policy decided with
    route_request: RouteRequest | None = None
    unavailable: frozenset[str] = field(default_factory=frozenset)
    ruling: Ruling | None = None

    def lambda_for(self, options: RoutingOptions, default: float) -> float:
        """The λ to decide with: the paced one where it is higher than the policy's (or the client's)."""
        paced = self.pace.lambda_ if self.pace is not None else None
        if paced is not None:
            if options.lambda_ is not None:
                options.lambda_ = max(options.lambda_, paced)
            default = max(default, paced)
        self.lambda_ = options.lambda_ if options.lambda_ is not None else default
        return default

    def adjust(self, decision: Decision, route_request: RouteRequest, unavailable: frozenset[str]) -> Decision:
        """The session rule, then the near-cap downgrade, applied to the policy's decision."""
        self.route_request, self.unavailable = route_request, unavailable
        owner = self.owner
        if self.view is not None and owner.rule is not None:
            decision, self.ruling = owner.rule.apply(decision, self.view, self.lambda_ or 0.0)
        if self.pace is not None and self.pace.lambda_ is not None:
            pacing = {"lambda": round(self.pace.lambda_, 6), "scope": self.pace.scope}
            decision = replace(decision, adjustments={**(decision.adjustments or {}), "pacing": pacing})
            if self.pace.near_cap:
                decision = cheapest(decision, owner.experts, prompt_tokens=route_request.prompt_tokens,
                                    completion_tokens=route_request.max_completion_tokens)
                decision.adjustments["pacing"].update(pacing)
        return decision


class OverTime:
    def __init__(self, *, experts: list[ExpertInfo], sessions: SessionStore | None = None, rule: SessionRule | None = None,
                 pacer: Pacer | None = None, shadow: ShadowRunner | None = None) -> None:
        self.experts = experts
        self.sessions, self.rule, self.pacer, self.shadow = sessions, rule, pacer, shadow
        self._shadow_factory = None  # loads the candidate once the database is migrated (``start``)

    @classmethod
    def create(cls, service: Any, *, judge: Any = None) -> OverTime | None:
        """Routing over time as ``service``'s config asks for it, or None when it asks for none of it."""
        cfg = service.settings.app_config
        scfg = cfg.sessions if cfg.sessions is not None and cfg.sessions.enabled else None
        pcfg = cfg.pacing if cfg.pacing is not None and cfg.pacing.enabled else None
        shcfg = cfg.shadow if cfg.shadow is not None and cfg.shadow.enabled else None
        if scfg is None and pcfg is None and shcfg is None:
            return None
        engine, infos = service.ledger.engine, service.experts.infos()
        self = cls(experts=infos,
                   sessions=SessionStore(engine, scfg) if scfg else None, rule=SessionRule(scfg, infos) if scfg else None,
                   pacer=Pacer(pcfg, SpendSource(engine), default_lambda=service.policies.default_lambda) if pcfg else None)
        if shcfg is not None:
            self._shadow_factory = lambda: _load_shadow(service, shcfg, judge)
        service.finish_hooks.append(self.observe)
        return self

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> list[asyncio.Task]:
        tasks = []
        if self.sessions is not None:
            self.sessions.start()
        if self.pacer is not None:
            tasks.append(asyncio.create_task(self.pacer.run()))
        if self._shadow_factory is not None:
            try:
                self.shadow = await asyncio.to_thread(self._shadow_factory)
                log.info("shadow evaluation of %s %s on live traffic", self.shadow.name, self.shadow.version)
            except Exception as exc:  # a candidate that cannot be loaded turns the shadow off, not the proxy
                log.warning("shadow evaluation is off: %s", getattr(exc, "message", exc))
            if self.shadow is not None:
                tasks.append(asyncio.create_task(self.shadow.run()))
        return tasks

    async def stop(self) -> None:
        if self.shadow is not None:
            await self.shadow.drain(timeout=2.0)
        if self.sessions is not None:
            await asyncio.to_thread(self.sessions.close)

    # -- request path -----------------------------------------------------------------------------
    async def prepare(self, req: Any, key: Any) -> RouteContext:
        ctx = RouteContext(owner=self, request=req)
        if self.pacer is not None:
            ctx.pace = self.pacer.pace(key)
        if self.sessions is not None:
            cfg = self.sessions.cfg
            ctx.session_key = session_key(api_key_id=key.id if key is not None else None,
                                          explicit=req.expertmux.session_id if req.expertmux else None, user=req.user,
                                          messages=req.messages, from_user=cfg.from_user, from_prefix=cfg.from_prefix)
            if ctx.session_key is not None:
                ctx.state = await self.sessions.get(ctx.session_key)
                if ctx.state is not None:
                    ctx.view = ctx.state.view(cfg, tool_loop=tool_loop(req.messages), prompt_tokens=_prompt_tokens(req))
        return ctx

    def downgrade(self, trace: Any) -> bool:
        """A reservation was refused: route to the cheapest fitting expert alone, if that changes anything."""
        d, ctx = trace.decision, trace.route
        if self.pacer is None or d is None or d.policy == "direct" or ctx is None or ctx.route_request is None:
            return False
        rr = ctx.route_request
        down = cheapest(d, self.experts, prompt_tokens=rr.prompt_tokens, completion_tokens=rr.max_completion_tokens,
                        alone=True, why="the budget cannot cover the chosen experts")
        if down.ranking == d.ranking:
            return False
        trace.decision = down
        return True

    def observe(self, trace: Any) -> None:
        """Finish hook (event loop, must stay cheap)."""
        ctx: RouteContext | None = trace.route
        if ctx is None:
            return
        if ctx.state is not None and trace.status in ("ok", "error"):
            served = trace.served_by
            self.sessions.finish(ctx.session_key, Outcome(
                request_id=trace.id, ok=trace.status == "ok", expert=served.expert if served else None,
                prompt_tokens=served.prompt_tokens if served else 0, completion_tokens=served.completion_tokens if served else 0,
                cost_usd=sum(a.cost_usd for a in trace.attempts), event=ctx.ruling.event if ctx.ruling else None,
                at=datetime.now(UTC)))
        d = trace.decision
        if self.shadow is not None and trace.status == "ok" and ctx.route_request is not None and d is not None:
            from router.shadow.runner import ShadowItem

            served = trace.served_by
            self.shadow.submit(ShadowItem(
                request_id=trace.id, route_request=ctx.route_request, lambda_=ctx.lambda_ or 0.0, unavailable=ctx.unavailable,
                served=d, served_expert=served.expert if served else None, served_cost_usd=sum(a.cost_usd for a in trace.attempts),
                served_answer=served.answer if served else None, question=trace.prompt_text,
                # only a prompt the ledger may keep in full is shown to another expert or a judge
                payload=ctx.request.upstream_payload if trace.prompt_text is not None else None))


def _prompt_tokens(req: Any) -> int:
    return sum(len(m.text()) for m in req.messages) // 4 + 1


def _load_shadow(service: Any, cfg: Any, judge: Any) -> ShadowRunner:
    from core.settings import PROJECT_ROOT
    from router.shadow.candidate import load_candidate
    from router.shadow.runner import ShadowRunner

    candidate = load_candidate(service.ledger.engine, policy=cfg.policy, version=cfg.version, experts=service.experts.infos(),
                               options=service.policies.config.options.get(cfg.policy) or {}, root=PROJECT_ROOT,
                               served=service.policies.get)
    if cfg.call_experts and cfg.judge and judge is None:
        log.warning("shadow: judge is on but no judge is configured; the candidate's answers are not rated")
    return ShadowRunner(cfg, candidate, engine=service.ledger.engine, experts=service.experts, judge=judge)
