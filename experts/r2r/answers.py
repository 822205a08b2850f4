"""Final answers and text comparisons: what "the same answer" means for labels and benchmarks.

``final_answer`` reads, in order of how decisive it is: an explicit choice letter ("Answer: B",
"(C)", "B." at the start of a line), else the last number, else the first sentence reduced to
its first words. The same extractor labels the training data (a token is divergent when it
changes the answer) and scores the benchmark (same final answer as the LLM alone), so the
router is trained for the criterion it is judged by.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

_CHOICE = [
    re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*[:\-]?\s*\(?\*{0,2}([A-E])(?=$|[\s).:,*])"),
    re.compile(r"(?m)^\s*\(?\*{0,2}([A-E])[\).:](?:\s|$)"),
    re.compile(r"\(([A-E])\)"),
]
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_WORD = re.compile(r"[a-z0-9]+")
FIRST_WORDS = 8


@dataclass(frozen=True, slots=True)
class Answer:
    kind: str  # "choice" | "number" | "text" | "empty"
    value: str

    @property
    def explicit(self) -> bool:
        return self.kind in ("choice", "number")


def _number(raw: str) -> str:
    raw = raw.replace(",", "").rstrip(".")
    try:
        value = float(raw)
    except ValueError:
        return raw
    return str(int(value)) if value.is_integer() else repr(value)


def final_answer(text: str) -> Answer:
    for pattern in _CHOICE:
        m = pattern.search(text)
        if m:
            return Answer("choice", m.group(1).upper())
    numbers = _NUMBER.findall(text)
    if numbers:
        return Answer("number", _number(numbers[-1]))
    first = re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0] if text.strip() else ""
    words = _WORD.findall(first.lower())[:FIRST_WORDS]
    return Answer("text", " ".join(words)) if words else Answer("empty", "")


def same_answer(a: str, b: str) -> bool:
    return final_answer(a) == final_answer(b)


def match_rate(reference: list[int], candidate: list[int]) -> float:
    """Share of the reference's tokens the candidate reproduces in order (longest matching blocks)."""
    if not reference:
        return 1.0 if not candidate else 0.0
    sm = difflib.SequenceMatcher(a=reference, b=candidate, autojunk=False)
    return sum(block.size for block in sm.get_matching_blocks()) / max(len(reference), len(candidate))


def prefix_match(reference: list[int], candidate: list[int]) -> float:
    """Share of the reference the candidate reproduces before its first difference."""
    n = 0
    for a, b in zip(reference, candidate):
        if a != b:
            break
        n += 1
    return n / len(reference) if reference else 1.0


def lexical_similarity(a: str, b: str) -> float:
    """Word-level similarity in [0, 1] (difflib ratio over lower-cased words)."""
    wa, wb = _WORD.findall(a.lower()), _WORD.findall(b.lower())
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).ratio()
