"""A calibration killed mid-run (SIGKILL), then interrupted (Ctrl-C), resumes without computing a
cell twice or losing one.

``expertmux calibrate`` runs in a subprocess against simulated experts in this process. The experts
answer a fixed number of calls and then hold the next ones, so the moment of the kill is set by
call counts, not by timing: when the cell log holds exactly the answered cells, the process is
killed with the held calls in flight. Upstream calls are counted per prompt: a prompt recorded
before a kill is never asked again; only the calls in flight at a kill (at most the concurrency)
are asked twice, because their answers died with the process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

pytest.importorskip("pyarrow", reason="the ml extra is not installed")

from policies.data import RoutingData  # noqa: E402
from router.calibration.runner import calibrate  # noqa: E402
from router.calibration.sources import JsonlSource  # noqa: E402
from tests.functional.test_calibration import World  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N, CONCURRENCY = 40, 2


def _lines(path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def _start(settings, world, out, log):
    cmd = [sys.executable, "-m", "cli", "calibrate", "-c", str(settings.config), "-s", f"jsonl:{world.prompts}",
           "-o", str(out), "-n", str(N), "-k", str(CONCURRENCY)]
    env = {**os.environ, "EXPERTMUX_DATA_DIR": str(settings.data_dir), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    # Ctrl-C as in a terminal: a test run started in the background (`make test &`, nohup) hands its
    # children SIGINT ignored, and Python then never turns SIGINT into KeyboardInterrupt.
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc, cells, count, what):
    deadline = time.monotonic() + 300  # a guard against a hang, not a timing assertion
    while len(_lines(cells)) < count:
        assert proc.poll() is None, f"calibration exited early ({what})"
        assert time.monotonic() < deadline, f"no progress: {len(_lines(cells))} of {count} cells ({what})"
        time.sleep(0.02)


def _held(world, n):
    deadline = time.monotonic() + 300
    while any(s.total_calls < n for s in world.sims.values()):
        assert time.monotonic() < deadline, "the held calls never arrived"
        time.sleep(0.02)


def test_kill_then_interrupt_then_resume(tmp_path):
    first = 10  # calls each expert answers before holding the next ones
    with World(tmp_path, names=("math", "words"), math={"hold_after": first}, words={"hold_after": first}) as world:
        settings = world.settings()
        out, cells = tmp_path / "out", tmp_path / "out" / "cells.jsonl"
        with open(tmp_path / "run1.log", "wb") as log:
            proc = _start(settings, world, out, log)
            _wait_for(proc, cells, 2 * first, "before the kill")
            _held(world, first + CONCURRENCY)  # every worker is now waiting on a held call
            proc.send_signal(signal.SIGKILL)
            proc.wait(60)
        recorded = {(c["qid"], c["expert"]) for c in _lines(cells)}
        assert len(recorded) == 2 * first == len(_lines(cells))
        lost = {n: s.total_calls - first for n, s in world.sims.items()}
        assert lost == {"math": CONCURRENCY, "words": CONCURRENCY}  # in flight when killed

        # second run: Ctrl-C while calls are held again; finished cells are kept, a matrix is written
        for sim in world.sims.values():
            sim.hold_after = sim.total_calls + first
            sim.release.clear()
        with open(tmp_path / "run2.log", "wb") as log:
            proc = _start(settings, world, out, log)
            _wait_for(proc, cells, 4 * first, "before Ctrl-C")
            _held(world, 2 * first + 2 * CONCURRENCY)
            proc.send_signal(signal.SIGINT)
            for sim in world.sims.values():
                sim.release.set()  # let the held calls return so the interrupted process can close them
            assert proc.wait(120) == 130, (tmp_path / "run2.log").read_text()
        assert "interrupted" in (tmp_path / "run2.log").read_text()
        run = json.loads((out / "run.json").read_text())
        assert run["state"] == "interrupted" and (out / "matrix.parquet").exists()
        after_two = _lines(cells)
        assert len({(c["qid"], c["expert"]) for c in after_two}) == len(after_two) >= 4 * first

        # third run, in this process, to the end
        result = asyncio.run(calibrate(settings, source=JsonlSource(world.prompts), out_dir=out, limit=N, concurrency=CONCURRENCY))
        assert result.state == "done" and result.progress.already == len(after_two)
        assert [r["state"] for r in _lines(out / "runs.jsonl")] == ["interrupted", "done"]  # the SIGKILLed run left none
        final = _lines(cells)
        keys = Counter((c["qid"], c["expert"]) for c in final)
        assert len(keys) == 2 * N and set(keys.values()) == {1}  # every cell once: none twice, none lost
        data = RoutingData.load(out)
        assert len(data) == N and not (data.scores != data.scores).any()
        for name, sim in world.sims.items():
            assert len(sim.calls) == N
            recorded_first = {q for q, e in recorded if e == name}
            by_qid = {it.prompt: it.qid for it in world.items}
            twice = {by_qid[p] for p, n in sim.calls.items() if n > 1}
            assert not twice & recorded_first  # a cell recorded before the kill was never asked again
            assert max(sim.calls.values()) <= 3 and sum(n - 1 for n in sim.calls.values()) <= 2 * CONCURRENCY
