"""The Router-R1 text protocol: what the router LLM writes and how it is read.

A trajectory interleaves the router's own text with the service's ``<information>`` blocks::

    <think>the question needs arithmetic; ask the bigger model</think>
    <search>gemma3-270m: what is 17 * 23?</search>
    <information>391</information>            ← written by the service, never by the model
    <think>the expert answered</think>
    <answer>391</answer>

One *step* is what the model generates between two service turns: zero or more ``<think>``
blocks, then one action, ``<search>EXPERT: sub-question</search>`` or ``<answer>…</answer>``.
Generation stops at ``STOP_SEQUENCES``, so the service can run the search before the model goes on.

Reading is tolerant where nothing can be misread and strict where the protocol needs it:

- tag names are matched case-insensitively and may carry spaces inside the brackets
  (``< Search >``); block contents are stripped;
- a step is cut after its first action, as a stop sequence would have cut it, and an action left
  open at the end of a step is closed (servers drop the stop sequence from the text they return);
- text outside tags, nested or unbalanced tags, an ``<information>`` block written by the model,
  an empty answer and a search without ``EXPERT:`` are malformed.

``parse_step`` classifies one step (it never raises); ``check_format`` judges a whole trajectory
for the format reward.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

THINK, SEARCH, INFORMATION, ANSWER = "think", "search", "information", "answer"
TAGS = (THINK, SEARCH, INFORMATION, ANSWER)
ACTION_TAGS = (SEARCH, ANSWER)
STOP_SEQUENCES: tuple[str, ...] = ("</search>", "</answer>")

_TAG = re.compile(r"<\s*(/?)\s*(think|search|information|answer)\s*>", re.IGNORECASE)
# Expert names as the config allows them (core/config.py ExpertConfig.name): no whitespace.
_EXPERT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+\-]*")
_SNIPPET = 40


# -- actions ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Think:
    """A step with deliberation only and no action (the model stopped before acting)."""

    thoughts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Search:
    """Ask ``expert`` the sub-question ``query``."""

    expert: str
    query: str
    thoughts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Answer:
    """The final answer."""

    text: str
    thoughts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Malformed:
    """A step that breaks the protocol; ``reason`` is short enough to show the model."""

    reason: str


Action = Think | Search | Answer | Malformed


@dataclass(frozen=True, slots=True)
class FormatReport:
    """How a whole trajectory follows the protocol (input of the format reward)."""

    well_formed: bool
    reasons: tuple[str, ...]
    n_searches: int
    has_answer: bool
    answer: str | None = None
    searches: tuple[Search, ...] = field(default=())


# -- scanning ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Block:
    tag: str
    content: str
    closed: bool
    end: int  # offset just past the block (its closing tag, or the end of the text)


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


def _scan(text: str) -> Iterator[_Block | str]:
    """Blocks in order; a ``str`` is a problem found at that point (stray text, bad nesting)."""
    pos, n = 0, len(text)
    while pos < n:
        m = _TAG.search(text, pos)
        if m is None:
            if text[pos:].strip():
                yield f"text outside tags: {_snippet(text[pos:])!r}"
            return
        if text[pos:m.start()].strip():
            yield f"text outside tags: {_snippet(text[pos:m.start()])!r}"
        closing, tag = bool(m.group(1)), m.group(2).lower()
        if closing:
            yield f"</{tag}> without <{tag}>"
            pos = m.end()
            continue
        nxt = _TAG.search(text, m.end())
        if nxt is None:
            yield _Block(tag, text[m.end():].strip(), closed=False, end=n)
            return
        if nxt.group(1) and nxt.group(2).lower() == tag:
            yield _Block(tag, text[m.end():nxt.start()].strip(), closed=True, end=nxt.end())
            pos = nxt.end()
            continue
        yield f"<{tag}> not closed before <{'/' if nxt.group(1) else ''}{nxt.group(2).lower()}>"
        pos = nxt.start()


def split_search(content: str, experts: Sequence[str] | None = None) -> tuple[str, str] | None:
    """``"EXPERT: sub-question"`` → (expert, query), or None when it is not of that shape.

    With ``experts`` given, a known name (any case, longest first, since names may contain
    ``:``) is preferred and returned in its configured spelling; otherwise the name ends at the
    first ``:`` followed by whitespace, else at the first ``:``.
    """
    content = content.strip()
    if experts:
        low = content.lower()
        for name in sorted(experts, key=len, reverse=True):
            if low.startswith(name.lower()):
                rest = content[len(name):].lstrip()
                if rest.startswith(":") and rest[1:].strip():
                    return name, rest[1:].strip()
    m = re.match(r"(\S+?)\s*:\s+(\S.*)$", content, re.DOTALL) or re.match(r"([^:\s]+)\s*:\s*(\S.*)$", content, re.DOTALL)
    if m is None or not _EXPERT.fullmatch(m.group(1)):
        return None
    return m.group(1), m.group(2).strip()


# -- one step ---------------------------------------------------------------------------------
def parse_step(text: str, experts: Sequence[str] | None = None) -> Action:
    """Classify one generated step. Never raises.

    ``experts``, when given, only fixes the spelling of known names (see ``split_search``);
    whether a named expert exists is the caller's business, so an unknown one still parses as
    a ``Search``.
    """
    if not isinstance(text, str) or not text.strip():
        return Malformed("empty output")
    thoughts: list[str] = []
    for item in _scan(text):
        if isinstance(item, str):
            return Malformed(item)
        if item.tag == INFORMATION:
            return Malformed("<information> is written by the service, not by the router")
        if item.tag == THINK:
            if not item.closed:
                return Malformed("<think> not closed")
            thoughts.append(item.content)
            continue
        # The first action ends the step, as the stop sequence would have.
        return _action(item.tag, item.content, tuple(thoughts), experts)
    if thoughts:
        return Think(tuple(thoughts))
    return Malformed("no <think>, <search> or <answer> block")


def _action(tag: str, content: str, thoughts: tuple[str, ...], experts: Sequence[str] | None) -> Action:
    if tag == ANSWER:
        return Answer(content, thoughts) if content else Malformed("empty <answer>")
    parts = split_search(content, experts)
    if parts is None:
        return Malformed("a search must read <search>EXPERT: sub-question</search>")
    return Search(parts[0], parts[1], thoughts)


def normalize_step(text: str) -> str:
    """The step as the model meant it: cut after its first action, that action closed.

    Servers return text without the stop sequence that ended it; this puts it back, so the
    recorded trajectory is what the model wrote. Anything the scan cannot read is kept as is.
    """
    if not isinstance(text, str):
        return ""
    for item in _scan(text):
        if isinstance(item, str):
            break
        if item.tag in ACTION_TAGS:
            cut = text[: item.end].rstrip()
            return cut if item.closed else f"{cut}</{item.tag}>"
    return text.rstrip()


_LEADING_THINKS = re.compile(r"(?:\s*<\s*think\s*>.*?<\s*/\s*think\s*>)*\s*", re.IGNORECASE | re.DOTALL)


def doomed(prefix: str) -> str | None:
    """Why a step that starts with ``prefix`` can no longer be well formed, else None.

    Lets a server-side caller stop a generation early: a router that opens with prose (the
    usual failure of an untrained model) is malformed after its first word, not after its last
    token. Only the certain case is reported: text where a tag must start.
    """
    rest = prefix[_LEADING_THINKS.match(prefix).end():]
    if rest and not rest.startswith("<"):
        return f"text outside tags: {_snippet(rest)!r}"
    return None


# -- rendering --------------------------------------------------------------------------------
def escape(text: str) -> str:
    """Neutralise protocol tags inside text the model did not write (an expert's reply): an
    expert answering ``</information><answer>…`` must not end the block or answer for the router."""
    return _TAG.sub(lambda m: "&lt;" + m.group(0)[1:], text)


def information_block(text: str) -> str:
    return f"<information>{escape(text.strip())}</information>"


def render_step(action: Search | Answer) -> str:
    """The canonical text of a well-formed step (tests, scripted routers, demonstrations)."""
    head = "".join(f"<think>{t}</think>" for t in action.thoughts)
    if isinstance(action, Search):
        return f"{head}<search>{action.expert}: {action.query}</search>"
    return f"{head}<answer>{action.text}</answer>"


# -- whole trajectories -----------------------------------------------------------------------
def check_format(trajectory: str, *, experts: Sequence[str] | None = None, max_searches: int | None = None) -> FormatReport:
    """Judge a whole trajectory: the model's steps with the service's ``<information>`` blocks.

    Well formed means: only tagged blocks; each search followed by exactly one information block
    (and each information block preceded by a search); exactly one non-empty answer, last;
    ``<think>`` blocks anywhere before it (thinking is optional); with ``experts`` every search
    names one of them; with ``max_searches`` there are at most that many searches.
    """
    reasons: list[str] = []
    searches: list[Search] = []
    answer: str | None = None
    n_answers = 0
    pending_search = False  # a search waiting for its information block
    if not isinstance(trajectory, str) or not trajectory.strip():
        return FormatReport(False, ("empty trajectory",), 0, False)
    for item in _scan(trajectory):
        if isinstance(item, str):
            reasons.append(item)
            continue
        if not item.closed:
            reasons.append(f"<{item.tag}> not closed")
        if n_answers and item.tag != INFORMATION:
            reasons.append(f"<{item.tag}> after <answer>")
        if item.tag == INFORMATION:
            if not pending_search:
                reasons.append("<information> without a <search> before it")
            pending_search = False
            continue
        if pending_search:
            reasons.append(f"<{item.tag}> where the <information> of the last search belongs")
            pending_search = False
        if item.tag == SEARCH:
            parts = split_search(item.content, experts)
            if parts is None:
                reasons.append("a search must read <search>EXPERT: sub-question</search>")
            else:
                searches.append(Search(*parts))
                if experts is not None and parts[0] not in experts:
                    reasons.append(f"unknown expert {parts[0]!r}")
            pending_search = True
        elif item.tag == ANSWER:
            n_answers += 1
            if not item.content:
                reasons.append("empty <answer>")
            answer = item.content
    if pending_search:
        reasons.append("the last <search> got no <information>")
    if n_answers == 0:
        reasons.append("no <answer>")
    elif n_answers > 1:
        reasons.append(f"{n_answers} <answer> blocks")
    if max_searches is not None and len(searches) > max_searches:
        reasons.append(f"{len(searches)} searches, more than the {max_searches} allowed")
    return FormatReport(well_formed=not reasons, reasons=tuple(dict.fromkeys(reasons)), n_searches=len(searches),
                        has_answer=n_answers > 0 and bool(answer), answer=answer, searches=tuple(searches))
