"""``expertmux calibrate``: a routing matrix of the configured experts, on a graded prompt set.

Draws the run's progress (one bar for the run, one per expert with its throughput and spend)
and ends with the per-skill × per-expert quality table. Exit code 1 only when nothing could be
graded at all (or the input is bad); experts that are down leave NaN cells with their reason.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from cli.app import app
from cli.common import console, fail, load_settings
from core.errors import ExpertmuxError


@app.command("calibrate")
def calibrate_command(
    source: str = typer.Option("default", "--source", "-s", help="default (the shipped graded set) | jsonl:PATH | ledger"),
    out: Path = typer.Option(None, "--out", "-o", help="output folder (default: <data_dir>/calibration/<source name>); "
                             "a rerun resumes it"),
    limit: int = typer.Option(None, "--limit", "-n", min=1, help="at most N prompts, stratified by skill"),
    experts: str = typer.Option(None, "--experts", help="comma-separated expert names (default: every configured expert)"),
    budget_usd: float = typer.Option(None, "--budget-usd", min=0, help="stop before this run spends more (USD)"),
    concurrency: int = typer.Option(None, "--concurrency", "-k", min=1,
                                    help="calls in flight per expert (default 8, at most the expert's max_concurrency)"),
    max_tokens: int = typer.Option(48, "--max-tokens", min=1, help="answer length cap where a prompt sets none"),
    seed: int = typer.Option(0, "--seed", help="seed of the --limit sample and the train/test split"),
    test_share: float = typer.Option(0.3, "--test-share", min=0.0, max=0.9, help="share of each skill's prompts in the test split"),
    no_logprobs: bool = typer.Option(False, "--no-logprobs", help="do not ask experts for token logprobs"),
    config: Path = typer.Option(None, "--config", "-c", help="expertmux config (experts, prices, judge)"),
) -> None:
    """Run every configured expert on graded prompts and write their routing matrix (resumable).

    Then `expertmux train <policy> --data <out>` learns a policy on the experts' own results."""
    from router.calibration.runner import calibrate
    from router.calibration.sources import parse_source

    try:
        settings = load_settings(config)
        src = parse_source(source)
        names = [n.strip() for n in experts.split(",") if n.strip()] if experts else None
        with _ProgressView() as view:
            result = asyncio.run(calibrate(settings, source=src, out_dir=out, experts=names, limit=limit, budget_usd=budget_usd,
                                           concurrency=concurrency, max_tokens=max_tokens, seed=seed, test_share=test_share,
                                           logprobs=not no_logprobs, progress=view.update))
    except ExpertmuxError as exc:
        fail(exc)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished cells are kept; run the same command again to resume")
        raise typer.Exit(130) from None
    _summary(result)
    if not result.ok:
        fail("nothing could be graded (see the reasons above)")


class _ProgressView:
    """rich bars fed by ``CalibrationProgress`` snapshots."""

    def __enter__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=console)
        self.progress.__enter__()
        self.tasks: dict[str, int] = {}
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def update(self, snap) -> None:
        if not console.is_terminal:  # a log file (nohup, CI): a plain line every 30 s instead of bars
            self._log_line(snap)
            return
        if "*" not in self.tasks:
            self.tasks["*"] = self.progress.add_task("all experts", total=max(snap.total, 1), rate="")
        self.progress.update(self.tasks["*"], completed=snap.done, total=max(snap.total, 1),
                             rate=f"${snap.spent_usd:.4f} · {snap.failed} NaN · {snap.already} done before")
        for name, p in snap.experts.items():
            if name not in self.tasks:
                self.tasks[name] = self.progress.add_task(name, total=max(p.total, 1), rate="")
            state = "" if p.state in ("running", "done", "waiting") else f" [red]{p.state}[/]"
            self.progress.update(self.tasks[name], completed=p.done, total=max(p.total, 1),
                                 rate=f"{p.cells_per_s:.2f} cells/s · {p.tokens_per_s:.1f} tok/s · {p.failed} NaN{state}")


    def _log_line(self, snap) -> None:
        import time

        now = time.monotonic()
        if now - getattr(self, "_logged", -1e9) < 30 and snap.done < snap.total:
            return
        self._logged = now
        eta = "?" if snap.eta_s is None else f"{snap.eta_s:.0f} s"
        per = "; ".join(f"{n} {p.done}/{p.total} {p.cells_per_s:.3f} cells/s {p.tokens_per_s:.1f} tok/s {p.failed} NaN {p.state}"
                        for n, p in snap.experts.items())
        console.print(f"[{snap.elapsed_s:.0f} s] {snap.done}/{snap.total} cells, ${snap.spent_usd:.6f}, ETA {eta} — {per}",
                      soft_wrap=True)


def _summary(result) -> None:
    from rich.table import Table

    status = result.status
    names = list(status.experts)
    table = Table(title=f"quality per skill (mean score; n graded) — {result.out_dir}")
    table.add_column("skill")
    for n in names:
        table.add_column(n, justify="right")
    for skill, row in sorted(status.skills.items()):
        table.add_row(skill, *[f"{row[n].quality:.2f} ({row[n].n})" if n in row else "—" for n in names])
    table.add_row("[bold]all[/]", *[f"[bold]{status.overall[n].quality:.3f}[/] ({status.overall[n].n})" if n in status.overall
                                    else "—" for n in names])
    table.add_row("mean cost (USD)", *[f"{status.overall[n].cost_usd:.2e}" if n in status.overall else "—" for n in names])
    table.add_row("mean latency (s)", *[f"{status.overall[n].latency_s:.2f}" if n in status.overall and status.overall[n].latency_s
                                        is not None else "—" for n in names])
    console.print(table)
    for name, c in status.experts.items():
        if c["call_errors"] or c["grade_errors"] or c["pending"]:
            last = result.progress.experts.get(name)
            why = f" — last error: {last.last_error}" if last is not None and last.last_error else ""
            console.print(f"[yellow]{name}[/]: {c['call_errors']} failed calls, {c['grade_errors']} ungradable answers, "
                          f"{c['pending']} not run{why}")
    p = result.progress
    console.print(f"this run: {p.done} cells in {result.seconds:.0f} s, ${p.spent_usd:.6f} spent; state: {result.state}")
    if result.matrix_path is not None:
        console.print(f"[green]✓[/] routing matrix: {result.matrix_path} — train with "
                      f"`expertmux train knn --data {result.out_dir}`")
