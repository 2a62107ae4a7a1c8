"""Retrieved examples: the training records most like a request, with their answers, shown in its prompt.

Why: most argument errors of a small model on intent data are choices of which words make an argument, for
phrases the training data labels rarely (bench/accuracy.md §17). With the nearest training utterances and their
answers in the prompt, the model follows how requests like this one were labelled (bench/accuracy.md §15: +5 to
+7 points of parameter accuracy on validation without composed records, +1 on average with them; but the model
also copies their intents, and an out-of-scope request's prompt then holds in-scope ones, so the typicality score
found fewer unseen intents: the option is off by default).

A model trained with ``retrieved_examples k`` keeps its training records in ``examples.json``; training,
evaluation and the server all ask :meth:`ExampleIndex.neighbours` for a request's examples, so every prompt
is built the same way. Similarity is TF-IDF cosine over word unigrams and bigrams: a thousand records are
scored in well under a millisecond, with no model of its own.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson

from service.modelcard import atomic_write_bytes

EXAMPLES_FILE = "examples.json"
_WORD = re.compile(r"[\w']+")

Example = tuple[str, str]  # (instruction, answer)


def _features(text: str) -> Counter[str]:
    words = _WORD.findall(text.lower())
    return Counter(words + [" ".join(pair) for pair in zip(words, words[1:])])


def same_text_key(text: str) -> str:
    """``text`` ignoring case and runs of whitespace: how instructions are compared, here and by the data's
    strategy check (training.data.check) and split (training.data.split)."""
    return " ".join(text.split()).casefold()


def halves(key: str, connective: str) -> list[str]:
    """The parts of a text key split at the data's connective (both as ``same_text_key`` keys): the halves of a
    multi-intent instruction composed from two single-intent ones (training.data.compose.find_joiner)."""
    return [part.strip() for part in key.split(connective)]


class ExampleIndex:
    """The training records of a model, searchable by similarity to a request.

    ``joiner`` is the connective of the data's composed multi-intent records (training.data.compose):
    a record never gets an example sharing a half with it, so that a training prompt is never easier
    than a new request's (a new two-intent request shares no half with the training data).
    """

    def __init__(self, records: Sequence[Example], k: int, joiner: str | None = None) -> None:
        if k < 1:
            raise ValueError("an example index shows at least one example")
        self.records, self.k, self.joiner = list(records), k, joiner
        self._connective = same_text_key(joiner) if joiner else None
        counts = [_features(text) for text, _ in self.records]
        df = Counter(f for c in counts for f in c)
        self._idf = {f: math.log(len(self.records) / n) + 1 for f, n in df.items()}
        # an inverted index (feature -> records, weights): memory grows with the data, not data x vocabulary
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, c in enumerate(counts):
            for feature, weight in self._weights(c).items():
                rows, weights = postings.setdefault(feature, ([], []))
                rows.append(i)
                weights.append(weight)
        self._postings = {f: (np.array(rows), np.array(weights)) for f, (rows, weights) in postings.items()}
        self._keys = [same_text_key(text) for text, _ in self.records]
        self._parts = [self._parts_of(key) for key in self._keys]

    def _weights(self, counts: Counter[str]) -> dict[str, float]:
        """The L2-normalised TF-IDF weights of the known features (a dot product of two is their cosine)."""
        weights = {f: n * self._idf[f] for f, n in counts.items() if f in self._idf}
        norm = math.sqrt(sum(w * w for w in weights.values()))
        return {f: w / norm for f, w in weights.items()} if norm else {}

    def _parts_of(self, key: str) -> set[str]:
        """A text key and, split at the data's connective, its halves."""
        return {key} | set(halves(key, self._connective)) if self._connective else {key}

    def neighbours(self, text: str) -> list[Example]:
        """The ``k`` most similar records, the most similar last (nearest the request).

        Left out: the request itself, records containing it or contained in it, and records sharing a half
        with it; ties keep the data's order."""
        if not self.records:
            return []
        key = same_text_key(text)
        parts = self._parts_of(key)
        scores = np.zeros(len(self.records))
        for feature, weight in self._weights(_features(text)).items():
            rows, weights = self._postings[feature]
            scores[rows] += weight * weights
        chosen: list[Example] = []
        for i in np.argsort(-scores, kind="stable"):
            other = self._keys[i]
            if other in key or key in other or parts & self._parts[i]:
                continue
            chosen.append(self.records[i])
            if len(chosen) == self.k:
                break
        return chosen[::-1]

    def save(self, model_dir: Path) -> None:
        data = {"k": self.k, "joiner": self.joiner, "records": [{"instruction": t, "output": a} for t, a in self.records]}
        atomic_write_bytes(model_dir / EXAMPLES_FILE, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")

    @classmethod
    def load(cls, model_dir: Path) -> ExampleIndex | None:
        """The model's index; None for a model trained without retrieved examples."""
        path = Path(model_dir) / EXAMPLES_FILE
        if not path.is_file():
            return None
        data = orjson.loads(path.read_bytes())
        return cls([(r["instruction"], r["output"]) for r in data["records"]], data["k"], data.get("joiner"))


def examples_of(index: ExampleIndex | None, text: str) -> list[Example]:
    """A request's examples: none for a model without an index."""
    return index.neighbours(text) if index is not None else []
