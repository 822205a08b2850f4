"""Settings for session-aware routing tests: a cheap and a strong fake upstream expert."""

from __future__ import annotations

from pathlib import Path

import yaml

from core.settings import Settings
from tests.conftest import remote_expert


def session_settings(home: Path, upstreams, *, policy: dict, sessions: dict | None, **overrides) -> Settings:
    """A config file in ``home`` with the two experts, ``policy`` and (when given) ``sessions``."""
    experts = [remote_expert("cheap", upstreams["cheap"][1], prior_quality=0.3, params_b=1.0),
               remote_expert("strong", upstreams["strong"][1], prior_quality=0.8, params_b=70.0,
                             input_usd_per_mtok=10.0, output_usd_per_mtok=30.0)]
    cfg = {"experts": experts, "policy": policy}
    if sessions is not None:
        cfg["sessions"] = sessions
    home.mkdir(parents=True, exist_ok=True)
    path = home / "expertmux.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return Settings(config=path, data_dir=home / "var", autostart_experts=False, **overrides)
