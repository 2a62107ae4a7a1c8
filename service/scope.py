"""The out-of-scope rule the server and the evaluator share.

The intent confidence is the model's choice *among the allowed intents*: an out-of-scope request
("order a pizza") still gets a confident answer when one intent fits it least badly. The typicality
(service.typicality: how close the prompt's hidden state is to the training requests of its nearest
intent) is what finds most of them; the confidence rule stays for operators who calibrate it. A reply
is out of scope when any score is under its threshold (``OutOfScopeRule``). The thresholds come from
``conformal_threshold``: the one rule that training (on the training requests' cross-fitted scores)
and ``intentlm eval --calibrate`` (on a validation split) use.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_OOS_LABEL = "oos"  # the intent of an out-of-scope answer: `oos()`


@dataclass(frozen=True)
class OutOfScopeRule:
    """An answer is out of scope when its confidence or typicality (service.typicality) is under its threshold
    (0: off). A score the reply does not have (None) rejects nothing."""

    confidence_threshold: float = 0.0
    typicality_threshold: float = 0.0

    def rejection(self, confidence: float, typicality: float | None = None) -> str | None:
        """The first score that rejects the answer (confidence, then typicality), or None when it is in scope."""
        for name, score, threshold in (
            ("confidence", confidence, self.confidence_threshold),
            ("typicality", typicality, self.typicality_threshold),
        ):
            if score is not None and score < threshold:
                return name
        return None

    def rejects(self, confidence: float, typicality: float | None = None) -> bool:
        return self.rejection(confidence, typicality) is not None
