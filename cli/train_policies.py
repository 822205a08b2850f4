"""``expertmux train <policy>``: fit a learned routing policy on a routing matrix, write its artifact.

One sub-command per learned policy (knn, mlp, mf, coe, coe_cluster, tryage, graphrouter), each
with the policy's hyperparameters as options (read from its constructor), so
``expertmux train knn --help`` lists exactly what knn takes. Tuple hyperparameters take a
comma-separated list (``--k-grid 10,20,40``).
"""

from __future__ import annotations

import inspect
import json
import typing
from pathlib import Path
from typing import Any

import typer

from cli.app import train_app
from cli.common import console, fail, load_settings, stage_progress
from cli.ledger import LEDGER_OPTIONS
from cli.ledger import run_train as run_ledger_training
from cli.ledger import train_parameters as ledger_train_parameters
from core.errors import ExpertmuxError

# Learned policies, in the order ``expertmux train --help`` lists them.
TRAINABLE = ("knn", "mlp", "mf", "coe", "coe_cluster", "tryage", "graphrouter", "probe", "irt", "rank", "cascade")


def _option_type(annotation: Any) -> tuple[Any, bool]:
    """(type typer gets, whether the value is a comma-separated list to parse)."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (tuple, list):
        return str, True
    if args and len(args) == 1 and type(None) in typing.get_args(annotation):  # Optional[X]
        inner, is_list = _option_type(args[0])
        return inner | None, is_list
    return annotation, False


def _parse_list(raw: str, annotation: Any) -> tuple:
    item = next((a for a in typing.get_args(annotation) if a is not Ellipsis and a is not type(None)), str)
    if typing.get_origin(item) is not None:
        item = str
    parts = [p.strip() for p in raw.strip("[]()").split(",") if p.strip()]
    try:
        return tuple(item(p) for p in parts)
    except ValueError as exc:
        raise ExpertmuxError(f"cannot read {raw!r} as a list of {item.__name__}: {exc}") from None


def _hyperparameters(cls) -> list[tuple[str, Any, Any, bool]]:
    """(name, default, option type, is_list) of every constructor parameter."""
    hints = typing.get_type_hints(cls.__init__)
    out = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        kind, is_list = _option_type(hints.get(name, str))
        default = param.default
        if is_list and default is not None and default is not inspect.Parameter.empty:
            default = ",".join(str(v) for v in default)
        out.append((name, default, kind, is_list))
    return out


def _parse_params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ExpertmuxError(f"--param wants NAME=VALUE, got {item!r}")
        try:
            out[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = raw
    return out


def _run(policy: str, hyper: dict[str, Any], *, data: Path, out: Path | None, eval_split: str, flat: bool,
         cache_dir: Path | None, config: Path | None, extra: list[str]) -> None:

    from policies.data import RoutingData
    from policies.features import configure_feature_stores
    from policies.training import train_policy

    try:
        settings = load_settings(config)
        configure_feature_stores(data_dir=settings.data_dir, cache_dir=cache_dir)
        matrix = RoutingData.load(data)
        params = {**hyper, **_parse_params(extra)}
        target = out or settings.data_dir / "policies" / policy
        console.print(f"{matrix.name}: {len(matrix)} queries, {matrix.n_models} models; training [bold]{policy}[/] → {target}")
        with stage_progress() as on_progress:
            result = train_policy(policy, matrix, params=params, out=target, eval_split=eval_split or None, flat=flat,
                                  progress=on_progress)
    except ExpertmuxError as exc:
        fail(exc)
    _summary(result)


def _summary(result) -> None:
    from rich.table import Table

    m = result.manifest
    table = Table(title=f"{m['policy']} {m['version']} — {result.path}")
    table.add_column("item")
    table.add_column("value", justify="right")
    data = m.get("data") or {}
    table.add_row("training rows", f"{data.get('n_train')} ({data.get('name')}, fingerprint {data.get('fingerprint')})")
    table.add_row("models", str(len(m["models"])))
    table.add_row("fit time", f"{m['metrics']['fit_s']:.1f} s")
    for key, value in (m["metrics"].get("learned") or {}).items():
        if not isinstance(value, dict):
            table.add_row(f"learned: {key}", f"{value:.4g}" if isinstance(value, float) else str(value))
    for split, figures in m["metrics"].items():
        if isinstance(figures, dict) and "aiq" in figures:
            for key in ("aiq", "quality_at_best_cost", "cost_to_best_quality", "gap_closed"):
                v = figures.get(key)
                table.add_row(f"{split}: {key}", "—" if v is None else f"{v:.4f}")
    for name, info in m["files"].items():
        table.add_row(f"file {name}", f"{info['bytes'] / 1e6:.2f} MB, sha256 {info['sha256'][:12]}…")
    console.print(table)
    console.print(f"[green]✓[/] artifact written to {result.path}")


def _make_command(policy: str):
    from policies.registry import get_policy_class

    cls = get_policy_class(policy)
    hyper = _hyperparameters(cls)
    lists = {name: (kind, True) for name, _, kind, is_list in hyper if is_list}
    hints = typing.get_type_hints(cls.__init__)

    def command(**kwargs: Any) -> None:
        common = {k: kwargs.pop(k) for k in ("data", "out", "eval_split", "flat", "cache_dir", "config", "param")}
        ledger = {k: kwargs.pop(k) for k in LEDGER_OPTIONS}
        values = {}
        for name, value in kwargs.items():
            if name in lists and isinstance(value, str):
                value = _parse_list(value, hints[name])
            values[name] = value
        extra = common.pop("param") or []
        if ledger["ledger"]:  # learn from logged traffic (cli/ledger.py)
            run_ledger_training(policy, {**values, **_parse_params(extra)}, ledger, out=common["out"],
                                cache_dir=common["cache_dir"], config=common["config"])
            return
        if common["data"] is None:
            fail("give --data DIR (a routing matrix) or --ledger (logged traffic with feedback)")
        _run(policy, values, extra=extra, **common)

    params = [
        inspect.Parameter("data", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                          default=typer.Option(None, "--data", "-d", help="routing-matrix folder (matrix.parquet + models.json)")),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                          default=typer.Option(None, "--out", "-o", help=f"artifact root (default: <data_dir>/policies/{policy}); "
                                               "the artifact goes into its next version folder v1, v2, ...")),
        inspect.Parameter("flat", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--flat", help="write into --out itself, not a version folder")),
        inspect.Parameter("eval_split", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                          default=typer.Option("test", "--eval-split", help="split scored into the manifest ('' = none)")),
        inspect.Parameter("cache_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                          default=typer.Option(None, "--cache-dir", help="embedding cache (default: <data_dir>/cache/embeddings)")),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
                          default=typer.Option(None, "--config", "-c", help="expertmux config (only for data_dir)")),
        inspect.Parameter("param", inspect.Parameter.KEYWORD_ONLY, annotation=list[str],
                          default=typer.Option([], "--param", help="any hyperparameter as NAME=VALUE (JSON values parse)")),
    ]
    params += ledger_train_parameters()
    for name, default, kind, is_list in hyper:
        flag = "--" + name.replace("_", "-")
        help_text = "comma-separated list" if is_list else None
        if default is inspect.Parameter.empty:
            option = typer.Option(..., flag, help=help_text)
        else:
            option = typer.Option(default, flag, help=help_text)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=option))
    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = f"train_{policy}"
    own = cls.__dict__.get("__doc__") or inspect.getmodule(cls).__doc__ or ""
    doc = inspect.cleandoc(own).split("\n\n")[0].replace("\n", " ")
    command.__doc__ = (f"Fit '{policy}' on the train rows of a routing matrix (--data) or on logged traffic (--ledger) "
                       f"and write a versioned artifact. {doc}")
    return command


for _name in TRAINABLE:
    train_app.command(_name)(_make_command(_name))
