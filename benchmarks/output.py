"""Where benchmarks leave their results: optional JSON and Markdown files, folders made as needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def write_text(path: Path | None, text: str) -> None:
    """Write ``text`` to ``path`` (creating its folder); nothing when no path was asked for."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_json(path: Path | None, data: Any, *, indent: int = 1) -> None:
    write_text(path, json.dumps(data, indent=indent))


def publish(lines: list[str], data: Any, *, json_path: Path | None, markdown_path: Path | None) -> str:
    """Print a benchmark's Markdown table and keep it, and its raw figures, where asked."""
    text = "\n".join(lines) + "\n"
    print(text)
    write_json(json_path, data)
    write_text(markdown_path, text)
    return text


def split_read_arguments(description: str) -> argparse.ArgumentParser:
    """The options of a benchmark that reads one split of a routing matrix once: the matrix, the
    split, bootstrap resamples, the feature cache, and where to keep the table and its figures."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--boot", type=int, default=1000)
    parser.add_argument("--cache-dir", type=Path, default=Path("var/cache/embeddings"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    return parser
