"""Synthetic out-of-scope records, written by the base model itself (the ``synthetic_oos`` knob).

Why: a model trained on in-scope intents only must map every request to one of them, and the
confidence threshold (``intentlm eval --calibrate``) catches only the requests it is unsure of.
Records answered ``oos()`` give it a way out. Labelled out-of-scope requests are rare in real
intent data, so the base model (an instruct model) writes them: short questions on generic topics.

Two filters keep them honest:

* a generation that uses a *cue word* of an in-scope intent (a word the training data uses mostly
  under one intent, e.g. "alarm") is dropped, so that no in-scope request is taught as ``oos()``;
* the rest are written in the data's own style (its case and its characters), so that the model
  cannot tell them apart by style alone.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from training.data.dataset import Record

# Wikipedia's main topic classifications: generic, and chosen without looking at any test data.
TOPICS = ("the arts", "culture", "food", "geography", "health", "history", "mathematics", "nature", "people",
          "philosophy", "religion", "society", "technology", "sports", "business", "travel", "shopping",
          "science", "education", "politics", "money", "language", "animals", "the internet", "work", "family")
QUESTION = "Ask me one short question about {topic}."
# A cue word: seen in at least MIN_CUE_COUNT training instructions, at least MIN_CUE_SHARE of them under one
# intent (with 12 intents, five times an even share: "lights" is a cue, "this" and "please" are not).
MIN_CUE_COUNT = 3
MIN_CUE_SHARE = 0.4
MIN_WORDS, MAX_WORDS = 2, 14

_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE_END = re.compile(r"(?<=[?.!])\s")
_EDGE = ".,;:!?'\"-"


def cue_words(records: list[Record]) -> set[str]:
    """Words that point to one intent in the training data (function words are spread over all of them)."""
    by_word: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        for word in set(_WORD.findall(record.instruction.lower())):
            for call in record.calls():
                by_word[word][call.name] += 1
    return {word for word, counts in by_word.items()
            if sum(counts.values()) >= MIN_CUE_COUNT and max(counts.values()) >= MIN_CUE_SHARE * sum(counts.values())}


@dataclass(frozen=True)
class DataStyle:
    """How the data's instructions are written: lower case or not, and the characters they use."""

    lowercase: bool
    charset: frozenset[str]

    @classmethod
    def of(cls, records: list[Record]) -> DataStyle:
        return cls(all(r.instruction == r.instruction.lower() for r in records),
                   frozenset("".join(r.instruction for r in records)))


def restyle(text: str, style: DataStyle) -> str | None:
    """The generation's first sentence in the data's style, or None when it is too short or too long for a request.

    Style: lower case if the data is, and only characters the data's instructions use (HWU64 has
    apostrophes but no question marks), with none at either end.
    """
    lines = text.strip().splitlines()
    first = _SENTENCE_END.split(lines[0])[0] if lines else ""
    if style.lowercase:
        first = first.lower()
    first = "".join(ch if ch in style.charset or ch.isspace() else " " for ch in first)
    words = [w for w in (w.strip(_EDGE) for w in first.split()) if w]
    return " ".join(words) if MIN_WORDS <= len(words) <= MAX_WORDS else None


def synthetic_oos_records(records: list[Record], count: int, model: Any, tokenizer: Any, *, label: str,
                          seed: int, batch_size: int = 64) -> list[Record]:
    """Up to ``count`` distinct generated requests that share no cue word with the data, answered ``label()``."""
    import torch

    if count <= 0:
        return []
    cues = cue_words(records)
    style = DataStyle.of(records)
    known = {r.instruction.lower() for r in records}
    rng = random.Random(seed)
    torch.manual_seed(seed)
    found: dict[str, None] = {}
    # Each round samples a batch; a round that finds nothing new means the model has run dry.
    for _ in range(max(4, 4 * count // batch_size)):
        topics = [rng.choice(TOPICS) for _ in range(batch_size)]
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": QUESTION.format(topic=t)}],
                                                 tokenize=False, add_generation_prompt=True) for t in topics]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=24,
                                 pad_token_id=tokenizer.pad_token_id)
        before = len(found)
        for text in tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True):
            request = restyle(text, style)
            if request and request.lower() not in known and not set(_WORD.findall(request.lower())) & cues:
                found[request] = None
        if len(found) >= count or len(found) == before:
            break
    return [Record(instruction=text, output=f"{label}()") for text in list(found)[:count]]
