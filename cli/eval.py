"""``expertmux eval``: offline evaluation of routing policies on a routing matrix."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.app import app
from cli.common import console, fail, load_settings, save_outputs
from core.errors import ExpertmuxError


def _parse_params(items: list[str]) -> dict[str, dict]:
    """``knn.k=20`` → {"knn": {"k": 20}} (values parsed as JSON when they parse, else strings)."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        policy, dot, param = key.partition(".")
        if not sep or not dot or not policy or not param:
            raise ExpertmuxError(f"--param wants POLICY.NAME=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(policy, {})[param] = value
    return out


@app.command("eval")
def eval_command(
    data: Path = typer.Option(None, "--data", "-d", help="routing-matrix folder (matrix.parquet + models.json)"),
    policies: str = typer.Option(None, "--policies", "-p", help="comma-separated policy names (default: all baselines; "
                                 "'seed': the baselines and the seed policies)"),
    split: str = typer.Option("test", "--split", "-s", help="evaluation split (train always trains)"),
    json_out: Path = typer.Option(None, "--json", help="write the full report as JSON here"),
    plot_out: Path = typer.Option(None, "--plot", help="write the cost–quality plot (PNG) here"),
    markdown_out: Path = typer.Option(None, "--markdown", help="write the tables as Markdown here"),
    encoder: str = typer.Option("minilm", "--encoder", help="learned policies' query encoder: minilm | minilm-int8 | minilm-256 | hashing"),
    n_lambdas: int = typer.Option(200, "--lambdas", min=100, help="log-spaced λ values in the sweep (plus λ=0)"),
    folds: int = typer.Option(5, "--folds", min=2, help="cross-validation folds when the set has no train split"),
    seed: int = typer.Option(0, "--seed"),
    param: list[str] = typer.Option([], "--param", help="policy hyperparameter, e.g. knn.k=20 (repeatable)"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="embedding cache (default: <data_dir>/cache/embeddings)"),
    config: Path = typer.Option(None, "--config", "-c", help="expertmux config (only for data_dir)"),
    ledger: bool = typer.Option(False, "--ledger", help="estimate --policy on logged traffic (IPS, SNIPS, DR) instead"),
    policy: str = typer.Option(None, "--policy", help="with --ledger: the candidate policy"),
    artifact: Path = typer.Option(None, "--artifact", help="with --ledger: judge this artifact (default: the configured one)"),
    db: str = typer.Option(None, "--db", help="with --ledger: database URL (default: the configured ledger)"),
    since: str = typer.Option(None, "--since", help="with --ledger: requests from this date/time on (ISO, UTC)"),
    until: str = typer.Option(None, "--until", help="with --ledger: requests before this date/time (ISO, UTC)"),
    min_feedback: int = typer.Option(1, "--min-feedback", min=1, help="with --ledger: feedback rows a request needs"),
    sources: str = typer.Option("user,judge,auto", "--sources", help="with --ledger: feedback sources"),
    lambda_: float = typer.Option(None, "--lambda", help="with --ledger: the candidate's λ (default: the config's)"),
    clip: float = typer.Option(None, "--clip", min=1.0, help="with --ledger: clip importance weights here"),
    ci: str = typer.Option("clt", "--ci", help="with --ledger: clt | bootstrap intervals"),
    reward_model: str = typer.Option("mean", "--reward-model", help="with --ledger: DR reward model, mean | candidate"),
    models: str = typer.Option(None, "--models", help="with --policy router-r1: candidate experts (default: those it trained with)"),
    queries: int = typer.Option(60, "--queries", min=1, help="with --policy router-r1: evaluation queries (a fixed sample)"),
) -> None:
    """Fit each policy on the train rows, sweep λ on the evaluation split, report the metrics.
    With --ledger: estimate one policy's quality and cost on logged traffic (off-policy)."""
    if ledger:
        from cli.ledger import run_eval

        if not policy:
            fail("--ledger needs --policy NAME")
        run_eval(policy=policy, artifact=artifact, db=db, since=since, until=until, min_feedback=min_feedback,
                 sources=sources, lam=lambda_, clip=clip, ci=ci, reward_model=reward_model, config=config,
                 cache_dir=cache_dir, json_out=json_out)
        return
    if policy == "router-r1":  # multi-round: episodes in the routing-matrix environment
        from cli.train_router_r1 import run_eval as run_router_r1_eval

        if data is None:
            fail("--policy router-r1 needs --data DIR (a routing matrix)")
        run_router_r1_eval(data=data, artifact=artifact, models=models, split=split, n=queries,
                           policies=policies if policies is not None else "knn,tryage,coe", json_out=json_out,
                           markdown_out=markdown_out, config=config)
        return
    if data is None:
        fail("give --data DIR (a routing matrix), or --ledger --policy NAME (logged traffic)")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from policies.data import RoutingData
    from policies.evaluation.harness import EvalConfig, Hooks, evaluate
    from policies.evaluation.report import markdown, print_report
    from policies.features import configure_feature_stores
    from policies.registry import BASELINES, SEED_POLICIES

    try:
        names = [p.strip() for p in policies.split(",") if p.strip()] if policies else list(BASELINES)
        if names == ["seed"]:
            names = [*BASELINES, *SEED_POLICIES]
        settings = load_settings(config)
        configure_feature_stores(data_dir=settings.data_dir, cache_dir=cache_dir)
        matrix = RoutingData.load(data)
        cfg = EvalConfig(split=split, encoder=encoder, n_lambdas=n_lambdas, n_folds=folds, seed=seed,
                         policy_params=_parse_params(param))
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            tasks: dict[str, int] = {}

            def embed_start(total: int) -> None:
                progress.console.print(f"{matrix.name}: {len(matrix)} queries, {matrix.n_models} models; "
                                       f"{total} prompts to encode with '{encoder}' (the rest are cached)")
                tasks["embed"] = progress.add_task("embedding queries", total=max(total, 1),
                                                   completed=0 if total else 1)

            def fit_start(total: int) -> None:
                progress.console.print(f"fitting {len(names)} policies: {', '.join(names)}")
                tasks["fit"] = progress.add_task("fitting policies", total=total)

            def fit_advance(name: str) -> None:
                progress.update(tasks["fit"], advance=1, description=f"fitting policies ({name})")

            hooks = Hooks(embed_start=embed_start,
                          embed_advance=lambda n: progress.advance(tasks["embed"], n),
                          fit_start=fit_start, fit_advance=fit_advance)
            report = evaluate(matrix, names, cfg, hooks)
    except ExpertmuxError as exc:
        fail(exc)
    print_report(report, console)
    save_outputs(json_out, report, markdown_out, markdown(report) if markdown_out else "")
    if plot_out:
        from policies.evaluation.plot import plot_report

        console.print(f"plot: {plot_report(report, plot_out)}")
