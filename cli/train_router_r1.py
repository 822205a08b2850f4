"""``expertmux train router-r1`` and ``expertmux eval --policy router-r1``: GRPO + LoRA on the
Router-R1 protocol, and its evaluation in the routing-matrix environment."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.app import train_app
from cli.common import console, fail, load_settings, save_outputs
from core.errors import ExpertmuxError


def _models(value: str | None) -> list[str] | None:
    return [m.strip() for m in value.split(",") if m.strip()] if value else None


@train_app.command("router-r1")
def train_router_r1_command(
    data: Path = typer.Option(None, "--data", "-d", help="routing-matrix folder (--env matrix)"),
    steps: int = typer.Option(4, "--steps", min=0, help="GRPO steps (0: the format warm-up alone)"),
    alpha: float = typer.Option(0.2, "--alpha", min=0.0, max=1.0, help="weight of the cost reward"),
    lora_r: int = typer.Option(8, "--lora-r", min=1),
    env: str = typer.Option("matrix", "--env", help="matrix (recorded outcomes) | live (local experts, arithmetic task)"),
    out: Path = typer.Option(None, "--out", help="artifact root (default: <data_dir>/policies/router-r1); versions v1, v2, …"),
    models: str = typer.Option(None, "--models", help="comma-separated candidate experts (default: all of the matrix's)"),
    base_model: str = typer.Option("smollm2-135m-instruct", "--base-model", help="HF folder or packaged model name"),
    prompts_per_step: int = typer.Option(2, "--prompts-per-step", min=1),
    num_generations: int = typer.Option(4, "--generations", min=2, help="episodes per prompt (the GRPO group)"),
    learning_rate: float = typer.Option(2e-4, "--lr"),
    max_rounds: int = typer.Option(2, "--max-rounds", min=1),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=8),
    think_budget: int = typer.Option(12, "--think-budget", min=0, help="close thoughts after N tokens (0: off)"),
    demonstration: bool = typer.Option(False, "--demonstration/--no-demonstration", help="a worked example in the prompt"),
    warmup_steps: int = typer.Option(30, "--warmup-steps", min=0, help="supervised format warm-up steps before GRPO"),
    init_adapter: Path = typer.Option(None, "--init-adapter", help="start from this router-r1 artifact (e.g. a --steps 0 warm-up)"),
    pool_size: int = typer.Option(0, "--pool-size", min=0,
                                  help="offer each training episode a random subset of N candidates, in random order (0: all)"),
    temperature: float = typer.Option(1.0, "--temperature"),
    max_question_chars: int = typer.Option(400, "--max-question-chars"),
    description_chars: int = typer.Option(80, "--description-chars"),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads (1 is fastest on a busy 2-core machine)"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda (bfloat16; the GPU configuration)"),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1, help="gradient accumulation steps"),
    lora_targets: str = typer.Option("attention", "--lora-targets", help="attention (q,k,v,o) | all (attention + MLP)"),
    seed: int = typer.Option(0, "--seed"),
    plot: Path = typer.Option(None, "--plot", help="reward curve PNG (default: next to the artifact)"),
    config: Path = typer.Option(None, "--config", "-c"),
) -> None:
    """Train the Router-R1 router (GRPO, LoRA) and write a versioned adapter artifact."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from policies.router_r1.lm import ensure_hf_model
    from policies.router_r1.train import TrainConfig, plot_history, save_router_artifact, train_router

    if env not in ("matrix", "live"):
        fail(f"--env must be 'matrix' or 'live', not {env!r}")
    if not steps and not warmup_steps:
        fail("nothing to train: --steps 0 needs --warmup-steps > 0")
    if env == "matrix" and data is None:
        fail("--env matrix needs --data DIR (a routing matrix)")
    try:
        settings = load_settings(config)
        cfg = TrainConfig(steps=steps, alpha=alpha, lora_r=lora_r, lora_alpha=2 * lora_r, learning_rate=learning_rate,
                          prompts_per_step=prompts_per_step, num_generations=num_generations, max_rounds=max_rounds,
                          max_new_tokens=max_new_tokens, think_budget=think_budget, demonstration=demonstration,
                          warmup_steps=warmup_steps, init_adapter=str(init_adapter or ""), pool_size=pool_size,
                          temperature=temperature, seed=seed, threads=threads, device=device,
                          gradient_accumulation_steps=grad_accum)
        if lora_targets == "all":
            cfg.target_modules = [*cfg.target_modules, "gate_proj", "up_proj", "down_proj"]
        elif lora_targets != "attention":
            fail(f"--lora-targets must be 'attention' or 'all', not {lora_targets!r}")
        environment, env_info = _environment(env, data, models, settings, max_question_chars, description_chars)
        model_path = ensure_hf_model(base_model, data_dir=settings.data_dir)
        console.print(f"router {model_path.name} · {env} environment, {len(environment)} training queries · candidates: "
                      f"{', '.join(c.name for c in environment.candidates)} · α={alpha} · LoRA r={lora_r}")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=console) as progress:
            per_step = prompts_per_step * num_generations
            t_warm = progress.add_task("format warm-up", total=max(warmup_steps, 1), completed=0 if warmup_steps else 1)
            t_steps = progress.add_task("GRPO steps", total=steps)
            t_eps = progress.add_task("episodes", total=steps * per_step)

            def on_step(row: dict) -> None:
                progress.console.print(f"step {row['step']}: reward {row['reward']:+.3f} · well-formed {row['well_formed']:.0%} "
                                       f"· quality {row['quality']:.3f} · calls {row['calls']:.2f}")
                progress.update(t_steps, advance=1, description=(
                    f"GRPO steps (reward {row['reward']:+.2f}, well-formed {row['well_formed']:.0%}, calls {row['calls']:.1f})"))

            model, _tok, history = train_router(environment, model_path, cfg, on_step=on_step,
                                                on_episode=lambda _e: progress.advance(t_eps),
                                                on_warmup=lambda k, loss: progress.update(
                                                    t_warm, completed=k + 1, description=f"format warm-up (loss {loss:.3f})"))
        root = out or settings.data_dir / "policies" / "router-r1"
        metrics = {}
        if history.rows:
            first, last = history.rows[0], history.rows[-1]
            metrics = {"train_reward_first": first["reward"], "train_reward_last": last["reward"],
                       "train_well_formed_first": first["well_formed"], "train_well_formed_last": last["well_formed"]}
        path = save_router_artifact(model, root, cfg=cfg, env_info=env_info, history=history, metrics=metrics,
                                    base_model=str(model_path))
        png = plot_history(history, plot or path.parent / f"{path.name}-reward.png")
    except (ExpertmuxError, ValueError, RuntimeError, OSError) as exc:
        fail(exc if isinstance(exc, ExpertmuxError) else str(exc))
    curve = ", ".join(f"{r['reward']:+.2f}" for r in history.rows)
    console.print(f"reward per step: {curve}")
    console.print(f"[green]✓[/] artifact written to {path} · reward curve {png}")


def _environment(kind: str, data: Path | None, models: str | None, settings, max_question_chars: int, description_chars: int):
    if kind == "live":
        from router.agents.r1_live_env import LiveEnv

        environment = LiveEnv.from_settings(settings, models=_models(models))
        return environment, {"env": "live", "fingerprint": environment.fingerprint, "task": environment.task_name,
                             "models": [c.name for c in environment.candidates]}
    from policies.router_r1.evaluate import load_matrix_env

    matrix, environment = load_matrix_env(data, split="train", models=_models(models), max_question_chars=max_question_chars,
                                          description_chars=description_chars)
    return environment, {"env": "matrix", "dataset": matrix.name, "fingerprint": matrix.fingerprint(),
                         "split": "train", "models": environment.models, "n_queries": len(environment)}


def _start_key(environment, rows, cfg, base) -> str:
    import hashlib

    parts = [environment.fingerprint, ",".join(environment.models), ",".join(map(str, rows)), str(base),
             str(cfg.max_new_tokens), str(cfg.think_budget), str(cfg.max_rounds), str(cfg.max_retries),
             str(cfg.demonstration), str(cfg.alpha)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def run_eval(*, data: Path, artifact: Path | None, models: str | None, split: str, n: int, policies: str,
             json_out: Path | None, markdown_out: Path | None, config: Path | None, threads: int = 1) -> None:
    """The router (trained, and its untrained start) vs query-level policies, in the matrix env."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from policies.features import configure_feature_stores
    from policies.router_r1.evaluate import eval_rows, evaluate_query_policies, evaluate_router, load_matrix_env, markdown_table
    from policies.router_r1.lm import ensure_hf_model, load_model
    from policies.router_r1.train import TrainConfig, verify_router_artifact

    try:
        settings = load_settings(config)
        configure_feature_stores(data_dir=settings.data_dir)
        manifest: dict = {}
        adapter = None
        if artifact is not None:
            adapter, manifest = verify_router_artifact(artifact)
        hp = dict(manifest.get("hyperparameters") or {})
        cfg = TrainConfig(**{k: v for k, v in hp.items() if k in TrainConfig.__dataclass_fields__})
        cfg.threads = threads
        trained_on = (manifest.get("data") or {}).get("models")
        chosen = _models(models) or trained_on
        matrix, environment = load_matrix_env(data, split=split, models=chosen, max_question_chars=400,
                                              description_chars=80)
        rows = eval_rows(environment, n, seed=cfg.seed)
        base = ensure_hf_model(manifest.get("base_model") or "smollm2-135m-instruct", data_dir=settings.data_dir)
        results: dict = {}
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            runs = [("router-r1 (untrained start)", None)] + ([(f"router-r1 ({adapter.name})", adapter)] if adapter else [])
            for label, ad in runs:
                # the untrained start decodes greedily: its results are cached per (data, models, rows, decoding)
                key = _start_key(environment, rows, cfg, base) if ad is None else None
                cache = settings.data_dir / "cache" / "router-r1" / f"start-{key}.json" if key else None
                if cache is not None and cache.exists():
                    results[label] = json.loads(cache.read_text())
                    continue
                task = progress.add_task(label, total=len(rows))
                tok, model = load_model(base, adapter=ad, threads=threads)
                results[label] = evaluate_router(environment, rows, tok, model, cfg, on_row=lambda t=task: progress.advance(t))
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    cache.write_text(json.dumps(results[label]))
            names = [p.strip() for p in policies.split(",") if p.strip()]
            if names:
                task = progress.add_task(f"query-level policies ({', '.join(names)})", total=1)
                results.update(evaluate_query_policies(matrix, environment, rows, names, alpha=cfg.alpha))
                progress.advance(task)
    except (ExpertmuxError, ValueError, RuntimeError, OSError) as exc:
        fail(exc if isinstance(exc, ExpertmuxError) else str(exc))
    unseen = sorted(set(environment.models) - set(trained_on or environment.models))
    table = markdown_table(results)
    console.print(f"{matrix.name} / {split}: {len(rows)} queries · candidates {', '.join(environment.models)}"
                  + (f" · unseen in training: {', '.join(unseen)}" if unseen else ""))
    console.print(table)
    report = {"dataset": matrix.name, "split": split, "n_queries": len(rows), "models": environment.models,
              "unseen_models": unseen, "artifact": str(adapter) if adapter else None, "results": results,
              "reward_curve": manifest.get("reward_curve")}
    save_outputs(json_out, report, markdown_out, table + "\n")
