"""What kind of argument errors a model makes, from an `intentlm eval` report (bench/accuracy.md §10).

    .venv/bin/python bench/argument_errors.py REPORT_DIR [--examples N]

Takes the single-call in-scope records whose raw answer (before any out-of-scope threshold) names the right intent
with other arguments, as the reference script's parameter figure counts them, and sorts each into one kind: an
argument left out (the answer's arguments are a strict subset of the gold ones), one added (a strict superset),
fewer or more words (the answer's words a strict subset or superset of the gold's), the same words split
differently, or other words. Prints the counts and N examples of each.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.report import read_predictions  # noqa: E402
from service.intents import parse  # noqa: E402
from service.scope import DEFAULT_OOS_LABEL  # noqa: E402


def kind(gold: set[str], answer: set[str]) -> str:
    gold_words, answer_words = set(" ".join(gold).split()), set(" ".join(answer).split())
    if answer < gold:
        return "argument left out"
    if answer > gold:
        return "argument added"
    if answer_words == gold_words:
        return "same words, split differently"
    if answer_words < gold_words:
        return "fewer words"
    if answer_words > gold_words:
        return "more words"
    return "other words"


def main() -> None:
    report = Path(sys.argv[1])
    examples = int(sys.argv[sys.argv.index("--examples") + 1]) if "--examples" in sys.argv else 3
    rows = read_predictions(report)
    kinds: dict[str, list[dict]] = defaultdict(list)
    right_intent = 0
    for row in rows:
        gold, answer = parse(row["gold"]), parse(row["raw"])
        if len(gold) != 1 or row["gold_intent"] == DEFAULT_OOS_LABEL or answer[0].name != gold[0].name:
            continue
        right_intent += 1
        if len(answer) == 1 and set(answer[0].args) == set(gold[0].args):
            continue
        answered = set(answer[0].args) if len(answer) == 1 else {f"{c.name}({','.join(c.args)})" for c in answer}
        kinds[kind(set(gold[0].args), answered)].append(row)
    print(f"{sum(map(len, kinds.values()))} wrong-argument answers of {right_intent} right-intent single-call answers")
    for name, members in sorted(kinds.items(), key=lambda item: -len(item[1])):
        print(f"  {len(members):3d}  {name}")
        for row in members[:examples]:
            print(f"         {row['instruction']!r}: gold {row['gold']}, answer {row['raw']}")


if __name__ == "__main__":
    main()
