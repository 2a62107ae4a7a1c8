"""In scope or not: the familiarity score and the out-of-scope rule the server and the evaluator share.

Familiarity is how much of a request is made of words the training data used.

The intent confidence is the model's choice *among the allowed intents*: an out-of-scope request
("order a pizza") still gets a confident answer when one intent fits it least badly. Its words
give it away: they are not the words the training instructions used. ``familiarity`` is the share
of the request's words seen in training, where

* a word outside the answer's arguments counts if training used it outside arguments ("turn",
  "lights", "alarm"): this is the vocabulary of requests the model was taught to recognise;
* a word inside an argument counts if training used it anywhere, and weighs ``ARGUMENT_WEIGHT``
  (a quarter): argument words are expected to be new (names, places, times), but an out-of-scope
  request's unknown content words often end up as arguments ("turn on the roomba" ->
  ``iot_hue_lightup(roomba)``), so they cannot be left out altogether.

On out-of-scope intents held out of training (bench/accuracy.md §5), at the threshold of the lowest
correct in-scope validation answer, familiarity rejects 60 % of them and the confidence 19 %; on the
test file, where in-scope requests use more words the training data never did, it also rejects
2.5 % of in-scope requests. The hidden-state score (service.typicality) does better on both, so
familiarity is an option (``intentlm eval --calibrate --oos-score familiarity``, or set by the
operator). The reply is out-of-scope when any score is under its threshold (``OutOfScopeRule``).
Pure Python, no model: a set lookup per word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from service.intents import Call

# Words: runs of letters/digits (apostrophes inside: "what's"), and each Han or kana character on its own,
# since those scripts do not separate words with spaces.
_WORD = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff]|[^\W_]+(?:'[^\W_]+)*")
DEFAULT_OOS_LABEL = "oos"  # the intent of an out-of-scope answer: `oos()`
ARGUMENT_WEIGHT = 0.25  # chosen on the held-out intents of bench/accuracy.md §5 (bench/oos_scores.py --weights)


def words(text: str) -> list[str]:
    """The lower-cased words of a text, in order."""
    return _WORD.findall(text.lower())


class Vocabulary(BaseModel):
    """The training instructions' words, in the model card: ``context`` ones used outside arguments,
    ``argument`` ones used only inside them."""

    context: list[str] = Field(default_factory=list)
    argument: list[str] = Field(default_factory=list)


def build_vocabulary(records: Iterable[tuple[str, Sequence[Call]]]) -> Vocabulary:
    """The vocabulary of ``(instruction, calls)`` pairs (pass only in-scope records)."""
    context: set[str] = set()
    argument: set[str] = set()
    for instruction, calls in records:
        in_args = _argument_words(calls)
        for word in words(instruction):
            (argument if word in in_args else context).add(word)
    return Vocabulary(context=sorted(context), argument=sorted(argument - context))


class Familiarity:
    """Scores requests against one vocabulary (sets built once, for the server's hot path)."""

    def __init__(self, vocabulary: Vocabulary, argument_weight: float = ARGUMENT_WEIGHT) -> None:
        self.context = frozenset(vocabulary.context)
        self.anywhere = self.context | frozenset(vocabulary.argument)
        self.argument_weight = argument_weight

    def score(self, text: str, calls: Sequence[Call]) -> float:
        """The weighted share of ``text``'s words seen in training (1.0 for a text without words)."""
        in_args = _argument_words(calls)
        known = total = 0.0
        for word in words(text):
            if word in in_args:
                total += self.argument_weight
                known += self.argument_weight * (word in self.anywhere)
            else:
                total += 1
                known += word in self.context
        return known / total if total else 1.0


def _argument_words(calls: Sequence[Call]) -> set[str]:
    return {word for call in calls for arg in call.args for word in words(arg)}


@dataclass(frozen=True)
class OutOfScopeRule:
    """An answer is out of scope when its confidence, familiarity or typicality (service.typicality) is under
    its threshold (0: off). A score the reply does not have (None) rejects nothing."""

    confidence_threshold: float = 0.0
    familiarity_threshold: float = 0.0
    typicality_threshold: float = 0.0

    def rejection(self, confidence: float, familiarity: float | None, typicality: float | None = None) -> str | None:
        """The first score that rejects the answer (confidence, familiarity, typicality), or None when it is in scope."""
        for name, score, threshold in (("confidence", confidence, self.confidence_threshold),
                                       ("familiarity", familiarity, self.familiarity_threshold),
                                       ("typicality", typicality, self.typicality_threshold)):
            if score is not None and score < threshold:
                return name
        return None

    def rejects(self, confidence: float, familiarity: float | None, typicality: float | None = None) -> bool:
        return self.rejection(confidence, familiarity, typicality) is not None
