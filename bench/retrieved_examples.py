"""Study (bench/accuracy.md §15): the most similar training records, with their answers, in the prompt.

Why: most parameter errors are argument-boundary choices that HWU64 annotates inconsistently ("this
room" → `room` in two records, `this room` in a third). A model that sees how the nearest training
utterances were labelled might follow their choice. This writes the data sets for that experiment; the
product is unchanged unless it wins.

    .venv/bin/python bench/retrieved_examples.py runs/split2/train.json runs/rag2 runs/split2/val.json --k 2

Writes OUT/train.json and OUT/NAME for each further file (neighbours from the training file), whose
instructions are

    Similar requests:
    <utterance> => <answer>        (k of them, most similar last)
    Request: <utterance>

Neighbours come from the training side only, by TF-IDF cosine over word unigrams and bigrams. A training
record never gets itself, a record with the same text, a record whose text contains or is contained in
its own, or a record sharing a half with it (split at the data's connective): the clean split's
validation records share no half with training ones, so training prompts must not either.
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from training.data.compose import find_joiner
from training.data.dataset import Record, load_dataset, same_text_key, save_dataset

_WORD = re.compile(r"[\w']+")


def _features(text: str) -> Counter[str]:
    words = _WORD.findall(text.lower())
    return Counter(words + [" ".join(pair) for pair in zip(words, words[1:])])


class Index:
    """TF-IDF vectors of the training instructions (L2-normalised, so a dot product is the cosine)."""

    def __init__(self, records: list[Record]) -> None:
        self.records = records
        self.joiner = find_joiner(records)
        counts = [_features(r.instruction) for r in records]
        df = Counter(f for c in counts for f in c)
        self.vocabulary = {f: i for i, f in enumerate(df)}
        self.idf = np.array([math.log(len(records) / df[f]) + 1 for f in self.vocabulary])
        self.matrix = np.stack([self._vector(c) for c in counts])

    def _vector(self, counts: Counter[str]) -> np.ndarray:
        vector = np.zeros(len(self.vocabulary))
        for feature, n in counts.items():
            if feature in self.vocabulary:
                vector[self.vocabulary[feature]] = n
        vector *= self.idf
        norm = np.linalg.norm(vector)
        return vector / norm if norm else vector

    def _parts(self, text: str) -> set[str]:
        """The text and, split at the data's connective, its halves (as same_text_key keys)."""
        key = same_text_key(text)
        joiner = same_text_key(self.joiner) if self.joiner else None
        return {key} | ({same_text_key(p) for p in key.split(joiner)} if joiner else set())

    def neighbours(self, text: str, k: int) -> list[Record]:
        key, parts = same_text_key(text), self._parts(text)
        scores = self.matrix @ self._vector(_features(text))
        chosen: list[Record] = []
        for i in np.argsort(-scores, kind="stable"):
            other = same_text_key(self.records[i].instruction)
            if other in key or key in other or parts & self._parts(other):
                continue
            chosen.append(self.records[i])
            if len(chosen) == k:
                break
        return chosen[::-1]


def with_examples(record: Record, index: Index, k: int) -> Record:
    lines = [f"{r.instruction} => {r.output}" for r in index.neighbours(record.instruction, k)]
    prompt = "Similar requests:\n" + "\n".join(lines) + f"\nRequest: {record.instruction}"
    return Record(instruction=prompt, output=record.output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("others", type=Path, nargs="*", help="files to score, written under OUT with their names")
    parser.add_argument("--k", type=int, default=2)
    args = parser.parse_args()
    train = load_dataset(args.train)
    index = Index(train)
    args.out.mkdir(parents=True, exist_ok=True)
    for source, name in [(args.train, "train.json"), *((p, p.name) for p in args.others)]:
        records = train if source == args.train else load_dataset(source)
        save_dataset(args.out / name, [with_examples(r, index, args.k) for r in records])
        print(f"wrote {args.out / name} ({len(records)} records)")


if __name__ == "__main__":
    main()
