"""A short real Router-R1 training run: GRPO (TRL) + LoRA on SmolLM2-135M, through the CLI.

Real model (the packaged SmolLM2 GGUF, converted to HF format once), real TRL trainer, the
synthetic routing matrix; asserts the loop runs, writes an artifact whose hashes verify, and
that a tampered adapter is refused.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cli import _register, app
from core.errors import PolicyError
from policies.router_r1.train import verify_router_artifact
from tests.support.routing_matrix import write_matrix

pytestmark = pytest.mark.slow


def test_train_router_r1_writes_a_verified_artifact(tmp_path):
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    _register()
    data = write_matrix(tmp_path / "matrix", n_per_task=10)
    out = tmp_path / "artifacts"
    result = CliRunner().invoke(app, [
        "train", "router-r1", "--data", str(data), "--steps", "2", "--prompts-per-step", "1", "--generations", "2",
        "--max-new-tokens", "12", "--think-budget", "6", "--max-rounds", "1", "--warmup-steps", "2", "--alpha", "0.3", "--lora-r", "4",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    path, manifest = verify_router_artifact(out)
    assert path.name == "v1" and manifest["policy"] == "router-r1"
    assert manifest["hyperparameters"]["alpha"] == 0.3 and manifest["hyperparameters"]["lora_r"] == 4
    assert manifest["data"]["env"] == "matrix" and manifest["data"]["fingerprint"]
    assert len(manifest["reward_curve"]) == 2
    assert all(-1.0 <= row["reward"] <= 1.0 for row in manifest["reward_curve"])
    for row in manifest["reward_curve"]:  # every episode adopted one expert, or none
        shares = {k: v for k, v in row.items() if k.startswith("share:")}
        assert shares and sum(shares.values()) == pytest.approx(1.0)
        assert set(shares) <= {f"share:{m}" for m in manifest["data"]["models"]} | {"share:(none)"}
    assert (out / "v1-reward.png").stat().st_size > 1000
    assert json.loads((path / "adapter_config.json").read_text())["r"] == 4

    # a changed adapter no longer matches its manifest
    weights = path / "adapter_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(PolicyError, match="sha256"):
        verify_router_artifact(path)


def test_warmup_only_run_is_the_rl_stage_start(tmp_path):
    """``--steps 0`` writes the format warm-up alone (the start GRPO is compared with), and
    ``--init-adapter`` continues from it with the RL stage alone."""
    pytest.importorskip("trl")
    pytest.importorskip("peft")
    _register()
    data = write_matrix(tmp_path / "matrix", n_per_task=10)
    out = tmp_path / "artifacts"
    args = ["train", "router-r1", "--data", str(data), "--max-rounds", "1", "--lora-r", "4", "--out", str(out)]
    refused = CliRunner().invoke(app, [*args, "--steps", "0", "--warmup-steps", "0"])
    assert refused.exit_code != 0 and "nothing to train" in refused.output
    result = CliRunner().invoke(app, [*args, "--steps", "0", "--warmup-steps", "2"])
    assert result.exit_code == 0, result.output
    _path, manifest = verify_router_artifact(out)
    assert manifest["hyperparameters"]["steps"] == 0 and manifest["reward_curve"] == []
    assert len(manifest["warmup_loss"]) == 2 and all(loss > 0 for loss in manifest["warmup_loss"])

    start = out / "v1"
    rl = CliRunner().invoke(app, [*args, "--steps", "1", "--warmup-steps", "0", "--prompts-per-step", "1", "--generations", "2",
                                  "--max-new-tokens", "12", "--think-budget", "6", "--init-adapter", str(start)])
    assert rl.exit_code == 0, rl.output
    path, manifest = verify_router_artifact(out)
    assert path.name == "v2" and manifest["hyperparameters"]["init_adapter"] == str(start)
    assert manifest["warmup_loss"] == [] and len(manifest["reward_curve"]) == 1
    # the RL stage started from the warm-up's weights, not a fresh LoRA (whose B matrices are 0):
    # one small step moves the warm-up's B matrices by far less than their size
    import numpy as np
    from safetensors.numpy import load_file

    before, after = load_file(start / "adapter_model.safetensors"), load_file(path / "adapter_model.safetensors")
    assert set(before) == set(after) and all(before[k].shape == after[k].shape for k in before)
    b = [k for k in before if "lora_B" in k]
    moved = np.sqrt(sum(float(np.sum((after[k] - before[k]) ** 2)) for k in b))
    size = np.sqrt(sum(float(np.sum(before[k] ** 2)) for k in b))
    assert size > 0 and moved < 0.5 * size
