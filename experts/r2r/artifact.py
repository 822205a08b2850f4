"""The router artifact: a versioned directory with ``manifest.json`` and safetensors weights.

The manifest names the policy, version, hyperparameters, training-data fingerprint, metrics,
creation time and the sha256 of each weight file. Loading checks every hash before reading a
byte of weights and turns any problem (missing, corrupted, foreign) into one clear error.

Routers are trained on the user's machine, never shipped: ``expertmux train r2r`` writes a pair's
router into the data folder (``pair_router_dir``), where an ``r2r`` expert without
``r2r.router`` finds it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError

POLICY = "r2r-router"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


class RouterArtifactError(ConfigError):
    """The router artifact is missing, corrupted or not an R2R router."""

    code = "router_artifact_error"


@dataclass(slots=True)
class RouterArtifact:
    path: Path
    manifest: dict[str, Any]
    weights: dict[str, np.ndarray]

    @property
    def version(self) -> str:
        return str(self.manifest.get("version"))

    @property
    def default_threshold(self) -> float:
        return float(self.manifest.get("default_threshold", 0.5))


def model_stem(model: str) -> str:
    """A model's name in folder names: a packaged name as it is, a GGUF file's name without ``.gguf``."""
    name = Path(model).name
    return name[: -len(".gguf")] if name.lower().endswith(".gguf") else name


def pair_router_dir(data_dir: str | Path, slm: str, llm: str) -> Path:
    """The router folder of a model pair in the data folder: ``<data_dir>/artifacts/r2r/<slm>+<llm>``.

    ``expertmux train r2r`` writes there unless given ``--out`` (one version sub-folder per run),
    and an ``r2r`` expert without ``r2r.router`` reads the newest version from there."""
    return Path(data_dir) / "artifacts" / "r2r" / f"{model_stem(slm)}+{model_stem(llm)}"


def train_command(slm: str, llm: str, out: str | Path | None = None) -> str:
    """The command line that trains a router for this pair (into ``out`` when given)."""
    cmd = (f"expertmux train r2r --slm {shlex.quote(slm)} --llm {shlex.quote(llm)} "
           "--prompts ../shared/data/llmrouter --prompts ../shared/data/routerdc")
    return cmd + (f" --out {shlex.quote(str(out))}" if out is not None else "")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_version(fingerprint: str) -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + fingerprint[:8]


def save_artifact(directory: Path, weights: dict[str, np.ndarray], manifest: dict[str, Any]) -> Path:
    """Write weights and manifest into ``directory`` (created); returns it."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path = directory / WEIGHTS
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}, str(weights_path))
    weights_path.chmod(0o644)  # an artifact is data to share, not a secret
    full = {
        "policy": POLICY,
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **manifest,
        "files": {WEIGHTS: {"sha256": sha256_file(weights_path), "bytes": weights_path.stat().st_size}},
    }
    (directory / MANIFEST).write_text(json.dumps(full, indent=2, sort_keys=False) + "\n")
    return directory


def resolve_artifact_dir(path: Path) -> Path:
    """An artifact directory, or a folder of versions (the newest is taken)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RouterArtifactError(f"router artifact not found: {path} (train one with `expertmux train r2r`)")
    if (path / MANIFEST).is_file():
        return path
    versions = sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()) if path.is_dir() else []
    if not versions:
        raise RouterArtifactError(f"router artifact {path} has no {MANIFEST} (and no version folders holding one)")
    return versions[-1]


def load_artifact(path: Path) -> RouterArtifact:
    """Read and verify an artifact; raises ``RouterArtifactError`` naming what is wrong."""
    directory = resolve_artifact_dir(path)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise RouterArtifactError(f"router artifact {directory}: unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("policy") != POLICY:
        found = manifest.get("policy") if isinstance(manifest, dict) else type(manifest).__name__
        raise RouterArtifactError(f"router artifact {directory}: manifest policy is {found!r}, expected {POLICY!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise RouterArtifactError(f"router artifact {directory}: format_version {manifest.get('format_version')!r} "
                                  f"is not supported (expected {FORMAT_VERSION})")
    files = manifest.get("files") or {}
    if WEIGHTS not in files:
        raise RouterArtifactError(f"router artifact {directory}: the manifest lists no {WEIGHTS}")
    weights_path = directory / WEIGHTS
    if not weights_path.is_file():
        raise RouterArtifactError(f"router artifact {directory}: {WEIGHTS} is missing")
    digest = sha256_file(weights_path)
    if digest != files[WEIGHTS].get("sha256"):
        raise RouterArtifactError(f"router artifact {directory}: {WEIGHTS} is corrupted (sha256 {digest[:12]}… "
                                  f"does not match the manifest's {str(files[WEIGHTS].get('sha256'))[:12]}…)")
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RouterArtifactError(f"router artifact {directory}: cannot read {WEIGHTS}: {exc}") from exc
    return RouterArtifact(path=directory, manifest=manifest, weights=weights)
