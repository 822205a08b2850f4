"""The configuration reference (docs/configuration.md), generated from the config models.

Every field of the YAML config (``core.config.AppConfig`` and the models below it) and every
environment variable of ``core.settings.Settings``: name, type, default and what it does. The
description is the field's ``description`` where it has one, else the comment on its line in the
source, else the model's docstring says it. A test compares the page with this output, so the
page cannot go stale.
"""

from __future__ import annotations

import inspect
import re
import tokenize
import typing
from io import StringIO
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Configuration reference

Generated from the configuration models by `expertmux docs config > docs/configuration.md`; do not
edit by hand. How to write a config: [the configuration guide](configuration-guide.md).
"""


def _line_comments(cls: type) -> dict[str, str]:
    """``field: type = ...  # comment`` → {field: comment}, read from the class's own source."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    comments, field = {}, None
    for tok in tokenize.generate_tokens(StringIO(source).readline):
        if tok.type == tokenize.NAME and tok.start[1] == 4 and field is None:
            field = tok.string
        elif tok.type == tokenize.COMMENT and field is not None:
            comments.setdefault(field, tok.string.lstrip("# ").strip())
        elif tok.type == tokenize.NEWLINE:
            field = None
    return comments


def _type_name(annotation: typing.Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation).replace("typing.", "").replace("pathlib.", "")
    text = re.sub(r"\b(core\.config|core\.settings|pydantic\.types)\.", "", text)
    return text.replace("NoneType", "None").replace("<class '", "").replace("'>", "")


def _default(field) -> str:
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
        return "(empty)" if value in ({}, []) else f"`{value!r}`" if not isinstance(value, BaseModel) else "(defaults below)"
    if field.default is PydanticUndefined:
        return "**required**"
    value = field.default
    if isinstance(value, Path):
        value = _project_relative(value)
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def _project_relative(path: Path) -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        return "<project>/" + str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _nested_models(annotation: typing.Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _nested_models(arg)]


def _table(model: type[BaseModel], *, env_prefix: str | None = None) -> list[str]:
    comments = _line_comments(model)
    head = "| environment variable | type | default | meaning |" if env_prefix else "| key | type | default | meaning |"
    rows = [head, "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        key = f"`{env_prefix}{name.upper()}`" if env_prefix else f"`{field.alias or name}`"
        meaning = (field.description or comments.get(name, "")).replace("|", r"\|")
        rows.append(f"| {key} | `{_type_name(field.annotation)}` | {_default(field)} | {meaning} |")
    return rows


def render() -> str:
    """The whole reference page as Markdown."""
    from core.config import AppConfig
    from core.settings import Settings

    out = [HEADER, "## The YAML file (`EXPERTMUX_CONFIG`, default `config/expertmux.yaml`)", ""]
    seen: set[type] = set()
    queue: list[tuple[str, type[BaseModel]]] = [("top level", AppConfig)]
    while queue:
        where, model = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        out += [f"### {where} (`{model.__name__}`)", ""]
        doc = inspect.cleandoc(model.__doc__ or "") if model.__doc__ and model.__doc__ is not BaseModel.__doc__ else ""
        if doc:
            out += [" ".join(doc.split()), ""]
        out += _table(model) + [""]
        for name, field in model.model_fields.items():
            for sub in _nested_models(field.annotation):
                queue.append((f"{where}.{name}" if where != "top level" else name, sub))
    prefix = Settings.model_config.get("env_prefix", "")
    out += ["## Environment (`core.settings.Settings`)", "",
            f"Read once at start-up; every variable starts with `{prefix}`.", ""]
    out += _table(Settings, env_prefix=prefix) + [""]
    return "\n".join(out).rstrip() + "\n"
