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
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from training.data.dataset import Record


class SplitError(ValueError):
    """The split cannot be made as asked (ratio out of range, too few records)."""


@dataclass
class Split:
    train: list[Record]
    test: list[Record]


def stratum(record: Record) -> tuple[str, ...]:
    """The stratification key: the sorted set of the record's intent names."""
    return tuple(sorted({call.name for call in record.calls()}))


def split_records(records: Sequence[Record], test_ratio: float, *, seed: int = 42) -> Split:
    """Split records into train and test, stratified by ``stratum``; both keep the input order."""
    if not 0 < test_ratio < 1:
        raise SplitError(f"the test ratio must be between 0 and 1 (exclusive), not {test_ratio}")
    by_key: dict[tuple[str, ...], list[int]] = {}
    for index, record in enumerate(records):
        by_key.setdefault(stratum(record), []).append(index)
    groups = [by_key[key] for key in sorted(by_key) if len(by_key[key]) > 1]
    singles = [by_key[key][0] for key in sorted(by_key) if len(by_key[key]) == 1]
    # A pooled group has no combination to keep on the training side, so all of it may go to test.
    capacities = [len(group) - 1 for group in groups]
    if singles:
        groups.append(singles)
        capacities.append(len(singles))

    rng = random.Random(seed)
    for group in groups:
        rng.shuffle(group)
    quotas = [len(group) * test_ratio for group in groups]
    counts = [min(math.floor(q), cap) for q, cap in zip(quotas, capacities)]
    missing = round(len(records) * test_ratio) - sum(counts)
    tie_breaks = [rng.random() for _ in groups]
    by_remainder = sorted(range(len(groups)), key=lambda g: (counts[g] - quotas[g], tie_breaks[g]))
    for g in by_remainder:
        if missing <= 0:
            break
        if counts[g] < capacities[g]:
            counts[g] += 1
            missing -= 1

    test = {index for group, count in zip(groups, counts) for index in group[:count]}
    if not test or len(test) == len(records):
        raise SplitError(
            f"{len(records)} records cannot be split with a test ratio of {test_ratio}: "
            f"one side would be empty"
        )
    return Split(
        train=[r for i, r in enumerate(records) if i not in test],
        test=[r for i, r in enumerate(records) if i in test],
    )
