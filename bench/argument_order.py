"""How often do answers break the argument order of the training data? (bench/accuracy.md §25)

    .venv/bin/python bench/argument_order.py TRAIN_DATA REPORT_DIR...

The grammar lets each argument be any word span of the request. A stricter, positional grammar could also
require what the training data always does: no call repeats an argument, and a call's arguments occur in the
request in their order without overlapping. This prints, for TRAIN_DATA, how many calls with two or more
arguments break either rule, and for each eval report how many model answers (``raw``) do, in-scope and
out-of-scope, and how many of the out-of-scope ones the threshold rejected anyway. That bounds what such a
grammar could gain.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.report import read_predictions  # noqa: E402
from service.intents import _WORD, Call, try_parse  # noqa: E402
from service.scope import DEFAULT_OOS_LABEL  # noqa: E402
from training.data.dataset import load_dataset  # noqa: E402


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def in_order(instruction: str, call: Call) -> bool:
    """No argument repeated, and each one found (as whole words) after the end of the previous one."""
    if len(set(call.args)) < len(call.args):
        return False
    text, start = words(instruction), 0
    for arg in call.args:
        span = words(arg)
        at = next((i for i in range(start, len(text) - len(span) + 1) if text[i:i + len(span)] == span), None)
        if at is None:
            return False
        start = at + len(span)
    return True


def breaks_order(instruction: str, answer: str) -> bool:
    calls = try_parse(answer) or []
    return any(len(call.args) > 1 and not in_order(instruction, call) for call in calls)


def main() -> None:
    train = load_dataset(sys.argv[1])
    calls = [(r.instruction, call) for r in train for call in r.calls() if len(call.args) > 1]
    broken = sum(not in_order(text, call) for text, call in calls)
    print(f"{sys.argv[1]}: {broken} of {len(calls)} calls with two or more arguments break the order")
    oos = f"{DEFAULT_OOS_LABEL}("
    for report in sys.argv[2:]:
        rows = [r for r in read_predictions(report) if breaks_order(r["instruction"], r["raw"])]
        in_scope = [r for r in rows if not r["gold"].startswith(oos)]
        out_of_scope = [r for r in rows if r["gold"].startswith(oos)]
        rejected = sum(r["prediction"].startswith(oos) for r in out_of_scope)
        print(f"{report}: {len(in_scope)} in-scope answers break it ({sum(r['raw'] != r['gold'] for r in in_scope)}"
              f" wrong), {len(out_of_scope)} out-of-scope ones ({rejected} rejected by the threshold)")
        for r in in_scope:
            print(f"    {r['instruction']!r}: {r['raw']} (gold {r['gold']})")


if __name__ == "__main__":
    main()
