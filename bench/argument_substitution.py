"""Prototype of argument substitution (bench/accuracy.md §19): training records with one argument swapped for
another that the same intent has after the same word.

    .venv/bin/python bench/argument_substitution.py TRAIN OUT_DIR [VAL] [--share 0.3] [--seed 42]

Most argument errors are about phrases the training data labels rarely (§17): "bring up all the runner lights"
leaves ``runner`` out because no training request turns up the runner lights. Swapping arguments between
requests of one intent that share the word before them ("the kitchen lights" → "the runner lights", "by the
beatles" → "by adele") shows the model that the context, not the phrase, makes an argument (slot substitution,
a standard augmentation for slot filling with little data). Writes OUT_DIR/train.json (TRAIN plus ``--share``
× its records of substituted ones) and copies VAL to OUT_DIR/val.json, for
``SPLIT=OUT_DIR bash bench/recipe_run.sh``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.examples import same_text_key  # noqa: E402
from service.intents import Call, format_calls, parse  # noqa: E402
from training.data.dataset import Record, load_dataset, save_dataset  # noqa: E402


def position(words: list[str], arg: list[str]) -> int | None:
    """Where ``arg`` first occurs in ``words`` as whole words."""
    for i in range(len(words) - len(arg) + 1):
        if words[i:i + len(arg)] == arg:
            return i
    return None


def substituted(records: list[Record], count: int, seed: int) -> list[Record]:
    """``count`` new single-call records, each a training record with one argument replaced by another value
    that the same intent has after the same word (or at the start)."""
    singles = [(r.instruction.split(), parse(r.output)[0]) for r in records if len(parse(r.output)) == 1]
    pools: dict[tuple[str, str], set[str]] = defaultdict(set)
    slots = []
    for words, call in singles:
        for k, arg in enumerate(call.args):
            at = position(words, arg.split())
            if at is not None:
                key = (call.name, words[at - 1] if at else "<s>")
                pools[key].add(arg)
                slots.append((words, call, k, at, key))
    rng = random.Random(seed)
    rng.shuffle(slots)
    # Round-robin over the intents, so that intents with more arguments do not get more records.
    by_intent = defaultdict(list)
    for slot in slots:
        by_intent[slot[1].name].append(slot)
    queues = [by_intent[name] for name in sorted(by_intent)]
    interleaved = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)]
    seen = {same_text_key(r.instruction) for r in records}
    out = []
    for words, call, k, at, key in interleaved:
        if len(out) == count:
            break
        arg = call.args[k]
        choices = sorted(pools[key] - {arg})
        if not choices:
            continue
        value = rng.choice(choices)
        if value in call.args:
            continue
        text = " ".join(words[:at] + value.split() + words[at + len(arg.split()):])
        if same_text_key(text) in seen:
            continue
        seen.add(same_text_key(text))
        args = call.args[:k] + (value,) + call.args[k + 1:]
        out.append(Record(instruction=text, output=format_calls([Call(call.name, args)])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("val", type=Path, nargs="?")
    parser.add_argument("--share", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    records = load_dataset(args.train)
    new = substituted(records, round(args.share * len(records)), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    save_dataset(args.out / "train.json", records + new)
    if args.val:
        shutil.copyfile(args.val, args.out / "val.json")
    print(f"{args.out / 'train.json'}: {len(records)} records + {len(new)} substituted")
    for record in new[:10]:
        print(f"  {record.instruction!r} -> {record.output}")


if __name__ == "__main__":
    main()
