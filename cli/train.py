"""``expertmux train <policy>``: train learned routing components and write their artifacts."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.app import train_app
from cli.common import console, fail, load_settings
from core.errors import ExpertmuxError


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
    prompts: list[Path] = typer.Option(None, "--prompts", help="routing-matrix folder(s); their train split's prompt column"),
    out: Path = typer.Option(None, "--out", help="artifact folder (default: <data_dir>/artifacts/r2r/<slm model>+<llm model>, "
                                                   "where an r2r expert without r2r.router looks)"),
    flat: bool = typer.Option(False, "--flat", help="write the artifact into --out itself, not a version sub-folder"),
    save_labels: Path = typer.Option(None, "--save-labels", help="also keep the labelled positions here (.npz + .json)"),
    labels_from: Path = typer.Option(None, "--labels", help="fit on labels saved earlier instead of generating them"),
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

    from experts.r2r.artifact import pair_router_dir
    from experts.r2r.datasets import load_prompts
    from experts.r2r.labels import LabelConfig
    from experts.r2r.pair import load_local_engine
    from experts.r2r.pipeline import Hooks, Labels, collect_labels, fit_and_save
    from experts.r2r.training import TrainConfig

    if features not in ("logits", "hidden"):
        fail(f"--features must be 'logits' or 'hidden', not {features!r}")
    if judge not in ("semantic", "lexical"):
        fail(f"--judge must be 'semantic' or 'lexical', not {judge!r}")
    if not prompts and labels_from is None:
        fail("give --prompts (routing-matrix folders) or --labels (saved labels)")
    try:
        settings = load_settings(config)
        slm_model, llm_model = _model_for(slm, settings), _model_for(llm, settings)
        train_cfg = TrainConfig(hidden_units=hidden_units, use_hidden=features == "hidden", epochs=epochs,
                                target_recall=target_recall, seed=seed)
        target = out or pair_router_dir(settings.data_dir, slm_model, llm_model)
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
            if labels_from is not None:
                labels = Labels.load(labels_from)
                progress.console.print(f"labels from {labels_from}: {len(labels.arrays['label'])} positions "
                                       f"({labels.meta['stats']['prompts']} prompts)")
            else:
                items = load_prompts(prompts, split="train", n=n_prompts, seed=seed, max_chars=max_chars)
                # hidden states cost nothing extra while labelling (teacher forcing outputs every
                # position anyway), so they are always kept: saved labels then serve either feature set
                engine = load_local_engine(slm_model, llm_model, data_dir=settings.data_dir, n_threads=n_threads,
                                           n_ctx=n_ctx, hidden=True)
                progress.console.print(
                    f"SLM {slm_model} ({engine.slm_format} prompt) · LLM {llm_model} ({engine.llm_format} prompt) · "
                    f"{'shared tokenizer' if engine.shared_vocab else 'different tokenizers: text-level hand-over'} · "
                    f"{len(items)} prompts from {', '.join(p.name for p in prompts)}")
                label_cfg = LabelConfig(gen_tokens=gen_tokens, judge_tokens=judge_tokens, points_per_prompt=points,
                                        judge=judge, similarity=similarity, seed=seed)
                labels = collect_labels(engine, items, label_cfg=label_cfg, val_share=val_share, seed=seed, hooks=hooks,
                                        models={"slm": slm_model, "llm": llm_model, "slm_format": engine.slm_format,
                                                "llm_format": engine.llm_format})
                if save_labels is not None:
                    progress.console.print(f"labels saved to {labels.save(save_labels)}")
            result = fit_and_save(labels, out=target, train_cfg=train_cfg, versioned=not flat, hooks=hooks)
            progress.update(tasks["fit"], completed=train_cfg.epochs, description="fitting the router (done)")
    except (ExpertmuxError, ValueError, RuntimeError, OSError) as exc:
        fail(exc if isinstance(exc, ExpertmuxError) else str(exc))
    _summary(result.manifest, result.path)


def _summary(manifest: dict, path: Path) -> None:
    from rich.table import Table

    m, labels, prompts = manifest["metrics"], manifest["data"]["labels"], manifest["data"]["prompts"]
    table = Table(title=f"R2R router {manifest['version']} ({manifest['features']['set']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("prompts (train / validation)", f"{prompts['train']} / {prompts['validation']}"),
        ("SLM positions / agreeing with the LLM", f"{labels['positions']} / {labels['agree']}"),
        ("differing positions / judged / divergent", f"{labels['differ']} / {labels['judged']} / {labels['divergent']}"),
        ("validation ROC-AUC: router", f"{m['val_auc']:.3f}"),
        ("validation ROC-AUC: SLM-confidence baseline", f"{m['val_auc_confidence_baseline']:.3f}"),
        ("validation average precision", f"{m['val_average_precision']:.3f}"),
        ("default threshold", f"{m['default_threshold']:.3f}"),
        ("hand-over rate at default (teacher-forced)", f"{m['at_default_threshold']['hand_over_rate']:.3f}"),
        ("epochs kept", str(m["epochs"])),
        ("labelling time", f"{labels['seconds']:.0f} s"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    console.print(f"[green]✓[/] artifact written to {path}")
