"""The documentation that is generated from the code matches it, and the front door stays short."""

from __future__ import annotations

import re
from pathlib import Path

from core.config_reference import render

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_generated_from_the_models():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert page == render(), "docs/configuration.md is stale: run `expertmux docs config > docs/configuration.md`"


def test_reference_lists_every_field_and_variable():
    from core.config import AppConfig, ExpertConfig, PolicyConfig
    from core.settings import Settings

    text = render()
    for model in (AppConfig, ExpertConfig, PolicyConfig):
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in text, name
    for name in Settings.model_fields:
        assert f"`EXPERTMUX_{name.upper()}`" in text
    # descriptions come from Field(description=...) and from the comment on the field's line
    assert "YAML file listing experts and the active policy" in text
    assert "per-policy hyperparameters" in text


def test_readme_is_a_front_door_whose_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    for target in re.findall(r"\]\(((?!https?:|#)[^)#\s]+)", readme):
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"
    assert "make run" in readme and "make test" in readme
