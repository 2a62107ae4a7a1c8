"""Stratified, seeded train/test splits (``intentlm data split``).

The accuracy work splits a validation set off the training data, so the split must keep every
intent's share on both sides and be reproducible from its seed. Records are stratified by the
sorted set of their intent names: a multi-intent record stratifies with its combination.

How small strata are handled (the smart-home data has 66 combinations of 2–4 records each):

* the test size is ``round(N * ratio)``, shared out over the strata by largest remainder, so that
  many small strata still give the test side its multi-intent records instead of each rounding
  down to zero;
* a stratum always keeps one record on the training side (an intent combination the model never
  saw in training says little about the rest of the data);
* combinations that occur once are pooled into one stratum, split like the others.

Composed multi-intent records stay on the side of the records they were composed from. HWU64's
two-intent records (and those of any data set built the same way) join two single-intent
utterances of the same file with a connective; split apart, the test side would ask for two-call
answers whose two halves the model was trained on, word for word and label for label, and measure
memory instead of generalisation (docs/decisions.md: 35 of the 38 halves of the validation
side's two-call records, 89.5 % two-call exact on validation against 68.3 % on the test file, which
its authors built from test utterances only). So a composed record and its parts (and the other
records composed from those parts) form one unit; these units go to one side whole, drawn at
random until the test side holds its share of their records. The other records are stratified as
above.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from service.dataset import Record, same_text_key
from service.errors import IntentlmError
from training.data.compose import find_joiner


class SplitError(IntentlmError, ValueError):
    """The split cannot be made as asked (ratio out of range, too few records)."""


@dataclass
class Split:
    train: list[Record]
    test: list[Record]


def stratum(record: Record) -> tuple[str, ...]:
    """The stratification key: the sorted set of the record's intent names."""
    return tuple(sorted({call.name for call in record.calls()}))


def composed_units(records: Sequence[Record]) -> list[list[int]]:
    """The indices of the records that must stay together: each multi-call record whose instruction joins
    single-call instructions of ``records`` (with the data's connective, training.data.compose.find_joiner),
    with those records, merged where they share one (instructions compared ignoring case and spacing)."""
    joiner = find_joiner(list(records))
    if joiner is None:
        return []
    single = {same_text_key(r.instruction): i for i, r in enumerate(records) if len(r.calls()) == 1}
    connective = same_text_key(joiner)
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, record in enumerate(records):
        if len(record.calls()) > 1:
            for part in (half.strip() for half in same_text_key(record.instruction).split(connective)):
                if part in single:
                    parent[root(single[part])] = root(i)
    units: dict[int, list[int]] = {}
    for i in range(len(records)):
        units.setdefault(root(i), []).append(i)
    return [unit for unit in units.values() if len(unit) > 1]


def split_records(records: Sequence[Record], test_ratio: float, *, seed: int = 42) -> Split:
    """Split records into train and test: composed records with their parts (``composed_units``), the rest
    stratified by ``stratum``; both sides keep the input order."""
    if not 0 < test_ratio < 1:
        raise SplitError(f"the test ratio must be between 0 and 1 (exclusive), not {test_ratio}")
    units = composed_units(records)
    test = _whole_units(units, test_ratio, random.Random(f"composed {seed}"))
    together = {i for unit in units for i in unit}
    rest = [i for i in range(len(records)) if i not in together]
    test |= _stratified(records, rest, test_ratio, round(len(records) * test_ratio) - len(test), random.Random(seed))
    if not test or len(test) == len(records):
        raise SplitError(
            f"{len(records)} records cannot be split with a test ratio of {test_ratio}: one side would be empty"
        )
    return Split(
        train=[r for i, r in enumerate(records) if i not in test],
        test=[r for i, r in enumerate(records) if i in test],
    )


def _whole_units(units: list[list[int]], test_ratio: float, rng: random.Random) -> set[int]:
    """Whole units, in random order, for the test side while they fit in its share of their records."""
    room = round(sum(map(len, units)) * test_ratio)
    test: set[int] = set()
    for unit in rng.sample(units, len(units)):
        if len(unit) <= room:
            test.update(unit)
            room -= len(unit)
    return test


def _stratified(
    records: Sequence[Record], indices: list[int], test_ratio: float, size: int, rng: random.Random
) -> set[int]:
    """``size`` of ``indices`` for the test side, stratified by ``stratum`` (the module's rules)."""
    by_key: dict[tuple[str, ...], list[int]] = {}
    for index in indices:
        by_key.setdefault(stratum(records[index]), []).append(index)
    groups = [by_key[key] for key in sorted(by_key) if len(by_key[key]) > 1]
    singles = [by_key[key][0] for key in sorted(by_key) if len(by_key[key]) == 1]
    # A pooled group has no combination to keep on the training side, so all of it may go to test.
    capacities = [len(group) - 1 for group in groups]
    if singles:
        groups.append(singles)
        capacities.append(len(singles))

    for group in groups:
        rng.shuffle(group)
    quotas = [len(group) * test_ratio for group in groups]
    counts = [min(math.floor(q), cap) for q, cap in zip(quotas, capacities)]
    missing = size - sum(counts)
    tie_breaks = [rng.random() for _ in groups]
    by_remainder = sorted(range(len(groups)), key=lambda g: (counts[g] - quotas[g], tie_breaks[g]))
    for g in by_remainder:
        if missing <= 0:
            break
        if counts[g] < capacities[g]:
            counts[g] += 1
            missing -= 1
    return {index for group, count in zip(groups, counts) for index in group[:count]}
