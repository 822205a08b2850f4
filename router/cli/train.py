"""``expertmux train <policy>``: train learned routing components and write their artifacts."""

from __future__ import annotations

from pathlib import Path

import typer

from router.cli import app
from router.cli.common import console, fail, load_settings
from router.errors import ExpertmuxError

train_app = typer.Typer(help="Train learned routing components (labels, fit, versioned artifact).", no_args_is_help=True)
app.add_typer(train_app, name="train")


def _model_for(name: str, settings) -> str:
    """A config expert's name stands for its model; anything else is a packaged model or a path."""
    for expert in settings.app_config.experts:
        if expert.name == name and expert.backend == "llamacpp":
            return expert.llamacpp.model_path or expert.model
    return name


@train_app.command("r2r")
def train_r2r_command(
    slm: str = typer.Option(..., "--slm", help="small model: packaged name (smollm2-135m-instruct), config expert or GGUF path"),
    llm: str = typer.Option(..., "--llm", help="large model: packaged name (gemma3-270m), config expert or GGUF path"),
    prompts: list[Path] = typer.Option(..., "--prompts", help="routing-matrix folder(s); their train split's prompt column"),
    out: Path = typer.Option(None, "--out", help="artifact folder (default: <data_dir>/artifacts/r2r/<slm>+<llm>)"),
    flat: bool = typer.Option(False, "--flat", help="write the artifact into --out itself, not a version sub-folder"),
    n_prompts: int = typer.Option(160, "--n-prompts", min=2, help="training prompts (a share is kept for validation)"),
    val_share: float = typer.Option(0.2, "--val-share", min=0.05, max=0.5),
    max_chars: int = typer.Option(1500, "--max-prompt-chars", help="skip longer prompts"),
    gen_tokens: int = typer.Option(48, "--gen-tokens", help="length of the LLM's reference continuation"),
    judge_tokens: int = typer.Option(16, "--judge-tokens", help="length of the continuations the judge compares"),
    points: int = typer.Option(6, "--points", help="differing positions continued and judged per prompt"),
    judge: str = typer.Option("semantic", "--judge", help="semantic (MiniLM similarity) | lexical (word overlap)"),
    similarity: float = typer.Option(0.8, "--similarity", help="below this similarity two continuations differ in meaning"),
    features: str = typer.Option("logits", "--features", help="logits (works in remote mode too) | hidden (adds SLM hidden states)"),
    hidden_units: int = typer.Option(32, "--hidden-units"),
    epochs: int = typer.Option(300, "--epochs"),
    target_recall: float = typer.Option(0.8, "--target-recall", help="default threshold: hand over this share of divergent tokens"),
    n_threads: int = typer.Option(2, "--n-threads"),
    n_ctx: int = typer.Option(2048, "--n-ctx"),
    seed: int = typer.Option(0, "--seed"),
    config: Path = typer.Option(None, "--config", "-c", help="expertmux config (expert names, data_dir)"),
) -> None:
    """Label SLM tokens as divergent or neutral against the LLM, fit the router, write the artifact."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from experts.r2r.datasets import load_prompts
    from experts.r2r.labels import LabelConfig
    from experts.r2r.pair import load_local_engine
    from experts.r2r.pipeline import Hooks, train_r2r
    from experts.r2r.training import TrainConfig

    if features not in ("logits", "hidden"):
        fail(f"--features must be 'logits' or 'hidden', not {features!r}")
    if judge not in ("semantic", "lexical"):
        fail(f"--judge must be 'semantic' or 'lexical', not {judge!r}")
    try:
        settings = load_settings(config)
        slm_model, llm_model = _model_for(slm, settings), _model_for(llm, settings)
        items = load_prompts(prompts, split="train", n=n_prompts, seed=seed, max_chars=max_chars)
        with console.status("loading the two models …"):
            engine = load_local_engine(slm_model, llm_model, data_dir=settings.data_dir, n_threads=n_threads, n_ctx=n_ctx,
                                       hidden=features == "hidden")
        console.print(f"SLM {slm_model} ({engine.slm_format} prompt) · LLM {llm_model} ({engine.llm_format} prompt) · "
                      f"{'shared tokenizer' if engine.shared_vocab else 'different tokenizers: text-level hand-over'} · "
                      f"{len(items)} prompts from {', '.join(p.name for p in prompts)}")
        label_cfg = LabelConfig(gen_tokens=gen_tokens, judge_tokens=judge_tokens, points_per_prompt=points, judge=judge,
                                similarity=similarity, seed=seed)
        train_cfg = TrainConfig(hidden_units=hidden_units, use_hidden=features == "hidden", epochs=epochs,
                                target_recall=target_recall, seed=seed)
        target = out or settings.data_dir / "artifacts" / "r2r" / f"{Path(slm).stem}+{Path(llm).stem}"
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console) as progress:
            tasks: dict[str, int] = {}

            def label_advance(stats) -> None:
                progress.update(tasks["label"], advance=1, description=(
                    f"labelling: {stats.positions} positions, {stats.differ} differ, "
                    f"{stats.divergent}/{stats.judged} judged divergent"))

            hooks = Hooks(
                label_start=lambda total: tasks.__setitem__("label", progress.add_task("labelling", total=total)),
                label_advance=label_advance,
                fit_start=lambda total: tasks.__setitem__("fit", progress.add_task("fitting the router", total=total)),
                fit_advance=lambda epoch, loss, auc: progress.update(
                    tasks["fit"], completed=epoch + 1, description=f"fitting the router (loss {loss:.3f}, val AUC {auc:.3f})"),
            )
            result = train_r2r(engine, items, out=target, versioned=not flat,
                               models={"slm": slm_model, "llm": llm_model, "slm_format": engine.slm_format,
                                       "llm_format": engine.llm_format},
                               label_cfg=label_cfg, train_cfg=train_cfg, val_share=val_share,
                               sources=[p.name for p in prompts], hooks=hooks)
            progress.update(tasks["fit"], completed=train_cfg.epochs, description="fitting the router (done)")
    except (ExpertmuxError, ValueError, RuntimeError) as exc:
        fail(exc if isinstance(exc, ExpertmuxError) else str(exc))
    m = result.manifest["metrics"]
    table = Table(title=f"R2R router {result.manifest['version']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    labels = result.label_stats
    rows = [
        ("prompts (train / validation)", f"{result.manifest['data']['prompts']['train']} / {result.manifest['data']['prompts']['validation']}"),
        ("SLM positions / agree with LLM", f"{labels['positions']} / {labels['agree']}"),
        ("differing positions / judged / divergent", f"{labels['differ']} / {labels['judged']} / {labels['divergent']}"),
        ("validation ROC-AUC (router)", f"{m['val_auc']:.3f}"),
        ("validation ROC-AUC (SLM-confidence baseline)", f"{m['val_auc_confidence_baseline']:.3f}"),
        ("validation average precision", f"{m['val_average_precision']:.3f}"),
        ("default threshold", f"{m['default_threshold']:.3f}"),
        ("hand-over rate at default (teacher-forced)", f"{m['at_default_threshold']['hand_over_rate']:.3f}"),
        ("epochs kept", str(m["epochs"])),
        ("labelling time", f"{labels['seconds']:.0f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"[green]✓[/] artifact written to {result.path}")
