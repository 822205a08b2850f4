"""Router-R1 protocol: property tests for step parsing and the trajectory format check."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from policies.router_r1.protocol import (
    _TAG,
    Answer,
    Malformed,
    Search,
    Think,
    check_format,
    doomed,
    escape,
    information_block,
    normalize_step,
    parse_step,
    render_step,
    split_search,
)

EXPERTS = ["smollm2-135m", "gemma3-270m", "r2r:smollm2+gemma3"]
FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Block contents: anything but angle brackets, stripped, non-empty.
content = st.text(st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), min_size=1, max_size=40) \
    .map(str.strip).filter(bool)
thoughts = st.lists(content, max_size=2).map(tuple)
searches = st.builds(Search, expert=st.sampled_from(EXPERTS), query=content, thoughts=thoughts)
answers = st.builds(Answer, text=content, thoughts=thoughts)
tag_soup = st.lists(st.sampled_from(["<think>", "</think>", "<search>", "</search>", "<answer>", "</answer>",
                                     "<information>", "</information>", "< SEARCH >", "smollm2-135m:", "x", " ", "\n",
                                     "<", ">", ":", "</ answer>"]), max_size=12).map("".join)


def _vary_tags(text: str, data) -> str:
    """Same step with tags in random case and padded brackets (what parsing tolerates)."""
    for tag in ("think", "search", "answer"):
        for raw in (f"<{tag}>", f"</{tag}>"):
            styled = raw.replace(tag, data.draw(st.sampled_from([tag, tag.upper(), tag.capitalize()])))
            if data.draw(st.booleans()):
                styled = styled.replace("<", "< ").replace(">", " >")
            text = text.replace(raw, styled)
    return text


# -- never raises, always classifies --------------------------------------------------------------
@FAST
@given(st.text(max_size=200) | tag_soup)
def test_parse_step_never_raises(text):
    action = parse_step(text, EXPERTS)
    assert isinstance(action, Think | Search | Answer | Malformed)
    if isinstance(action, Malformed):
        assert action.reason
    assert isinstance(normalize_step(text), str)
    report = check_format(text, experts=EXPERTS, max_searches=3)
    assert report.well_formed == (not report.reasons)


@FAST
@given(tag_soup)
def test_parse_step_results_are_consistent(text):
    action = parse_step(text)
    if isinstance(action, Answer):
        assert action.text and not _TAG.search(action.text)
    if isinstance(action, Search):
        assert action.expert and action.query


# -- round trips --------------------------------------------------------------------------------
@FAST
@given(searches | answers, st.data())
def test_step_round_trip(action, data):
    text = render_step(action)
    assert parse_step(text, EXPERTS) == action
    assert parse_step(_vary_tags(text, data), EXPERTS) == action
    assert parse_step(f"  \n{text}\n ", EXPERTS) == action


@FAST
@given(searches | answers)
def test_stop_sequence_dropped_by_the_server(action):
    text = render_step(action)
    cut = text.removesuffix("</search>").removesuffix("</answer>")
    assert parse_step(cut, EXPERTS) == action
    assert normalize_step(cut) == text


@FAST
@given(searches | answers, content)
def test_text_after_the_action_is_cut_as_a_stop_sequence_would(action, tail):
    text = render_step(action)
    assert parse_step(text + "<information>" + tail, EXPERTS) == action
    assert normalize_step(text + tail) == text


@FAST
@given(st.lists(searches, max_size=4), answers, st.lists(st.text(max_size=60), min_size=4, max_size=4))
def test_well_formed_trajectory_round_trip(search_steps, final, replies):
    parts = []
    for step, reply in zip(search_steps, replies, strict=False):
        parts += [render_step(step), information_block(reply)]
    parts.append(render_step(final))
    trajectory = "\n".join(parts)
    report = check_format(trajectory, experts=EXPERTS, max_searches=4)
    assert report.well_formed, report.reasons
    assert report.n_searches == len(search_steps) and report.has_answer and report.answer == final.text
    assert [(s.expert, s.query) for s in report.searches] == [(s.expert, s.query) for s in search_steps]
    assert [parse_step(p, EXPERTS) for p in parts[::2]] == [*search_steps, final]


# -- broken outputs are classified as such --------------------------------------------------------
@FAST
@given(searches | answers, content, st.sampled_from(["before", "between"]))
def test_stray_text_is_malformed(action, junk, where):
    assume(action.thoughts or where == "before")
    text = render_step(action)
    if where == "before":
        broken = junk + text
    else:
        head, sep, rest = text.partition("</think>")
        broken = head + sep + junk + rest
    result = parse_step(broken, EXPERTS)
    assert isinstance(result, Malformed) and "outside tags" in result.reason


@FAST
@given(searches | answers)
def test_unclosed_think_is_malformed(action):
    assume(action.thoughts)
    broken = render_step(action).replace("</think>", "", 1)
    assert isinstance(parse_step(broken, EXPERTS), Malformed)


@FAST
@given(content, content)
def test_model_written_information_is_malformed(thought, fake):
    step = f"<think>{thought}</think><information>{fake}</information><answer>x</answer>"
    result = parse_step(step, EXPERTS)
    assert isinstance(result, Malformed) and "information" in result.reason
    assert not check_format(step).well_formed


@FAST
@given(st.sampled_from(["", "   ", "\n"]), thoughts)
def test_empty_answer_is_malformed(blank, ts):
    result = parse_step(render_step(Answer("x", ts)).replace("<answer>x", f"<answer>{blank}"))
    assert result == Malformed("empty <answer>")


@FAST
@given(content)
def test_search_without_expert_is_malformed(query):
    assume(":" not in query)
    result = parse_step(f"<search>{query}</search>")
    assert isinstance(result, Malformed) and "EXPERT" in result.reason


@FAST
@given(st.lists(content, min_size=1, max_size=2).map(tuple))
def test_think_only_step(ts):
    assert parse_step("".join(f"<think>{t}</think>" for t in ts)) == Think(ts)


@FAST
@given(st.lists(searches, min_size=1, max_size=3), answers, st.integers(0, 5), st.data())
def test_broken_trajectories_are_not_well_formed(search_steps, final, which, data):
    parts = []
    for step in search_steps:
        parts += [render_step(step), information_block("reply")]
    parts.append(render_step(final))
    mutation = data.draw(st.sampled_from(["drop_info", "two_answers", "no_answer", "answer_first", "over_budget",
                                          "unknown_expert", "unclosed"]))
    if mutation == "drop_info":
        del parts[1 + 2 * (which % len(search_steps))]
    elif mutation == "two_answers":
        parts.append(render_step(final))
    elif mutation == "no_answer":
        parts.pop()
    elif mutation == "answer_first":
        parts.insert(0, render_step(final))
    elif mutation == "unknown_expert":
        parts[0] = render_step(Search("nobody", "q"))
    elif mutation == "unclosed":
        parts[-1] = parts[-1].removesuffix("</answer>")
    report = check_format("\n".join(parts), experts=EXPERTS,
                          max_searches=len(search_steps) - 1 if mutation == "over_budget" else None)
    assert not report.well_formed and report.reasons


# -- details ---------------------------------------------------------------------------------------
def test_expert_names_with_colons():
    assert split_search("r2r:smollm2+gemma3: why?", EXPERTS) == ("r2r:smollm2+gemma3", "why?")
    assert split_search("R2R:SMOLLM2+GEMMA3 : why?", EXPERTS) == ("r2r:smollm2+gemma3", "why?")
    assert split_search("r2r:smollm2+gemma3: why?") == ("r2r:smollm2+gemma3", "why?")
    assert split_search("gemma3-270m:why?") == ("gemma3-270m", "why?")
    assert split_search("no colon here") is None
    assert split_search("smollm2-135m:   ") is None


def test_unknown_expert_still_parses_as_a_search():
    assert parse_step("<search>gpt-9: hi</search>", EXPERTS) == Search("gpt-9", "hi")
    report = check_format("<search>gpt-9: hi</search><information>x</information><answer>y</answer>", experts=EXPERTS)
    assert report.reasons == ("unknown expert 'gpt-9'",)


@given(st.text(max_size=80))
def test_information_cannot_smuggle_tags(reply):
    trajectory = f"<search>smollm2-135m: q</search>{information_block(reply)}<answer>a</answer>"
    report = check_format(trajectory, experts=EXPERTS)
    assert report.well_formed and report.answer == "a"
    assert "<" not in escape("</information><answer>x</answer>").replace("&lt;", "")


# -- early stop of a generation that cannot become well formed --------------------------------------
@FAST
@given(searches | answers)
def test_no_prefix_of_a_well_formed_step_is_doomed(action):
    text = render_step(action)
    assert all(doomed(text[:i]) is None for i in range(len(text) + 1))


@FAST
@given(st.text(max_size=40) | tag_soup, st.text(max_size=40) | tag_soup)
def test_a_doomed_prefix_never_parses(prefix, rest):
    if doomed(prefix):
        assert isinstance(parse_step(prefix + rest, EXPERTS), Malformed)
