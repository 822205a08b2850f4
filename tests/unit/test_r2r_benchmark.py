"""The R2R benchmark's summaries from stored per-prompt records (what the README tables come from)."""

from __future__ import annotations

import json

import pytest

from benchmarks.r2r import configs_of, main, summarise_stored
from benchmarks.r2r_report import paired_bootstrap, speed_bound, summarise


def _record(prompt: int, config: str, *, tokens=10, llm_tokens=0, seconds=1.0, slm_s=0.0, llm_s=0.0, same=True, **extra):
    return {"prompt": prompt, "qid": f"q{prompt}", "config": config, "tokens": tokens, "llm_tokens": llm_tokens,
            "seconds": seconds, "slm_eval_s": slm_s, "llm_eval_s": llm_s, "retokenized": 0, "prefill_used": 0.5,
            "same_answer": same, "token_match": 1.0 if same else 0.5, "prefix_match": 1.0, **extra}


CONFIGS = {"llm-only": ("llm-only", None, None), "slm-only": ("slm-only", None, None),
           "learned@0.3": ("learned", 0.8, 0.3), "confidence@0.3": ("confidence", 0.4, 0.3), "random@0.3": ("random", 0.3, 0.3)}


def _run(n=20, **per_config) -> dict:
    records = []
    for i in range(n):
        records.append(_record(i, "llm-only", llm_tokens=10, seconds=0.2, llm_s=0.2))
        records.append(_record(i, "slm-only", seconds=0.1, slm_s=0.1, same=i % 5 == 0))
        for key in ("learned@0.3", "confidence@0.3", "random@0.3"):
            same = {"learned@0.3": i % 5 != 4, "confidence@0.3": i % 2 == 0, "random@0.3": i % 4 == 0}[key]
            records.append(_record(i, key, llm_tokens=3, seconds=0.19, slm_s=0.11, llm_s=0.07, same=same,
                                   **per_config.get(key, {})))
    configs = {k: {"method": m, "knob": kn, "target_share": t} for k, (m, kn, t) in CONFIGS.items()}
    return {"meta": {"prompts": n, "max_tokens": 10, "machine": "test", "router_version": "v1"}, "configs": configs,
            "records": records}


def test_summary_pairs_speed_per_prompt_and_marks_missing_turn_counts():
    run = _run()
    summary = summarise(run["records"], configs_of(run))
    assert summary["slm-only"]["decode_speedup_vs_llm"] == pytest.approx(2.0)
    assert summary["learned@0.3"]["llm_share"] == pytest.approx(0.3) and summary["learned@0.3"]["same_answer"] == 0.8
    assert summary["learned@0.3"]["llm_calls_per_token"] is None  # records made before turns were counted
    with_calls = _run(**{k: {"llm_calls": 2} for k in ("learned@0.3", "confidence@0.3", "random@0.3")})
    with_calls["records"] = [r if r["config"] not in ("llm-only", "slm-only") else {**r, "llm_calls": 0}
                             for r in with_calls["records"]]
    assert summarise(with_calls["records"], configs_of(with_calls))["learned@0.3"]["llm_calls_per_token"] == 0.2


def test_speed_bound_from_per_token_costs():
    run = _run()
    summary = summarise(run["records"], configs_of(run))
    b = speed_bound(run["records"], summary)
    assert b["slm_ms_per_token"] == pytest.approx(10) and b["llm_ms_per_token"] == pytest.approx(20)
    # learned: 20 % same answer alone (share 0), 80 % at share 0.3 → 80 % reached at 0.3
    assert b["share_for_faithful"] == pytest.approx(0.3, abs=1e-3)
    assert b["bound_free_at_share"] == pytest.approx(20 / (10 + 0.3 * 20))
    assert b["max_share_for_target_free"] == pytest.approx((20 / 1.2 - 10) / 20)
    assert b["router_overhead_ms_per_token"] == pytest.approx(1.0)  # 19 ms total − 11 − 7


def test_bootstrap_sees_a_clear_lead():
    run = _run(n=60)
    summary = summarise(run["records"], configs_of(run))
    by_config = {k: [r for r in run["records"] if r["config"] == k] for k in CONFIGS}
    boot = paired_bootstrap(by_config, summary, n=200)
    lead = boot["random"]["0.3"]
    assert lead["p_ahead"] == 1.0 and lead["lead"][0] > 0  # 80 % vs 25 %
    assert boot["confidence"]["0.5"] is None  # nothing measured near 50 %


def test_from_json_merges_an_extension_and_refuses_other_prompts(tmp_path, capsys):
    main_run, ext = _run(), _run()
    ext["configs"] = {k: v for k, v in ext["configs"].items() if k in ("llm-only", "slm-only")}
    ext["configs"]["learned@0.6"] = {"method": "learned", "knob": 0.5, "target_share": 0.6}
    ext["records"] = [r for r in ext["records"] if r["config"] in ("llm-only", "slm-only")]
    ext["records"] += [_record(i, "learned@0.6", llm_tokens=6, seconds=0.25, same=True) for i in range(20)]
    (tmp_path / "a.json").write_text(json.dumps(main_run))
    (tmp_path / "b.json").write_text(json.dumps(ext))
    summary, equal, verdict, meta = summarise_stored([tmp_path / "a.json", tmp_path / "b.json"])
    assert summary["learned@0.6"]["run"] == "b.json" and summary["learned@0.3"]["run"] == "a.json"
    assert summary["learned@0.6"]["llm_share"] == pytest.approx(0.6) and equal["same_answer"]["learned"]["0.5"] is not None
    assert meta["runs"] == ["a.json", "b.json"]
    out = tmp_path / "r2r.md"
    assert main(["--from-json", str(tmp_path / "a.json"), "--from-json", str(tmp_path / "b.json"),
                 "--markdown", str(out)]) == 0
    assert "learned@0.6" in out.read_text() and "Runs merged" in out.read_text()
    for r in ext["records"]:
        r["qid"] = "other-" + r["qid"]
    (tmp_path / "c.json").write_text(json.dumps(ext))
    with pytest.raises(ValueError, match="held-out prompts of .* differ"):
        summarise_stored([tmp_path / "a.json", tmp_path / "c.json"])
    assert main(["--from-json", str(tmp_path / "a.json"), "--from-json", str(tmp_path / "c.json")]) == 2


def test_a_partial_extension_is_compared_on_the_prompts_it_covers(tmp_path):
    main_run, ext = _run(), _run()
    ext["records"] = [r for r in ext["records"] if r["prompt"] < 10 and r["config"] in ("llm-only", "slm-only")]
    ext["records"] += [_record(i, "learned@0.6", llm_tokens=6, same=i % 2 == 0) for i in range(10)]
    ext["configs"] = {k: v for k, v in ext["configs"].items() if k in ("llm-only", "slm-only")}
    ext["configs"]["learned@0.6"] = {"method": "learned", "knob": 0.5, "target_share": 0.6}
    (tmp_path / "a.json").write_text(json.dumps(main_run))
    (tmp_path / "b.json").write_text(json.dumps(ext))
    with pytest.raises(ValueError, match="common-prompts"):
        summarise_stored([tmp_path / "a.json", tmp_path / "b.json"])
    summary, _, _, meta = summarise_stored([tmp_path / "a.json", tmp_path / "b.json"], common=True)
    assert meta["prompts"] == 10 and summary["learned@0.3"]["prompts"] == 10  # the main run cut to the same prompts
    assert summary["learned@0.6"]["same_answer"] == 0.5
