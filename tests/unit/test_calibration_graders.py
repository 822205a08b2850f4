"""Graders: one contract (a score in [0, 1] or GraderError with the reason), checked per grader."""

from __future__ import annotations

import pytest

from router.calibration import graders
from router.calibration.errors import GraderError
from router.calibration.graders import grade, strip_echo, validate


@pytest.mark.parametrize("answer, reference, params, score", [
    ("12", "12", {}, 1.0),
    ("7 + 5 = 12\nThe answer is \"3\"", "12", {}, 1.0),  # last number of the first line
    ("The answer is 1,200.", "1200", {}, 1.0),
    ("−4", "-4", {}, 1.0),
    ("3.1416", "3.14159", {"tolerance": 0.001}, 1.0),
    ("3.2", "3.14159", {"tolerance": 0.001}, 0.0),
    ("105", "100", {"rel_tolerance": 0.05}, 1.0),
    ("no idea", "12", {}, 0.0),
    ("", "12", {}, 0.0),
    ("12 apples, no wait, 13", "13", {"pick": "last"}, 1.0),
    ("12 apples, no wait, 13", "13", {"pick": "first"}, 0.0),
])
def test_numeric(answer, reference, params, score):
    assert grade("numeric", answer, reference, params) == score


@pytest.mark.parametrize("answer, score", [
    ("B", 1.0), ("(B)", 1.0), ("B) Paris", 1.0), ("b.", 1.0), ("The answer is B", 1.0), ("Answer: (B)", 1.0),
    ("A) Berlin", 0.0), ("Paris", 1.0), ("Berlin", 0.0), ("A) Berlin\nB) Paris\nC) Rome", 0.0),  # a list picks its first
    ("Paris or Rome", 0.0), ("", 0.0),
])
def test_multiple_choice(answer, score):
    options = {"A": "Berlin", "B": "Paris", "C": "Rome", "D": "Madrid"}
    assert grade("multiple_choice", answer, "B", {"options": options}) == score


def test_string_graders():
    assert grade("exact", "  Paris \n", "Paris") == 1.0 and grade("exact", "paris", "Paris") == 0.0
    assert grade("exact", "paris", "Paris", {"case_sensitive": False}) == 1.0
    assert grade("normalised", "The Paris!", "paris") == 1.0 and grade("normalized", "Paris, France", "paris") == 0.0
    assert grade("normalised", "Paris, France", "paris", {"match": "start"}) == 1.0
    assert grade("normalised", "Paris.\nIt is big.", "paris", {"match": "first_line"}) == 1.0
    assert grade("contains", 'The answer is "even."', "even", {"forbid": ["odd"]}) == 1.0
    assert grade("contains", "even, not odd", "even", {"forbid": ["odd"]}) == 0.0  # a hedge is wrong
    assert grade("contains", "uneven", "even") == 0.0 and grade("contains", "uneven", "even", {"word": False}) == 1.0
    assert grade("contains", "TIGER", "TIGER", {"case_sensitive": True}) == 1.0
    assert grade("contains", "tiger", "TIGER", {"case_sensitive": True}) == 0.0
    assert grade("contains", "write to ana.kim@example.org.", "ana.kim@example.org") == 1.0
    assert grade("regex", "Answer: cold", r"Answer:\s*cold", {"ignorecase": True}) == 1.0
    assert grade("regex", "Sure! Answer: cold", r"Answer:\s*cold") == 0.0  # fullmatch by default
    assert grade("regex", "Sure! Answer: cold", r"Answer:\s*cold", {"mode": "search"}) == 1.0
    assert grade("regex", "anything", None, {"pattern": "any.*"}) == 1.0


@pytest.mark.parametrize("name, reference, params, message", [
    ("telepathy", "x", {}, "unknown grader 'telepathy'; known: contains, exact, judge"),
    ("numeric", "twelve", {}, "reference 'twelve' is not a number"),
    ("numeric", "12", {"pick": "middle"}, "pick must be auto, first or last"),
    ("numeric", "12", {"tolerence": 1}, "takes no parameter 'tolerence'"),
    ("numeric", None, {}, "needs a reference answer"),
    ("multiple_choice", "AB", {}, "is not a single letter"),
    ("multiple_choice", "E", {"options": {"A": "x", "B": "y"}}, "include the reference"),
    ("regex", "([a-z", {}, "does not compile"),
    ("regex", "x", {"mode": "partial"}, "mode must be fullmatch or search"),
    ("normalised", "x", {"match": "fuzzy"}, "match must be full, start or first_line"),
    ("contains", "  ", {}, "the reference is empty"),
    ("contains", "x", {"forbid": "odd"}, "forbid must be a list of strings"),
])
def test_bad_rows_raise_grader_error_with_the_reason(name, reference, params, message):
    with pytest.raises(GraderError) as err:
        validate(name, reference, params)
    assert message in err.value.message
    with pytest.raises(GraderError):  # grade validates too: never a silent 0
        grade(name, "12", reference, params)


def test_judge_is_known_but_graded_by_the_runner():
    assert validate("judge", None) == "judge" and "judge" in graders.known()
    with pytest.raises(GraderError, match="the runner grades it"):
        grade("judge", "an answer", None)


def test_a_registered_grader_follows_the_contract():
    @graders.register("test_half", params=())
    def half(answer, reference):
        return 0.5 if answer else 2.0

    try:
        assert grade("test_half", "x", "ref") == 0.5
        with pytest.raises(GraderError, match="not a score in"):
            grade("test_half", "", "ref")
    finally:
        graders.GRADERS.pop("test_half")


def test_an_echo_of_the_prompt_is_not_an_answer():
    prompt = "Yesterday Nora met the teacher at the bakery. Who met the teacher? Reply with the name only."
    echoed = prompt + " mendatang\nThe teacher"
    assert grade("contains", echoed, "Nora") == 1.0  # what the echo alone would score
    assert grade("contains", strip_echo(echoed, prompt), "Nora") == 0.0
    assert strip_echo(prompt[:30], prompt) == ""  # an echo cut short by max_tokens
    assert strip_echo("Nora", prompt) == "Nora" and strip_echo("Yesterday it was Nora", prompt) == "Yesterday it was Nora"
