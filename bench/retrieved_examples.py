"""The first study of retrieved examples (bench/accuracy.md §15), before `--retrieved_examples` existed.

    .venv/bin/python bench/retrieved_examples.py runs/split2/train.json runs/rag2 runs/split2/val.json --k 2

Writes OUT/train.json and OUT/NAME for each further file, whose instructions already hold their examples
(service.examples.ExampleIndex over the training file, rendered by service.prompt.with_examples), so that a
plain `intentlm train` / `intentlm eval` trains and scores prompts with examples. `--retrieved_examples k`
does the same inside the product, with one difference: the argument spans that constrained decoding allows
come from the request alone, not from the examples too.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from service.examples import ExampleIndex
from service.prompt import with_examples
from training.data.compose import find_joiner
from training.data.dataset import Record, load_dataset, save_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("others", type=Path, nargs="*", help="files to score, written under OUT with their names")
    parser.add_argument("--k", type=int, default=2)
    args = parser.parse_args()
    train = load_dataset(args.train)
    index = ExampleIndex([(r.instruction, r.output) for r in train], args.k, find_joiner(train))
    args.out.mkdir(parents=True, exist_ok=True)
    for source, name in [(args.train, "train.json"), *((p, p.name) for p in args.others)]:
        records = train if source == args.train else load_dataset(source)
        save_dataset(args.out / name, [Record(with_examples(r.instruction, index.neighbours(r.instruction)), r.output)
                                       for r in records])
        print(f"wrote {args.out / name} ({len(records)} records)")


if __name__ == "__main__":
    main()
