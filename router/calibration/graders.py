"""Graders: one contract, a small registry, machine-checkable answers only.

Contract: ``grade(answer, reference, **params) -> float`` in [0, 1], or raise ``GraderError`` with
the reason when the answer cannot be judged (a reference that is not a number, a pattern that does
not compile); the runner then records the cell as NaN with that reason, never as a silent 0. A
wrong answer, an empty one included, is a 0, not an error.

Each grader also validates a row's reference and parameters up front (``validate``), so a bad
row in a prompt file fails before any expert is paid to answer it.

Built in: ``numeric`` (with tolerance), ``multiple_choice`` (a letter), ``exact``, ``normalised``
(SQuAD-style normalised string), ``regex`` and ``contains`` (with ``forbid`` for "positive, not
negative" classifications). ``judge`` names the LLM judge (``router.calibration.judging``): it is
asynchronous and calls an expert, so the runner grades it itself; here it is only validated.

Code answers are left out on purpose: grading them means running untrusted model output, which
needs a sandbox this project does not ship. A user can still grade code with ``regex``/``contains``.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from router.calibration.errors import GraderError

JUDGE = "judge"  # graded by the configured judge expert (router.calibration.judging)

GradeFn = Callable[..., float]
ValidateFn = Callable[..., None]


@dataclass(frozen=True)
class Grader:
    name: str
    grade: GradeFn
    validate: ValidateFn
    params: tuple[str, ...]  # accepted parameter names
    doc: str


GRADERS: dict[str, Grader] = {}
ALIASES = {"normalized": "normalised", "mc": "multiple_choice", "choice": "multiple_choice", "number": "numeric"}


def register(name: str, *, params: tuple[str, ...] = (), validate: ValidateFn | None = None):
    """Add a grader under ``name`` (decorator over its grade function)."""

    def wrap(fn: GradeFn) -> GradeFn:
        GRADERS[name] = Grader(name, fn, validate or (lambda reference, **_: None), params,
                               (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return wrap


def known() -> list[str]:
    return sorted([*GRADERS, JUDGE])


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def validate(name: str, reference: Any, params: Mapping[str, Any] | None = None) -> str:
    """Check a row's grader, reference and parameters; returns the canonical grader name."""
    name = canonical(str(name))
    params = dict(params or {})
    if name == JUDGE:
        return name
    grader = GRADERS.get(name)
    if grader is None:
        raise GraderError(f"unknown grader {name!r}; known: {', '.join(known())}")
    extra = sorted(set(params) - set(grader.params))
    if extra:
        raise GraderError(f"grader {name!r} takes no parameter {', '.join(map(repr, extra))}; it takes {list(grader.params) or 'none'}")
    if reference is None and not (name == "regex" and "pattern" in params):
        raise GraderError(f"grader {name!r} needs a reference answer")
    grader.validate(reference, **params)
    return name


def grade(name: str, answer: str | None, reference: Any, params: Mapping[str, Any] | None = None) -> float:
    """Score ``answer`` against ``reference`` with grader ``name``: a float in [0, 1] or GraderError."""
    name = validate(name, reference, params)
    if name == JUDGE:
        raise GraderError("the judge grader calls an expert; the runner grades it (router.calibration.judging)")
    score = float(GRADERS[name].grade(answer or "", reference, **dict(params or {})))
    if not 0.0 <= score <= 1.0 or math.isnan(score):
        raise GraderError(f"grader {name!r} returned {score!r}, not a score in [0, 1]")
    return score


# ---- text helpers ----------------------------------------------------------------------------
_NUMBER = re.compile(r"[-−]?\d[\d,]*(?:\.\d+)?|[-−]?\.\d+")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation + "“”‘’«»…")


def _to_float(text: str) -> float | None:
    try:
        return float(text.replace(",", "").replace("−", "-"))
    except ValueError:
        return None


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (as SQuAD's answer normalisation)."""
    text = _ARTICLES.sub(" ", str(text).lower().translate(_PUNCT))
    return " ".join(text.split())


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def strip_echo(answer: str, prompt: str) -> str:
    """The answer without a verbatim echo of the prompt at its start.

    Base models often repeat the prompt before (or instead of) answering; graded as it is, the echo
    of a question that contains its own answer (an extraction, the options of a multiple choice)
    would score. The echo is cut when it covers half the prompt, or when the answer is nothing
    but the beginning of the prompt (an echo cut short by max_tokens)."""
    text = answer.lstrip()
    n = 0
    for a, b in zip(text, prompt):
        if a != b:
            break
        n += 1
    if n and (n >= len(prompt) / 2 or (n == len(text) and n >= 10)):
        return text[n:]
    return answer


# ---- built-in graders -------------------------------------------------------------------------
def _validate_numeric(reference: Any, tolerance: float = 1e-6, rel_tolerance: float = 0.0, pick: str = "auto") -> None:
    if _to_float(str(reference)) is None:
        raise GraderError(f"numeric grader: reference {reference!r} is not a number")
    if pick not in ("auto", "first", "last"):
        raise GraderError(f"numeric grader: pick must be auto, first or last, not {pick!r}")
    if float(tolerance) < 0 or float(rel_tolerance) < 0:
        raise GraderError("numeric grader: tolerances must be ≥ 0")


@register("numeric", params=("tolerance", "rel_tolerance", "pick"), validate=_validate_numeric)
def numeric(answer: str, reference: Any, tolerance: float = 1e-6, rel_tolerance: float = 0.0, pick: str = "auto") -> float:
    """The answer's number equals the reference within max(tolerance, rel_tolerance·|reference|).

    Which number: ``auto`` (default) takes the whole answer if it is a number, else the last number
    of its first non-empty line (``7 + 5 = 12`` → 12; an afterthought on later lines is ignored);
    ``first`` / ``last``: the first / last number anywhere."""
    target = _to_float(str(reference))
    text = answer.strip()
    if pick == "auto":
        whole = _to_float(text.rstrip("."))
        found = [whole] if whole is not None else [_to_float(m) for m in _NUMBER.findall(_first_line(text))]
    else:
        found = [_to_float(m) for m in _NUMBER.findall(text)]
        found = found[:1] if pick == "first" else found[-1:]
    found = [f for f in found if f is not None]
    if not found:
        return 0.0
    value = found[-1]
    return float(abs(value - target) <= max(float(tolerance), float(rel_tolerance) * abs(target)))


_LETTER_PATTERNS = [  # not "any B) in the text": an answer that lists every option would pick the first
    re.compile(r"^\W*\(?([A-Za-z])\)?\W*$"),  # the whole answer is one letter: "b", "(B)."
    re.compile(r"^\W*\(?([A-Z])\)?(?:[.):\s]|$)"),  # "B) Paris", "B. Paris" (upper case: "a cat" is no choice)
    re.compile(r"\b(?i:answer|option|choice)\s*(?i:is|:)?\s*\(?([A-Z])\b\)?"),  # "The answer is B"
]


def _validate_mc(reference: Any, options: Mapping[str, str] | None = None) -> None:
    if not re.fullmatch(r"[A-Za-z]", str(reference).strip()):
        raise GraderError(f"multiple_choice grader: reference {reference!r} is not a single letter")
    if options is not None and (not isinstance(options, Mapping) or str(reference).strip().upper() not in {k.upper() for k in options}):
        raise GraderError(f"multiple_choice grader: options must map letters to texts and include the reference {reference!r}")


@register("multiple_choice", params=("options",), validate=_validate_mc)
def multiple_choice(answer: str, reference: Any, options: Mapping[str, str] | None = None) -> float:
    """The chosen letter equals the reference letter.

    The letter is read from a leading ``B`` / ``(B)`` / ``B)`` or an ``Answer: B``; without one,
    and given ``options``, an answer that names exactly one option's text picks that option."""
    ref = str(reference).strip().upper()
    text = answer.strip()
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(text)
        if m and (options is None or m.group(1).upper() in {k.upper() for k in options}):
            return float(m.group(1).upper() == ref)
    if options:
        low = normalise(text)
        named = [k for k, v in options.items() if re.search(rf"\b{re.escape(normalise(v))}\b", low)]
        if len(named) == 1:
            return float(named[0].upper() == ref)
    return 0.0


@register("exact", params=("case_sensitive",))
def exact(answer: str, reference: Any, case_sensitive: bool = True) -> float:
    """The answer, stripped of surrounding white space, equals the reference."""
    a, r = answer.strip(), str(reference).strip()
    return float(a == r if case_sensitive else a.lower() == r.lower())


def _validate_normalised(reference: Any, match: str = "full") -> None:
    if match not in ("full", "start", "first_line"):
        raise GraderError(f"normalised grader: match must be full, start or first_line, not {match!r}")


@register("normalised", params=("match",), validate=_validate_normalised)
def normalised(answer: str, reference: Any, match: str = "full") -> float:
    """Normalised answer (lower case, no punctuation or articles) equals the normalised reference.

    ``match``: ``full`` (the whole answer), ``first_line`` (its first non-empty line) or ``start``
    (the answer begins with the reference as whole words)."""
    ref = normalise(str(reference))
    if match == "first_line":
        return float(normalise(_first_line(answer)) == ref)
    got = normalise(answer)
    if match == "start":
        return float(got == ref or got.startswith(ref + " "))
    return float(got == ref)


def _validate_regex(reference: Any, pattern: str | None = None, ignorecase: bool = False, mode: str = "fullmatch") -> None:
    source = pattern if pattern is not None else reference
    try:
        re.compile(str(source))
    except re.error as exc:
        raise GraderError(f"regex grader: pattern {source!r} does not compile: {exc}") from None
    if mode not in ("fullmatch", "search"):
        raise GraderError(f"regex grader: mode must be fullmatch or search, not {mode!r}")


@register("regex", params=("pattern", "ignorecase", "mode"), validate=_validate_regex)
def regex(answer: str, reference: Any, pattern: str | None = None, ignorecase: bool = False, mode: str = "fullmatch") -> float:
    """The answer (stripped) matches the pattern (``pattern``, else the reference): whole answer
    (``fullmatch``, default: format instructions) or anywhere (``search``)."""
    compiled = re.compile(str(pattern if pattern is not None else reference), re.IGNORECASE if ignorecase else 0)
    text = answer.strip()
    return float(bool(compiled.fullmatch(text) if mode == "fullmatch" else compiled.search(text)))


def _validate_contains(reference: Any, case_sensitive: bool = False, word: bool = True, forbid: Any = ()) -> None:
    if not str(reference).strip():
        raise GraderError("contains grader: the reference is empty")
    if isinstance(forbid, str) or not all(isinstance(f, str) for f in forbid or ()):
        raise GraderError("contains grader: forbid must be a list of strings")


def _has(text: str, needle: str, case_sensitive: bool, word: bool) -> bool:
    flags = 0 if case_sensitive else re.IGNORECASE
    body = re.escape(needle.strip())
    pattern = rf"(?<!\w){body}(?!\w)" if word else body
    return re.search(pattern, text, flags) is not None


@register("contains", params=("case_sensitive", "word", "forbid"), validate=_validate_contains)
def contains(answer: str, reference: Any, case_sensitive: bool = False, word: bool = True, forbid: Any = ()) -> float:
    """The answer contains the reference (as a whole word by default, any case by default) and none
    of ``forbid`` (e.g. reference ``positive``, forbid ``[negative]``: a hedge is wrong)."""
    if not _has(answer, str(reference), case_sensitive, word):
        return 0.0
    return float(not any(_has(answer, f, case_sensitive, word) for f in forbid or ()))
