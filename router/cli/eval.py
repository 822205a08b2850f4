"""``expertmux eval``: offline evaluation of routing policies on a routing matrix."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from router.cli import app
from router.cli.common import console, fail, load_settings
from router.errors import ExpertmuxError


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
    data: Path = typer.Option(..., "--data", "-d", help="routing-matrix folder (matrix.parquet + models.json)"),
    policies: str = typer.Option(None, "--policies", "-p", help="comma-separated policy names (default: all baselines; "
                                 "'seed': the baselines and the seed policies)"),
    split: str = typer.Option("test", "--split", "-s", help="evaluation split (train always trains)"),
    json_out: Path = typer.Option(None, "--json", help="write the full report as JSON here"),
    plot_out: Path = typer.Option(None, "--plot", help="write the cost–quality plot (PNG) here"),
    markdown_out: Path = typer.Option(None, "--markdown", help="write the tables as Markdown here"),
    encoder: str = typer.Option("minilm", "--encoder", help="query encoder of learned policies: minilm | minilm-256 | hashing"),
    n_lambdas: int = typer.Option(200, "--lambdas", min=100, help="log-spaced λ values in the sweep (plus λ=0)"),
    folds: int = typer.Option(5, "--folds", min=2, help="cross-validation folds when the set has no train split"),
    seed: int = typer.Option(0, "--seed"),
    param: list[str] = typer.Option([], "--param", help="policy hyperparameter, e.g. knn.k=20 (repeatable)"),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="embedding cache (default: <data_dir>/cache/embeddings)"),
    config: Path = typer.Option(None, "--config", "-c", help="expertmux config (only for data_dir)"),
) -> None:
    """Fit each policy on the train rows, sweep λ on the evaluation split, report the metrics."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from policies.data import RoutingData
    from policies.embeddings import configure_encoders
    from policies.evaluation.harness import EvalConfig, Hooks, evaluate
    from policies.evaluation.report import markdown, print_report
    from policies.registry import BASELINES, SEED_POLICIES

    try:
        names = [p.strip() for p in policies.split(",") if p.strip()] if policies else list(BASELINES)
        if names == ["seed"]:
            names = [*BASELINES, *SEED_POLICIES]
        settings = load_settings(config)
        configure_encoders(cache_dir=cache_dir or settings.data_dir / "cache" / "embeddings")
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
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=1))
        console.print(f"report: {json_out}")
    if markdown_out:
        markdown_out.parent.mkdir(parents=True, exist_ok=True)
        markdown_out.write_text(markdown(report))
        console.print(f"tables: {markdown_out}")
    if plot_out:
        from policies.evaluation.plot import plot_report

        console.print(f"plot: {plot_report(report, plot_out)}")
