"""Versioned policy artifacts: a folder with a JSON manifest and the weights in a safe format.

Layout (one version per folder, ``<root>/<policy>/v1``, ``v2``, ...)::

    manifest.json   format, policy, version, hyperparameters, training-data fingerprint,
                    metrics, created_at, sha256 and size of every weight file, learned metadata
    weights.npz     numeric arrays only (numpy .npz, read with allow_pickle=False)

Loading checks everything before a policy object exists: the manifest parses and has the
expected format and version, the policy is known (and the one the caller asked for), every
listed file is present and its sha256 matches, and the arrays fit the policy. Any failure raises
``PolicyError`` naming the folder and what is wrong, so a caller can keep what it had. Nothing
is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import PolicyError
from policies.base import Policy
from policies.data import RoutingData
from policies.registry import available_policies, get_policy_class

FORMAT = "expertmux.policy-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.npz"
_VERSION_DIR = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]
    policy: Policy

    @property
    def version(self) -> str:
        return str(self.manifest["version"])


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


# ---- versions ------------------------------------------------------------------------------------
def versions(root: Path) -> list[Path]:
    """Version folders under ``root`` (``v1``, ``v2``, ...), oldest first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _VERSION_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve(path: str | Path) -> Path:
    """An artifact folder: ``path`` itself when it holds a manifest, else its newest version."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if not path.exists():
        raise PolicyError(f"policy artifact {path}: not found")
    found = [v for v in versions(path) if (v / MANIFEST).is_file()]
    if not found:
        raise PolicyError(f"policy artifact {path}: no {MANIFEST} there, and no version folder (v1, v2, ...) holding one")
    return found[-1]


# ---- saving --------------------------------------------------------------------------------------
def save_artifact(policy: Policy, root: str | Path, *, data: RoutingData | None = None, metrics: dict[str, Any] | None = None,
                  flat: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write ``policy`` (fitted) as the next version under ``root`` (or into ``root`` if ``flat``).

    The folder appears atomically (written aside, then renamed), so a reader never sees half an
    artifact. Returns the artifact folder.
    """
    arrays, state_meta = policy.artifact_state()
    for key, arr in arrays.items():
        if arr.dtype.kind not in "biuf":
            raise PolicyError(f"policy {policy.name!r}: state {key!r} has dtype {arr.dtype}; artifacts hold numbers only")
    with new_version(root, flat=flat, what="policy artifact") as (tmp, version, target):
        weights = tmp / WEIGHTS
        with open(weights, "wb") as f:
            np.savez(f, **arrays)
        cls = type(policy)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "policy": policy.name,
            "class": f"{cls.__module__}:{cls.__name__}",
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "hyperparameters": _jsonable(policy.get_params()),
            "data": _data_summary(data),
            "models": list(policy.expert_names),
            "metrics": _jsonable(metrics or {}),
            "files": {WEIGHTS: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}},
            "state": _jsonable(state_meta),
            "software": _software(),
            **({"extra": _jsonable(extra)} if extra else {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return target


@contextmanager
def new_version(root: Path, *, flat: bool = False, what: str = "artifact") -> Iterator[tuple[Path, str, Path]]:
    """Yield ``(scratch folder, version, target)`` for the next version ``vN`` under ``root`` (or
    ``root`` itself when ``flat``). The caller fills the scratch folder; on success it is renamed
    to ``target`` in one step, so a reader never sees half an artifact; on error it is removed."""
    root = Path(root)
    if flat:
        target, version = root, "v1"
        if target.exists() and any(target.iterdir()):
            raise PolicyError(f"{what} {target}: the folder exists and is not empty")
    else:
        existing = versions(root)
        version = f"v{int(_VERSION_DIR.match(existing[-1].name).group(1)) + 1}" if existing else "v1"
        target = root / version
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp, version, target
        if flat and target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _data_summary(data: RoutingData | None) -> dict[str, Any] | None:
    if data is None:
        return None
    tasks = sorted({t for t in data.task.tolist() if t})
    return {"name": data.name, "fingerprint": data.fingerprint(), "n_train": len(data), "models": list(data.models),
            "has_costs": data.has_costs, "n_tasks": len(tasks)}


def _software() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        from importlib.metadata import version

        out["expertmux"] = version("expertmux")
    except Exception:  # not installed as a distribution (running from a checkout)
        pass
    return out


# ---- loading -------------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The artifact folder and its parsed, format-checked manifest (hashes not yet checked)."""
    folder = resolve(path)
    where = f"policy artifact {folder}"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{where}: cannot read {MANIFEST}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{where}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PolicyError(f"{where}: not an expertmux policy artifact ({MANIFEST} has no format {FORMAT!r})")
    fv = manifest.get("format_version")
    if not isinstance(fv, int) or fv > FORMAT_VERSION or fv < 1:
        raise PolicyError(f"{where}: artifact format version {fv!r} is not supported (this build reads 1 to {FORMAT_VERSION})")
    for key in ("policy", "class", "version", "hyperparameters", "files", "state"):
        if key not in manifest:
            raise PolicyError(f"{where}: {MANIFEST} lacks {key!r}")
    return folder, manifest


def verify(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """Check the manifest and the sha256 of every weight file it lists."""
    folder, manifest = read_manifest(path)
    files = manifest["files"]
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise PolicyError(f"policy artifact {folder}: {MANIFEST} lists no {WEIGHTS}")
    for name, info in files.items():
        if Path(name).name != name:
            raise PolicyError(f"policy artifact {folder}: file name {name!r} in {MANIFEST} is not a plain file name")
        file = folder / name
        if not file.is_file():
            raise PolicyError(f"policy artifact {folder}: {name} is missing")
        digest = sha256_file(file)
        if digest != (info or {}).get("sha256"):
            raise PolicyError(f"policy artifact {folder}: {name} is corrupted or was changed "
                              f"(sha256 {digest[:12]}…, the manifest says {str((info or {}).get('sha256'))[:12]}…)")
    return folder, manifest


def load_artifact(path: str | Path, *, policy: str | None = None) -> Artifact:
    """Verify and load an artifact; ``policy`` (optional) is the policy name it must hold."""
    folder, manifest = verify(path)
    where = f"policy artifact {folder}"
    name = manifest["policy"]
    if policy is not None and name != policy:
        raise PolicyError(f"{where}: holds policy {name!r}, not {policy!r}")
    if name not in available_policies():
        raise PolicyError(f"{where}: policy {name!r} is unknown to this build; available: {', '.join(available_policies())}")
    cls = get_policy_class(name)
    if f"{cls.__module__}:{cls.__name__}" != manifest["class"]:
        raise PolicyError(f"{where}: written by {manifest['class']}, but policy {name!r} is now "
                          f"{cls.__module__}:{cls.__name__}; retrain it")
    try:
        with np.load(folder / WEIGHTS, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise PolicyError(f"{where}: cannot read {WEIGHTS}: {exc}") from None
    try:
        obj = cls.from_artifact_state(manifest["hyperparameters"], arrays, manifest["state"])
    except PolicyError as exc:
        raise PolicyError(f"{where}: {exc.message}") from None
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        raise PolicyError(f"{where}: does not fit policy {name!r} of this build ({type(exc).__name__}: {exc}); retrain it") from None
    # what decisions record: the artifact's version and the first hex digits of its weights' hash
    obj.version = f"{manifest['version']}-{manifest['files'][WEIGHTS]['sha256'][:8]}"
    return Artifact(path=folder, manifest=manifest, policy=obj)
