"""Calibration of the real local llama.cpp experts (the embedded default config) on a slice of the
default set: one prompt per skill, each expert started by the run and stopped after it."""

from __future__ import annotations

import asyncio
import json

import pytest

from core.settings import PROJECT_ROOT, Settings

pytestmark = pytest.mark.slow

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install builds it)")
pytest.importorskip("pyarrow", reason="the ml extra is not installed")


def test_local_experts_calibrate_on_a_slice_of_the_default_set(tmp_path):
    import yaml

    from policies.data import RoutingData
    from router.calibration.runner import calibrate
    from router.calibration.sources import DefaultSource

    config = yaml.safe_load((PROJECT_ROOT / "config" / "expertmux.yaml").read_text())
    for expert in config["experts"]:  # a busy shared machine can take minutes per answer: no timeouts here
        expert["timeout_s"] = 900
    (tmp_path / "expertmux.yaml").write_text(yaml.safe_dump(config))
    settings = Settings(config=tmp_path / "expertmux.yaml", data_dir=tmp_path / "var")
    names = [e.name for e in settings.app_config.experts]
    skills = {i.skill for i in DefaultSource().load()}
    snaps = []
    result = asyncio.run(calibrate(settings, source=DefaultSource(), out_dir=tmp_path / "out", limit=len(skills),
                                   progress=snaps.append))
    assert result.state == "done" and result.ok
    for name in names:  # every cell answered: graded, or NaN only because a grader could not judge
        counts = result.status.experts[name]
        assert counts["call_errors"] == 0 and counts["pending"] == 0, (name, counts)
        assert counts["graded"] + counts["grade_errors"] == len(skills)
    assert snaps[-1].done == len(names) * len(skills)
    # the servers this run started are stopped again
    state = json.loads((tmp_path / "var" / "experts-state.json").read_text())
    assert not any(state.get(n, {}).get("api_base") for n in names)

    frame = __import__("pandas").read_parquet(result.matrix_path)
    assert set(frame["task"]) == skills and set(frame["split"]) <= {"train", "test"}
    prices = {e.name: (e.input_usd_per_mtok, e.output_usd_per_mtok) for e in settings.app_config.experts}
    cells = [json.loads(line) for line in (tmp_path / "out" / "cells.jsonl").read_text().splitlines()]
    for cell in cells:
        pin, pout = prices[cell["expert"]]
        assert cell["prompt_tokens"] > 0 and cell["latency_s"] > 0
        assert cell["cost_usd"] == pytest.approx((cell["prompt_tokens"] * pin + cell["output_tokens"] * pout) / 1e6)
        if cell.get("output_tokens"):  # llama.cpp returns the answer's token logprobs
            assert len(cell["logprobs"]) == cell["output_tokens"] and all(lp <= 0 for _, lp in cell["logprobs"])
    data = RoutingData.load(tmp_path / "out")
    assert data.models == names and len(data) >= 1
