"""R2R switching logic on a deterministic toy pair: who writes each token, and what each model's
KV cache has to evaluate after a switch (only what it has not seen, never the prefix again)."""

from __future__ import annotations

import pytest

from experts.r2r.engine import LLM, SLM, R2REngine, incomplete_utf8
from experts.r2r.features import Proposal
from experts.r2r.routers import ConfidenceRouter, NeverRouter, RandomRouter, Router
from tests.support.toy_lm import ToyLM, words

MSGS = [{"role": "user", "content": "where is the cat?"}]
PROMPT = b"Question: where is the cat?\nAnswer:"
SLM_SAYS = b" the cat sat on the mat"
LLM_SAYS = b" the cat sat on a mat"


class AtPositions(Router):
    """Hands over exactly at the given positions (a scripted router)."""

    name = "scripted"

    def __init__(self, positions: set[int]) -> None:
        self.positions = positions
        self.seen: list[Proposal] = []

    def hand_over(self, p: Proposal) -> bool:
        self.seen.append(p)
        return p.position in self.positions


def run(engine: R2REngine, router: Router, max_tokens: int = 32):
    gen = engine.generate(MSGS, router=router, max_tokens=max_tokens)
    steps = []
    while True:
        try:
            steps.append(next(gen))
        except StopIteration as stop:
            return steps, stop.value


def text_of(steps) -> bytes:
    return b"".join(s.piece for s in steps)


def shared_pair(**slm_kw):
    vocab = words(SLM_SAYS, LLM_SAYS)
    slm = ToyLM(vocab, [SLM_SAYS, LLM_SAYS], name="slm", **slm_kw)
    llm = ToyLM(vocab, [LLM_SAYS], name="llm")
    return slm, llm, R2REngine(slm, llm, slm_format="plain", llm_format="plain")


def test_slm_alone_never_wakes_the_llm():
    slm, llm, engine = shared_pair()
    steps, stats = run(engine, NeverRouter())
    assert text_of(steps) == SLM_SAYS and stats.finish_reason == "stop"
    assert stats.llm_tokens == 0 and llm.evaluated == 0 and llm.eval_log == []  # not even the prompt
    n = len(steps)
    assert stats.slm_tokens == n and stats.llm_share == 0.0
    # the SLM reads the prompt once, then each generated token once
    assert slm.evaluated == len(slm.tokenize(PROMPT)) + n
    assert all(len(batch) == 1 for batch in slm.eval_log[1:])


def test_handover_fast_path_evaluates_only_unseen_tokens():
    slm, llm, engine = shared_pair()
    assert engine.shared_vocab
    steps, stats = run(engine, AtPositions({4}))  # " the" → the LLM writes " a" instead
    assert text_of(steps) == LLM_SAYS
    assert [s.writer for s in steps] == [SLM] * 4 + [LLM] + [SLM]
    assert (stats.slm_tokens, stats.llm_tokens) == (5, 1) and stats.llm_share == pytest.approx(1 / 6)
    n_prompt = len(llm.tokenize(PROMPT))
    # the LLM: its prompt once, then the four SLM tokens it had not seen, in one batch; its own
    # " a" is never evaluated because it is not asked again
    assert [len(b) for b in llm.eval_log] == [n_prompt, 4]
    assert stats.llm.generated_evaluated == 4 and stats.llm.retokenized == 0 and stats.llm.unevaluated == 1
    # the SLM evaluates every transcript token exactly once, the LLM's included
    assert slm.evaluated == n_prompt + len(steps) and stats.slm.retokenized == 0


def test_second_switch_catches_up_only_since_the_last_turn():
    slm, llm, engine = shared_pair()
    steps, stats = run(engine, AtPositions({1, 4}))
    assert text_of(steps) == LLM_SAYS and stats.llm_tokens == 2
    n_prompt = len(llm.tokenize(PROMPT))
    # first turn: prompt + " the"; second turn: its own " cat" + the SLM's " sat" " on"
    assert [len(b) for b in llm.eval_log] == [n_prompt, 1, 3]
    assert llm.evaluated == n_prompt + 4  # the prefix is never evaluated twice


def test_text_level_handover_between_different_tokenizers():
    slm = ToyLM(words(SLM_SAYS, LLM_SAYS), [SLM_SAYS, LLM_SAYS], name="slm")
    # the LLM's vocabulary splits words differently: no " cat", " sat" or " on" tokens
    llm_vocab = [v for v in words(LLM_SAYS) if v not in (b" cat", b" sat", b" on")] + [b" c", b"at", b" s", b" o", b"n"]
    llm = ToyLM(llm_vocab, [LLM_SAYS], name="llm")
    engine = R2REngine(slm, llm, slm_format="plain", llm_format="plain")
    assert not engine.shared_vocab
    steps, stats = run(engine, AtPositions({4}))
    assert text_of(steps) == LLM_SAYS
    n_prompt = len(llm.tokenize(PROMPT))
    tail = llm.tokenize(b" the cat sat on")  # the SLM's four tokens in LLM tokens
    assert [len(b) for b in llm.eval_log] == [n_prompt, len(tail)] and llm.history[n_prompt:] == tail
    assert stats.llm.retokenized == 0
    # the SLM reads the LLM's " a" through its own tokenizer: one token, nothing rolled back
    assert slm.evaluated == len(slm.tokenize(PROMPT)) + len(steps)


def test_own_token_is_retokenised_with_the_rest_of_its_word():
    # the LLM writes " cat", the SLM completes the word with "tle": when the LLM is asked again,
    # its own " cat" (never evaluated) is re-tokenised with "tle" as " cattle"; " the" stays cached
    slm_says, llm_says = b" the cattle ran", b" the cattle ran far"
    slm = ToyLM(words(slm_says) + [b"tle"], [slm_says], name="slm")
    llm = ToyLM(words(llm_says) + [b" cat"], [b" the cat", llm_says], name="llm")
    engine = R2REngine(slm, llm, slm_format="plain", llm_format="plain")
    steps, stats = run(engine, AtPositions({1, 3}))
    assert [(s.writer, s.piece) for s in steps] == [(SLM, b" the"), (LLM, b" cat"), (SLM, b"tle"), (LLM, b" ran")]
    n_prompt = len(llm.tokenize(PROMPT))
    assert llm.eval_log[1:] == [[llm.vocab.index(b" the")], [llm.vocab.index(b" cattle")]]
    assert stats.llm.retokenized == 0 and llm.evaluated == n_prompt + 2


def test_retokenisation_rolls_back_only_the_cached_tail_of_the_word():
    # the SLM writes " c" and the LLM caches it as " " "c"; the LLM adds "at", the SLM "tle": the
    # word at the junction becomes " cattle", one LLM token. Only " " and "c" are rolled back.
    says = b" the cattle ran"
    slm = ToyLM(words(b" the") + [b" c", b"at", b"tle", b" ran"], [says], name="slm")
    llm = ToyLM(words(says) + [b"at"], [says], name="llm")
    engine = R2REngine(slm, llm, slm_format="plain", llm_format="plain")
    steps, stats = run(engine, AtPositions({2, 4}))
    assert [(s.writer, s.piece) for s in steps] == [(SLM, b" the"), (SLM, b" c"), (LLM, b"at"), (SLM, b"tle"), (LLM, b" ran")]
    assert text_of(steps) == says
    n_prompt = len(llm.tokenize(PROMPT))
    v = llm.vocab.index
    assert llm.eval_log[1:] == [[v(b" the"), v(b" "), v(b"c")], [v(b" cattle")]]
    assert stats.llm.retokenized == 2
    assert llm.history[n_prompt:] == [v(b" the"), v(b" cattle")]  # the prefix " the" was never evaluated again


def test_prompt_prefix_is_reused_across_requests():
    slm, llm, engine = shared_pair()
    run(engine, AtPositions({4}))
    n_prompt = len(slm.tokenize(PROMPT))
    _, stats = run(engine, AtPositions({4}))
    assert stats.slm.prompt_evaluated == 1 and stats.llm.prompt_evaluated == 1  # the last prompt token, for fresh logits
    assert stats.slm.prompt_tokens == n_prompt


def test_never_switches_inside_a_utf8_character():
    assert incomplete_utf8(b"caf\xc3") and not incomplete_utf8(b"caf\xc3\xa9") and not incomplete_utf8(b"")
    assert incomplete_utf8(b"\xe2\x80") and not incomplete_utf8(b"\xe2\x80\x94")
    says = "the café".encode()
    vocab = words(b"the caf") + [b"\xc3", b"\xa9"]
    slm = ToyLM(vocab, [says], name="slm")
    llm = ToyLM(vocab, [says], name="llm")
    engine = R2REngine(slm, llm, slm_format="plain", llm_format="plain")
    steps, _ = run(engine, AtPositions({3}))  # position 3 comes after "\xc3": the SLM must finish "é"
    assert text_of(steps) == says
    assert [s.writer for s in steps] == [SLM] * len(steps)


def test_single_model_references():
    slm, llm, engine = shared_pair()
    for which, expected, lm in ((SLM, SLM_SAYS, slm), (LLM, LLM_SAYS, llm)):
        gen = engine.generate_single(which, MSGS, max_tokens=32)
        steps = list(gen)
        assert b"".join(s.piece for s in steps) == expected and {s.writer for s in steps} == {which}
        assert lm.evaluated == len(lm.tokenize(PROMPT)) + len(steps)


def test_max_tokens_stops_with_length():
    _, _, engine = shared_pair()
    steps, stats = run(engine, NeverRouter(), max_tokens=3)
    assert len(steps) == 3 and stats.finish_reason == "length"


def test_confidence_and_random_baselines():
    slm, llm, engine = shared_pair(confidence={4: 0.3})  # unsure at position 4
    steps, stats = run(engine, ConfidenceRouter(min_top_prob=0.5))
    assert text_of(steps) == LLM_SAYS and [s.writer for s in steps].count(LLM) == 1
    runs = [[s.writer for s in run(engine, RandomRouter(share=0.5, seed=3))[0]] for _ in range(2)]
    assert runs[0] == runs[1]  # reproducible from the seed
    router = RandomRouter(share=0.5, seed=3)
    series = [[s.writer for s in run(engine, router)[0]] for _ in range(4)]
    assert series[0] == runs[0] and len({tuple(w) for w in series}) > 1  # each generation draws anew
    _, stats = run(engine, RandomRouter(share=1.0))
    assert stats.slm_tokens == 0 and stats.llm_share == 1.0


def test_proposals_carry_features():
    _, _, engine = shared_pair()
    router = AtPositions(set())
    run(engine, router)
    p = router.seen[0]
    assert p.piece == b" the" and p.position == 0 and not p.is_eog
    assert len(p.top_logprobs) == 10 and p.top_logprobs[0] >= p.top_logprobs[1] and 0 < p.top_prob <= 1


def test_llm_reads_its_own_unevaluated_token_with_the_catch_up_and_can_end_the_answer():
    slm, llm, engine = shared_pair()
    steps, stats = run(engine, AtPositions({4, 6}))  # " a" by the LLM, " mat" by the SLM, then the LLM again
    assert text_of(steps) == LLM_SAYS and [s.writer for s in steps] == [SLM] * 4 + [LLM, SLM]
    assert stats.finish_reason == "stop" and stats.llm_tokens == 1  # the LLM's end of text is not a token
    n_prompt = len(llm.tokenize(PROMPT))
    v = llm.vocab.index
    # second turn: its own " a" (written, never evaluated) and the SLM's " mat", in one batch
    assert llm.eval_log[1:] == [[v(b" the"), v(b" cat"), v(b" sat"), v(b" on")], [v(b" a"), v(b" mat")]]
    assert llm.evaluated == n_prompt + len(steps) and stats.llm.unevaluated == 0


class SmallContext(ToyLM):
    def __init__(self, *args, n_ctx: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._n_ctx = n_ctx

    @property
    def n_ctx(self) -> int:
        return self._n_ctx


def test_context_limits_end_with_length_or_refuse_the_prompt():
    from core.errors import PromptTooLongError

    vocab = words(SLM_SAYS, LLM_SAYS)
    n_prompt = len(ToyLM(vocab, []).tokenize(PROMPT))
    slm = SmallContext(vocab, [SLM_SAYS], name="slm", n_ctx=n_prompt + 3)
    engine = R2REngine(slm, ToyLM(vocab, [LLM_SAYS]), slm_format="plain", llm_format="plain")
    steps, stats = run(engine, NeverRouter())
    assert stats.finish_reason == "length" and 0 < len(steps) <= 4  # the context filled up: a clean end, no error
    tiny = R2REngine(SmallContext(vocab, [SLM_SAYS], n_ctx=n_prompt), ToyLM(vocab, [LLM_SAYS]), slm_format="plain",
                     llm_format="plain")
    with pytest.raises(PromptTooLongError, match="context holds"):
        run(tiny, NeverRouter())


def test_a_hidden_state_router_needs_an_slm_that_exposes_them():
    from core.errors import ConfigError

    class ReadsHidden(NeverRouter):
        needs_hidden = True

    _, _, engine = shared_pair()
    with pytest.raises(ConfigError, match="hidden"):
        run(engine, ReadsHidden())
