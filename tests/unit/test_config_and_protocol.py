"""Config validation and request parsing give messages that name the problem."""

from __future__ import annotations

import pytest

from core.config import load_config
from core.errors import ConfigError, InvalidRequestError
from core.settings import PROJECT_ROOT, Settings
from core.types import routed_text, transcript, transcript_turns
from router.request.protocol import parse_chat_request


def test_shipped_configs_are_valid():
    cfg = load_config(PROJECT_ROOT / "config" / "expertmux.yaml")
    assert [e.name for e in cfg.experts] == ["smollm2-135m", "gemma3-270m"]
    assert cfg.policy.active == "prior" and cfg.policy.lambda_ == 1000
    for path in (PROJECT_ROOT / "config").glob("*.yaml"):
        load_config(path)


@pytest.mark.parametrize("text, words", [
    ("experts: []", ["at least one expert"]),
    ("experts:\n  - {name: a, backend: remote, model: m}\n  - {name: a, backend: remote, model: m}", ["unique", "a"]),
    ("experts:\n  - {name: a, backend: tpu, model: m}", ["experts.0.backend"]),
    ("experts:\n  - {name: a, backend: remote, model: m, pricee: 1}", ["experts.0.pricee"]),
    ("experts:\n  - {name: a, backend: remote, model: m, input_usd_per_mtok: -1}", ["input_usd_per_mtok"]),
    ("experts: [", ["not valid YAML"]),
])
def test_invalid_configs(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for word in words:
        assert word in info.value.message
    assert str(path) in info.value.message


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_settings_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EXPERTMUX_PORT", "9999")
    monkeypatch.setenv("EXPERTMUX_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EXPERTMUX_PROMPT_STORAGE", "hash")
    s = Settings()
    assert s.port == 9999 and s.prompt_storage == "hash"
    assert s.resolved_database_url == f"sqlite:///{tmp_path / 'expertmux.db'}"


def test_request_parsing_keeps_unknown_openai_fields_and_splits_routing_options():
    req = parse_chat_request(b'{"model": "expertmux/auto", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],'
                             b' "seed": 7, "max_tokens": 5, "expertmux": {"lambda": 2.5, "allowed_experts": ["a"]}}')
    payload = req.upstream_payload()
    assert payload["seed"] == 7 and payload["max_tokens"] == 5 and "expertmux" not in payload and "model" not in payload
    opts = req.expertmux.to_options()
    assert opts.lambda_ == 2.5 and opts.allowed_experts == ["a"]
    assert req.prompt_text() == "user: hi" and req.routed_text() == "hi"


def test_policies_read_the_last_user_question_and_the_ledger_form_reads_back():
    turns = [("system", "be brief"), ("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?\nquickly")]
    assert routed_text(turns) == "and 3+3?\nquickly"  # not the system prompt, nor the role tags
    assert transcript_turns(transcript(turns)) == turns  # the ledger's text reads back into the same turns
    assert routed_text([("system", "only a system prompt")]) == "system: only a system prompt"
    assert routed_text([("user", "  "), ("assistant", "x")]) == "user:   \nassistant: x"  # no user text: the transcript
    # the training side reads a stored prompt the way the proxy read the request
    assert routed_text(transcript_turns("system: be brief\nuser: Name a colour.")) == "Name a colour."
    assert routed_text(transcript_turns("a raw question: with a colon")) == "a raw question: with a colon"
    req = parse_chat_request(b'{"model": "expertmux/auto", "messages": [{"role": "system", "content": "You are helpful."},'
                             b' {"role": "user", "content": "Why is the sky blue?"}]}')
    assert req.routed_text() == "Why is the sky blue?" and req.prompt_text().startswith("system: You are helpful.")


@pytest.mark.parametrize("body, words", [
    (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', ["model"]),
    (b'{"model": "m", "messages": [{"content": "x"}]}', ["missing", "messages.0.role"]),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 0}', ["top_p"]),
])
def test_request_parsing_errors(body, words):
    with pytest.raises(InvalidRequestError) as info:
        parse_chat_request(body)
    for word in words:
        assert word in info.value.message
