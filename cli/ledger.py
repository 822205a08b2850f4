"""``--ledger`` modes of ``expertmux train <policy>`` and ``expertmux eval``: learn from and judge
policies on logged traffic (``router.learning.bandit`` reads it, ``policies.logged_*`` do the work).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import typer

from cli.common import console, fail, load_settings, stage_progress
from core.errors import ExpertmuxError, PolicyError

LEDGER_OPTIONS = ("ledger", "db", "since", "until", "min_feedback", "sources", "target", "clip")


def _opt(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def train_parameters() -> list[inspect.Parameter]:
    """The options ``expertmux train <policy>`` gains for learning from the ledger."""
    return [
        _opt("ledger", bool, typer.Option(False, "--ledger", help="train on logged traffic with feedback instead of --data")),
        _opt("db", str | None, typer.Option(None, "--db", help="ledger database URL (default: the configured one)")),
        _opt("since", str | None, typer.Option(None, "--since", help="only requests from this date/time on (ISO, UTC)")),
        _opt("until", str | None, typer.Option(None, "--until", help="only requests before this date/time (ISO, UTC)")),
        _opt("min_feedback", int, typer.Option(1, "--min-feedback", min=1, help="feedback rows a request needs")),
        _opt("sources", str, typer.Option("user,judge,auto", "--sources", help="feedback sources to use (comma-separated)")),
        _opt("target", str, typer.Option("ipw", "--target", help="ipw (propensity-weighted rewards) | dr (doubly robust) "
                                         "| observed (propensities ignored)")),
        _opt("clip", float, typer.Option(50.0, "--clip", min=1.0, help="largest importance weight 1/p")),
    ]


def _load(settings, db: str | None, **query):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from router.learning.bandit import expert_info, load_logged

    url = db or settings.resolved_database_url
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                  transient=True) as progress:
        task = progress.add_task("reading the ledger", total=None)
        logged = load_logged(url, progress=lambda n: progress.update(task, description=f"reading the ledger: {n:,} rows"),
                             **query)
    return url, logged, expert_info(url)


def _sources(raw: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in raw.split(",") if s.strip())


def run_train(policy: str, hyper: dict[str, Any], opts: dict[str, Any], *, out: Path | None, cache_dir: Path | None,
              config: Path | None) -> None:
    """``expertmux train <policy> --ledger``: the training set from logged traffic, a new version."""

    from policies.features import configure_feature_stores
    from policies.logged_training import train_logged

    try:
        settings = load_settings(config)
        configure_feature_stores(data_dir=settings.data_dir, cache_dir=cache_dir)
        url, logged, info = _load(settings, opts["db"], since=opts["since"], until=opts["until"],
                                  min_feedback=opts["min_feedback"], sources=_sources(opts["sources"]))
        if not len(logged):
            raise PolicyError("no answered requests with feedback in this slice of the ledger")
        if not logged.logged.any():
            console.print("[yellow]note:[/] no decision in this slice logged propensities: every choice counts as "
                          "deterministic (p = 1), so the weights correct nothing; turn exploration on to learn more")
        target_dir = out or settings.data_dir / "policies" / policy
        console.print(f"ledger: {len(logged):,} requests with feedback, {len(logged.experts)} experts; training "
                      f"[bold]{policy}[/] ({opts['target']}) → {target_dir}")
        with stage_progress() as on_progress:
            result = train_logged(policy, logged, out=target_dir, params=hyper, target=opts["target"],
                                  clip=opts["clip"], expert_info=info, ledger=url, progress=on_progress)
    except (ExpertmuxError, ValueError) as exc:
        fail(exc if isinstance(exc, ExpertmuxError) else str(exc))
    _train_summary(result)
    _register(result, url)


def _register(result, url: str) -> None:
    """Enter the new version in the policy registry (the ``policy_versions`` table of the ledger
    it learned from), with the provenance its manifest records."""
    from router.lifecycle.registry import register

    try:
        version = register(url, result.manifest["policy"], result.path, actor="expertmux train --ledger")
    except ExpertmuxError as exc:  # the artifact stands; say why the registry did not take it
        console.print(f"[yellow]note:[/] artifact written but not registered: {exc.message}")
        return
    console.print(f"registered as {result.manifest['policy']} {version} (not active: "
                  f"`expertmux policies promote {result.manifest['policy']} {version}`)")


def _train_summary(result) -> None:
    from rich.table import Table

    m = result.manifest
    prov = m["extra"]["provenance"]
    fit = prov["training"]
    table = Table(title=f"{m['policy']} {m['version']} — {result.path}")
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("ledger", str(prov.get("ledger")))
    table.add_row("slice", f"since {prov.get('since') or '—'}, until {prov.get('until') or '—'}, "
                  f"min feedback {prov.get('min_feedback')}, sources {','.join(prov.get('sources') or [])}")
    table.add_row("requests used", f"{fit['rows_used']:,} ({fit['rows_dropped_no_prompt_or_feedback']:,} without prompt text)")
    table.add_row("target", f"{fit['target']} (clip {fit['clip']:g}), {fit['training_rows']:,} training rows")
    p = prov.get("propensity") or {}
    table.add_row("propensities", f"min {p.get('min', float('nan')):.3g}, median {p.get('median', float('nan')):.3g}, "
                  f"logged {p.get('logged_share', 0):.0%}, deterministic {p.get('deterministic_share', 0):.0%}")
    table.add_row("effective sample size", f"{fit['ess']:.0f} of {fit['rows_used']:,}")
    table.add_row("fit time", f"{m['metrics']['fit_s']:.1f} s")
    console.print(table)
    console.print(f"[green]✓[/] artifact written to {result.path}")


def run_eval(*, policy: str, artifact: Path | None, db: str | None, since: str | None, until: str | None,
             min_feedback: int, sources: str, lam: float | None, clip: float | None, ci: str, reward_model: str,
             config: Path | None, cache_dir: Path | None, json_out: Path | None) -> None:
    """``expertmux eval --ledger --policy NAME``: IPS / SNIPS / DR estimates with intervals."""
    import json

    from policies.features import configure_feature_stores
    from policies.logged_eval import evaluate_logged

    try:
        settings = load_settings(config)
        configure_feature_stores(data_dir=settings.data_dir, cache_dir=cache_dir)
        url, logged, info = _load(settings, db, since=since, until=until, min_feedback=min_feedback,
                                  sources=_sources(sources))
        candidate = _candidate(policy, artifact, settings, info)
        lam = settings.app_config.policy.lambda_ if lam is None else lam
        report = evaluate_logged(candidate, logged, lam=lam, clip=clip, ci=ci, reward_model=reward_model)
    except (ExpertmuxError, ValueError) as exc:
        fail(exc if isinstance(exc, ExpertmuxError) else str(exc))
    report["ledger"] = {"since": since, "until": until, "min_feedback": min_feedback, "sources": _sources(sources)}
    print_eval(report)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1))
        console.print(f"report: {json_out}")


def _candidate(name: str, artifact: Path | None, settings, info: dict[str, dict[str, Any]]):
    """The policy to judge: an artifact, else what this deployment would serve under that name."""
    from core.types import ExpertInfo
    from policies import create_policy
    from policies.registry import get_policy_class

    if artifact is not None:
        from policies.artifacts import load_artifact

        return load_artifact(artifact, policy=name).policy
    configured = {e.name for e in settings.app_config.experts}
    if get_policy_class(name).requires_training or configured & set(info):
        from router.lifecycle.policy_set import PolicySet

        experts = [_expert_info(e) for e in settings.app_config.experts]
        return PolicySet(settings.app_config.policy.model_copy(update={"active": "prior", "exploration": None}),
                         experts).get(name)
    # a simple policy over the experts the ledger knows (prices from its experts table)
    experts = [ExpertInfo(name=n, input_usd_per_mtok=v["input_usd_per_mtok"] or 0.0,
                          output_usd_per_mtok=v["output_usd_per_mtok"] or 0.0, params_b=v["params_b"],
                          context_window=v["context_window"] or 4096) for n, v in info.items()]
    return create_policy(name).fit(None, experts=experts)


def _expert_info(e):
    from core.types import ExpertInfo

    return ExpertInfo(name=e.name, input_usd_per_mtok=e.input_usd_per_mtok, output_usd_per_mtok=e.output_usd_per_mtok,
                      params_b=e.params_b, context_window=e.context_window, description=e.description,
                      tags=tuple(e.tags), prior_quality=e.prior_quality,
                      release_date=e.release_date.isoformat() if e.release_date else None)


def print_eval(report: dict[str, Any]) -> None:
    from rich.table import Table

    level = f"{report['level']:.0%}"
    table = Table(title=f"{report['policy']} on logged traffic: {report['rows']:,} requests "
                        f"(λ={report['lambda']:g}, {report['ci']} {level} intervals, clip {report['clip']})")
    for col, justify in (("estimator", "left"), ("quality", "right"), (f"{level} interval", "right"),
                         ("cost / 1k req (USD)", "right"), (f"{level} interval ", "right"), ("ESS", "right")):
        table.add_column(col, justify=justify)
    for method in ("ips", "snips", "dr", "dm"):
        q, c = report["quality"].get(method), report["cost"].get(method)
        if q is None:
            continue
        table.add_row(method.upper(), f"{q['value']:.4f}", f"[{q['lo']:.4f}, {q['hi']:.4f}]",
                      f"{1000 * c['value']:.4f}", f"[{1000 * c['lo']:.4f}, {1000 * c['hi']:.4f}]",
                      "—" if q["ess"] != q["ess"] else f"{q['ess']:.0f}")
    lq, lc = report["logging"]["quality"], report["logging"]["cost"]
    table.add_row("as logged", f"{lq['value']:.4f}", f"[{lq['lo']:.4f}, {lq['hi']:.4f}]",
                  f"{1000 * lc['value']:.4f}", f"[{1000 * lc['lo']:.4f}, {1000 * lc['hi']:.4f}]", "—")
    console.print(table)
    console.print(f"agrees with the logged choice on {report['agreement']:.1%} of requests; "
                  f"unsupported mass {report['unsupported_mass']:.1%}; "
                  f"deterministic decisions in the log {report['deterministic_log_share']:.1%}"
                  + (f"; {report['rows_skipped']:,} requests skipped (no prompt, or no known expert)"
                     if report["rows_skipped"] else ""))
    if report["unsupported_mass"] > 0.05:
        console.print("[yellow]warning:[/] the log rarely or never tried some choices this policy makes; IPS cannot "
                      "see them and DR leans on its reward model there. Serve with exploration to close the gap.")
