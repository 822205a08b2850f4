"""Calibration data: prompt files and their errors, the stratified limit, the shipped default set,
the cell log (torn lines, latest wins, prompts only grow) and the matrix it becomes."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from core.types import ExpertInfo
from router.calibration import defaultset, graders
from router.calibration.errors import CalibrationError
from router.calibration.items import PromptItem
from router.calibration.ledger_prompts import split_messages
from router.calibration.matrix import assign_splits, load_status, write_matrix
from router.calibration.sources import DefaultSource, JsonlSource, parse_source, read_jsonl, select
from router.calibration.store import CALL_ERROR, GRADE_ERROR, OK, Cell, CellStore


def _write(tmp_path, text):
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    return path


def test_jsonl_rows_and_their_defaults(tmp_path):
    path = _write(tmp_path, '{"prompt": "2+2?", "reference": 4, "grader": "numeric"}\n\n'
                            '{"qid": "q7", "skill": "rating", "prompt": "Rate it", "grader": "judge", "max_tokens": 8}\n'
                            '{"prompt": "Name one", "reference": "B", "grader": "mc", "params": {"options": {"A": "x", "B": "y"}}}\n')
    items = JsonlSource(path).load()
    assert [i.grader for i in items] == ["numeric", "judge", "multiple_choice"]  # aliases resolved
    assert items[0].reference == "4" and items[0].skill == "default" and items[0].qid.startswith("prompts-")
    assert items[1].qid == "q7" and items[1].reference is None and items[1].max_tokens == 8
    assert items[0].qid == JsonlSource(path).load()[0].qid  # a hash of the prompt: stable across reruns
    assert items[0].routing_text() == "2+2?" and items[0].transcript() == "user: 2+2?"
    assert items[0].chat_messages() == [{"role": "user", "content": "2+2?"}]


@pytest.mark.parametrize("text, message", [
    ('{"prompt": "a", "grader": "exact", "reference": "a"}\n{"prompt": "b", \n', "line 2: not valid JSON"),
    ('["prompt"]\n', "line 1: expected a JSON object"),
    ('{"prompt": "a", "grader": "fuzzy", "reference": "a"}\n', "line 1: unknown grader 'fuzzy'"),
    ('{"prompt": "a", "reference": "a"}\n', "line 1: 'grader' is missing"),
    ('{"prompt": "", "grader": "exact", "reference": "a"}\n', "line 1: 'prompt' must be a non-empty string"),
    ('{"prompt": "a", "grader": "exact"}\n', "line 1: grader 'exact' needs a reference answer"),
    ('{"prompt": "a", "grader": "exact", "reference": "a", "answer": "a"}\n', "line 1: unknown field(s) ['answer']"),
    ('{"prompt": "a", "grader": "exact", "reference": "a", "params": [1]}\n', "line 1: 'params' must be an object"),
    ('{"prompt": "a", "grader": "exact", "reference": "a", "max_tokens": 0}\n', "'max_tokens' must be a positive integer"),
    ('{"qid": "x", "prompt": "a", "grader": "exact", "reference": "a"}\n{"qid": "x", "prompt": "b", "grader": "exact", '
     '"reference": "b"}\n', "line 2: qid 'x' repeats line 1"),
    ("\n\n", "has no rows"),
])
def test_malformed_rows_name_the_line(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(CalibrationError) as err:
        read_jsonl(path, dataset="mine")
    assert message in err.value.message and (str(path) in err.value.message)


def test_sources_by_name(tmp_path):
    assert isinstance(parse_source("default"), DefaultSource)
    assert parse_source("jsonl:/x/mine.jsonl").name == "mine" and parse_source("other.jsonl").name == "other"
    assert parse_source("ledger").name == "ledger"
    with pytest.raises(CalibrationError, match="unknown prompt source"):
        parse_source("s3://bucket")
    with pytest.raises(CalibrationError, match="cannot read prompt file"):
        JsonlSource(tmp_path / "missing.jsonl").load()


def _items(sizes: dict[str, int]) -> list[PromptItem]:
    return [PromptItem(qid=f"{s}-{i}", skill=s, prompt=f"{s} {i}", grader="exact", reference="x")
            for s, n in sizes.items() for i in range(n)]


def test_limit_is_stratified_and_nested():
    items = _items({"a": 50, "b": 30, "c": 20, "tiny": 1})
    picked = select(items, 20, seed=3)
    counts = Counter(i.skill for i in picked)
    assert len(picked) == 20 and counts["tiny"] == 1 and abs(counts["a"] - 10) <= 1 and abs(counts["c"] - 4) <= 1
    assert [i.qid for i in picked] == sorted((i.qid for i in picked), key=[x.qid for x in items].index)  # input order
    for small, large in [(5, 20), (20, 60), (1, 2)]:
        assert {i.qid for i in select(items, small, seed=3)} <= {i.qid for i in select(items, large, seed=3)}
    assert select(items, None) == items and select(items, 500) == items
    assert {i.qid for i in select(items, 20, seed=4)} != {i.qid for i in picked}
    with pytest.raises(CalibrationError):
        select(items, 0)


def test_the_shipped_default_set_is_generated_and_gradable():
    assert DefaultSource().path.read_text(encoding="utf-8") == defaultset.render(defaultset.generate()), \
        "router/calibration/data/default.jsonl is stale: run `python -m router.calibration.defaultset`"
    items = DefaultSource().load()  # every row validates
    skills = Counter(i.skill for i in items)
    assert len(items) >= 400 and len(skills) >= 10 and min(skills.values()) >= 30
    assert len({i.prompt for i in items}) == len(items)  # no prompt twice (it would sit in train and test)
    assert {i.grader for i in items} >= {"numeric", "multiple_choice", "contains", "regex"}
    for item in items:  # the reference itself is a right answer, and a wrong one is not
        if item.grader != "regex":
            assert graders.grade(item.grader, item.reference, item.reference, item.params) == 1.0, item
        assert graders.grade(item.grader, "zzz zzz", item.reference, item.params) == 0.0, item
    right = {"What is the first letter of the word \"green\"": "G", "opposite of 'hot'": "Answer: cold",
             "Answer with exactly one word": "Green.", "three times": "beach, beach, beach"}
    for needle, answer in right.items():
        item = next(i for i in items if needle in i.prompt)
        assert graders.grade(item.grader, answer, item.reference, item.params) == 1.0, item


def test_cell_log_survives_a_torn_line_and_keeps_the_latest(tmp_path):
    store = CellStore(tmp_path)
    store.append(Cell(qid="q1", expert="a", status=CALL_ERROR, error="down"))
    store.append(Cell(qid="q1", expert="a", status=OK, score=1.0, answer="4", logprobs=[["4", -0.1]]))
    store.append(Cell(qid="q2", expert="a", status=GRADE_ERROR, score=math.nan, answer="?", error="judge: no score"))
    with store.cells_path.open("a") as fh:
        fh.write('{"qid": "q3", "expert": "a", "sta')  # the process died mid-write
    cells = store.cells()
    assert set(cells) == {("q1", "a"), ("q2", "a")} and cells[("q1", "a")].status == OK
    assert cells[("q2", "a")].score is None and not cells[("q1", "a")].error
    store.open_for_append()
    store.append(Cell(qid="q3", expert="a", status=OK, score=0.0, answer=""))
    assert store.cells()[("q3", "a")].score == 0.0 and len(store.cells()) == 3


def test_prompt_set_only_grows(tmp_path):
    store = CellStore(tmp_path)
    first = _items({"a": 3})
    assert len(store.add_prompts(first)) == 3
    changed = [PromptItem(qid="a-0", skill="a", prompt="edited", grader="exact", reference="y"), *_items({"b": 2})]
    after = store.add_prompts(changed)
    assert [i.qid for i in after] == ["a-0", "a-1", "a-2", "b-0", "b-1"] and after[0].prompt == "a 0"


def test_splits_are_stratified_seeded_and_stable():
    items = _items({"a": 40, "b": 20, "c": 1})
    splits = assign_splits(items, test_share=0.3, seed=0)
    tests = Counter(i.skill for i in items if splits[i.qid] == "test")
    assert tests == {"a": 12, "b": 6} and splits["c-0"] == "train"
    assert splits == assign_splits(list(reversed(items)), test_share=0.3, seed=0)
    grown = assign_splits(items + _items({"a": 41})[40:], test_share=0.3, seed=0)
    assert sum(grown[q] != s for q, s in splits.items()) <= 1


def test_matrix_and_status(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    from policies.data import RoutingData

    store = CellStore(tmp_path)
    store.add_prompts(_items({"a": 4, "b": 2}))
    for i in range(4):
        store.append(Cell(qid=f"a-{i}", expert="x", status=OK, score=float(i % 2), answer="x", cost_usd=1e-6, latency_s=0.5,
                          output_tokens=3, logprobs=[["x", -0.5]]))
    store.append(Cell(qid="b-0", expert="x", status=GRADE_ERROR, answer="?", error="judge gave no readable score"))
    store.append(Cell(qid="a-0", expert="y", status=CALL_ERROR, error="expert 'y' timed out"))
    infos = [ExpertInfo("x", 0.1, 0.2, params_b=1.0), ExpertInfo("y", 1.0, 2.0), ExpertInfo("never", 1.0, 1.0)]
    path = write_matrix(tmp_path, experts=infos)
    frame = pd.read_parquet(path)
    assert len(frame) == 4  # b-0 (NaN only) and b-1 (not run) are no rows: a row needs a candidate
    assert "score::never" not in frame.columns and frame["score::y"].isna().all()
    assert frame.loc[frame.qid == "a-0", "error::y"].item() == "expert 'y' timed out"
    assert json.loads(frame["logprobs::x"][0]) == [["x", -0.5]] and frame["latency_s::x"][0] == 0.5
    meta = json.loads((tmp_path / "models.json").read_text())
    assert meta["models"]["x"]["output_usd_per_mtok"] == 0.2 and set(meta["models"]) == {"x", "y"}
    data = RoutingData.load(tmp_path)
    assert data.models == ["x", "y"] and data.has_costs
    status = load_status(tmp_path)
    assert status.prompts == 6 and not status.complete
    assert status.experts["x"] == {"graded": 4, "grade_errors": 1, "call_errors": 0, "pending": 1}
    assert status.skills["a"]["x"].quality == 0.5 and status.overall["x"].n == 4 and "y" not in status.overall


def test_ledger_prompts_split_back_into_messages():
    assert split_messages("user: hi\nthere") == [{"role": "user", "content": "hi\nthere"}]
    assert split_messages("system: be brief\nuser: 2+2?\nassistant: 4\nuser: and 3+3?") == [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"}]
    assert split_messages("no role here") == [{"role": "user", "content": "no role here"}]
