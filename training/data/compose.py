"""Synthetic multi-intent records, composed from the data's own single-intent records.

Why: multi-intent records are a minority of typical intent data (20 % of the smart-home set), and a
small model trained on them learns to stop after the first call (docs/decisions.md). Two single-call
records joined by the connective the data's own multi-call records use ("…, and then …" in HWU64)
make more of them at no labelling cost, without any outside text.

The connective is learned from the data, never assumed: the word n-gram (1-3 tokens, punctuation
counted as a token) found in the most multi-call instructions and the fewest single-call ones. A
data set without multi-call records, or without a shared connective, gets no composed records.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from itertools import permutations

from service.dataset import Record

_TOKEN = re.compile(r"\w+|[^\w\s]")
# A connective must appear in at least this share of the multi-call instructions.
MIN_JOINER_SHARE = 0.5


def _ngrams(text: str, longest: int = 3) -> set[tuple[str, ...]]:
    tokens = _TOKEN.findall(text.lower())
    return {tuple(tokens[i : i + n]) for n in range(1, longest + 1) for i in range(len(tokens) - n + 1)}


def find_joiner(records: list[Record]) -> str | None:
    """The connective joining the calls of the multi-call records, as it is written in them (with its spaces)."""
    multi = [r.instruction for r in records if len(r.calls()) == 2]
    single = [r.instruction for r in records if len(r.calls()) == 1]
    if not multi or not single:
        return None
    in_multi = Counter(g for text in multi for g in _ngrams(text))
    in_single = Counter(g for text in single for g in _ngrams(text))

    def score(gram: tuple[str, ...]) -> tuple[float, int]:
        return in_multi[gram] / len(multi) - in_single[gram] / len(single), len(gram)

    best = max(in_multi, key=score)
    if in_multi[best] / len(multi) < MIN_JOINER_SHARE:
        return None
    pattern = re.compile(r"\s*" + r"\s*".join(re.escape(t) for t in best) + r"\s*", re.IGNORECASE)
    surfaces = Counter(m.group(0) for text in multi for m in pattern.finditer(text))
    return surfaces.most_common(1)[0][0]


def compose_multi_intent(records: list[Record], count: int, *, seed: int = 42) -> list[Record]:
    """``count`` new two-call records: ordered pairs of different intents in turn, random single-call records for each.

    Each pair's instruction is ``first + joiner + second`` and its output the two calls joined by
    ``;`` (the data contract's multi-call form); the second part starts lower-case, as in the data.
    """
    if count <= 0:
        return []
    joiner = find_joiner(records)
    by_intent: dict[str, list[Record]] = {}
    for record in records:
        calls = record.calls()
        if len(calls) == 1:
            by_intent.setdefault(calls[0].name, []).append(record)
    pairs = list(permutations(sorted(by_intent), 2))
    if joiner is None or not pairs:
        return []
    rng = random.Random(seed)
    rng.shuffle(pairs)
    composed = []
    for i in range(count):
        first_intent, second_intent = pairs[i % len(pairs)]
        first, second = rng.choice(by_intent[first_intent]), rng.choice(by_intent[second_intent])
        text = second.instruction[:1].lower() + second.instruction[1:]
        composed.append(
            Record(
                instruction=first.instruction.rstrip(" .!?") + joiner + text, output=f"{first.output};{second.output}"
            )
        )
    return composed
