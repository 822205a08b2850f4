"""``expertmux policies list|show|register|promote|rollback``: the policy registry.

Versions are trained artifacts entered in the ledger database (``router.lifecycle.registry``).
``promote`` runs the gate and prints the comparison and the verdict; running services pick up
the new active version within ``EXPERTMUX_REGISTRY_POLL_S`` seconds, without a restart.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import typer

from cli.app import app
from cli.common import console, fail, load_settings
from core.errors import ExpertmuxError

policies_app = typer.Typer(help="Policy registry: versions, promotion gate, rollback.", no_args_is_help=True)
app.add_typer(policies_app, name="policies")

_CONFIG = typer.Option(None, "--config", "-c", help="expertmux config (database, λ, gate, configured artifacts)")


def _db(config: Path | None):
    from router.ledger.db import make_engine
    from router.ledger.migrate import upgrade

    settings = load_settings(config)
    url = settings.resolved_database_url
    if settings.auto_migrate:
        upgrade(url)
    return settings, make_engine(url)


def _fmt(value) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _headline(metrics: dict) -> str:
    for split, figures in metrics.items():
        if isinstance(figures, dict) and "aiq" in figures:
            return f"{_fmt(figures['aiq'])} ({split})"
    return "—"


def _source(prov: dict) -> str:
    if prov.get("source"):
        return str(prov["source"])
    if prov.get("ledger"):
        return "ledger"
    return str((prov.get("data") or {}).get("name") or "—")


@policies_app.command("list")
def list_command(policy: str = typer.Argument(None, help="only this policy"), config: Path = _CONFIG) -> None:
    """Registered versions with their headline metric, provenance and which one is active (artifacts: `show`)."""
    from rich.table import Table

    from router.lifecycle.registry import list_versions

    try:
        _, engine = _db(config)
        rows = list_versions(engine, policy)
    except ExpertmuxError as exc:
        fail(exc)
    table = Table(title="policy versions")
    for col in ("policy", "version", "active", "created", "aiq", "source"):
        table.add_column(col, no_wrap=True)
    for v in rows:
        table.add_row(v.policy, v.version, "[green]●[/]" if v.active else "", v.created_at.strftime("%m-%d %H:%M"),
                      _headline(v.metrics), _source(v.provenance))
    console.print(table if rows else "no registered versions (register one with `expertmux policies register`)")


@policies_app.command("show")
def show_command(policy: str = typer.Argument(...), version: str = typer.Argument(None, help="default: the active one"),
                 config: Path = _CONFIG) -> None:
    """A version's metrics, provenance and the policy's registry history."""
    import json

    from router.lifecycle.registry import active, get_version, history

    try:
        _, engine = _db(config)
        v = get_version(engine, policy, version) if version else active(engine, policy)
        events = history(engine, policy, limit=20)
    except ExpertmuxError as exc:
        fail(exc)
    if v is None:
        console.print(f"policy {policy}: no active registered version (the configured artifact serves)")
    else:
        console.print_json(json.dumps(v.public(), default=str))
    for e in events:
        console.print(f"{e['created_at']}  {e['action']:<8} {e['version'] or '(configured artifact)'}"
                      f"{' ← ' + e['previous_version'] if e['previous_version'] else ''}  by {e['actor'] or '?'}"
                      f"{'  [forced]' if e['forced'] else ''}: {e['reason'] or ''}")


@policies_app.command("register")
def register_command(policy: str = typer.Argument(...),
                     artifact: Path = typer.Argument(..., help="artifact folder (or its root: newest vN)"),
                     source: str = typer.Option(None, "--source", help="provenance note, e.g. 'llmrouter' or 'ledger'"),
                     actor: str = typer.Option(None, "--actor"), config: Path = _CONFIG) -> None:
    """Enter a trained artifact as a version (not active until promoted)."""
    from router.lifecycle.registry import register

    try:
        _, engine = _db(config)
        version = register(engine, policy, artifact, provenance={"source": source} if source else None,
                           actor=actor or getpass.getuser())
    except ExpertmuxError as exc:
        fail(exc)
    console.print(f"[green]✓[/] {policy} {version} registered")


def _configured_artifact(settings, policy: str) -> Path | None:
    from core.settings import PROJECT_ROOT
    from policies.artifacts import resolve

    raw = (settings.app_config.policy.options.get(policy) or {}).get("artifact")
    if not raw:
        return None
    path = Path(str(raw)) if Path(str(raw)).is_absolute() else PROJECT_ROOT / str(raw)
    try:
        return resolve(path)
    except ExpertmuxError:
        return None


@policies_app.command("promote")
def promote_command(
    policy: str = typer.Argument(...), version: str = typer.Argument(...),
    data: Path = typer.Option(None, "--data", "-d", help="benchmark routing matrix (default: policy.gate.data of the config; "
                              "none: compare the metrics recorded in the manifests)"),
    split: str = typer.Option(None, "--split", help="benchmark split (default: policy.gate.split or test)"),
    lambda_: float = typer.Option(None, "--lambda", help="λ of the utility comparison (default: the served λ)"),
    min_gain: float = typer.Option(None, "--min-gain", help="aiq the candidate must gain"),
    ledger_since: str = typer.Option(None, "--ledger-since", help="also estimate both versions off-policy on the ledger's "
                                     "requests with feedback from this date (a held-out slice)"),
    ledger_until: str = typer.Option(None, "--ledger-until", help="end of the ledger slice (exclusive)"),
    estimator: str = typer.Option("dr", "--estimator", help="off-policy estimator: dr | ips | snips"),
    force: bool = typer.Option(False, "--force", help="promote even if the gate refuses (needs --reason)"),
    reason: str = typer.Option(None, "--reason", help="why (recorded)"),
    actor: str = typer.Option(None, "--actor", help="who (default: the login name)"),
    config: Path = _CONFIG,
) -> None:
    """Promote a version if it beats the active one on the gate; prints the comparison and why."""
    from core.settings import PROJECT_ROOT
    from router.lifecycle.gate import BenchmarkGate, LedgerGate, manifest_gate
    from router.lifecycle.registry import promote

    if estimator not in ("dr", "ips", "snips"):
        fail(f"--estimator must be dr, ips or snips, not {estimator!r}")
    try:
        settings, engine = _db(config)
        pcfg = settings.app_config.policy
        gcfg = pcfg.gate
        lam = pcfg.lambda_ if lambda_ is None else lambda_
        fallback = _configured_artifact(settings, policy)
        ledger = None
        if ledger_since or ledger_until:
            from experts.registry import expert_info

            ledger = LedgerGate(engine, experts=[expert_info(e) for e in settings.app_config.experts],
                                expert_map=(pcfg.options.get(policy) or {}).get("expert_map"), since=ledger_since,
                                until=ledger_until, lambda_=lam, method=estimator, fallback_incumbent=fallback)
        data = data or (Path(gcfg.data) if gcfg else None)
        if data is not None:
            data = data if data.is_absolute() or data.exists() else PROJECT_ROOT / data
            gate = BenchmarkGate(data, split=split or (gcfg.split if gcfg else "test"), lambda_=lam,
                                 min_gain=min_gain if min_gain is not None else (gcfg.min_gain if gcfg else 0.0),
                                 tolerance=gcfg.tolerance if gcfg else 0.0, fallback_incumbent=fallback,
                                 ledger=ledger.rows if ledger is not None else None)
        elif ledger is not None:
            gate = ledger
        else:
            def gate(candidate, incumbent):
                return manifest_gate(candidate, incumbent, min_gain=min_gain or 0.0)
        shadow = settings.app_config.shadow
        if shadow is not None and shadow.policy == policy:  # its record on live traffic joins as evidence (router/shadow)
            from router.shadow.evidence import ShadowEvidenceGate

            gate = ShadowEvidenceGate(engine, shadow, gate)
        with console.status(f"gating {policy} {version} …"):
            result = promote(engine, policy, version, gate=gate, force=force, reason=reason, actor=actor or getpass.getuser())
    except ExpertmuxError as exc:
        fail(exc)
    _print_gate(result)
    if result.action == "refuse":
        raise typer.Exit(1)


def _print_gate(result) -> None:
    from rich.table import Table

    gate = result.gate or {}
    rows = gate.get("rows") or []
    if rows:
        details = gate.get("details") or {}
        title = f"{result.policy}: candidate {result.version} vs active {result.previous or '(configured artifact)'}"
        if details.get("gate") == "benchmark":
            title += f" on {Path(details['data']).name}/{details['split']} (λ={details['lambda']:g})"
        elif details.get("gate") == "ledger":
            title += f" on {details['rows']} logged requests ({details['estimator']})"
        table = Table(title=title)
        for col in ("metric", "candidate", "active", "Δ", "better"):
            table.add_column(col, justify="right" if col != "metric" else "left")
        for r in rows:
            d = r.get("delta")
            good = d is not None and (d > 0 if r.get("higher_is_better", True) else d < 0)
            table.add_row(r["metric"], _fmt(r.get("candidate")), _fmt(r.get("incumbent")),
                          "—" if d is None else f"{d:+.4f}", "[green]candidate[/]" if good else ("" if d in (None, 0) else "active"))
        console.print(table)
    if result.action == "promote":
        forced = " [yellow](forced)[/]" if result.forced else ""
        console.print(f"[green]promoted[/] {result.policy} {result.version}{forced}: {result.reason}")
    else:
        console.print(f"[red]refused[/] {result.policy} {result.version}: {result.reason}  (override: --force --reason TEXT)")


@policies_app.command("rollback")
def rollback_command(policy: str = typer.Argument(...), reason: str = typer.Option(None, "--reason"),
                     actor: str = typer.Option(None, "--actor"), config: Path = _CONFIG) -> None:
    """Re-activate the version that was active before the current one was promoted."""
    from router.lifecycle.registry import rollback

    try:
        _, engine = _db(config)
        result = rollback(engine, policy, reason=reason, actor=actor or getpass.getuser())
    except ExpertmuxError as exc:
        fail(exc)
    console.print(f"[green]rolled back[/] {policy}: {result.previous} → {result.version or '(configured artifact)'}")
