"""How often a data file's argument labels go against the training file's own labelling conventions
(bench/accuracy.md §17): an estimate of how much parameter accuracy annotation noise leaves to win.

    .venv/bin/python bench/label_conventions.py TRAIN FILE [REPORT_DIR ...]

A *convention* is a phrase and an intent for which the training requests of that intent that contain the
phrase (as whole words, not inside a longer argument) agree, by a strict majority of at least ``MIN_VOTES``
votes, on whether the phrase is an argument ("the beatles" → ``the beatles``) or not.
The phrases are the arguments the training file gives that intent. A single-call record of FILE *breaks* a
convention when its label of one of those phrases is the minority's: a model that learnt the training file's
conventions perfectly still gets its arguments wrong, unless it learnt the exception too.

Training records that are two-call compositions count as their halves (split at the data's connective, the
first half with the first call). A record of FILE that is itself in TRAIN votes on nothing about itself.

With report directories (``intentlm eval --report``) of models scored on FILE, it also prints how the
models' wrong argument lists divide between records that break a convention and those that do not.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.report import read_predictions  # noqa: E402
from service.examples import halves, same_text_key  # noqa: E402
from service.intents import parse, text_spans  # noqa: E402
from training.data.compose import find_joiner  # noqa: E402
from training.data.dataset import load_dataset  # noqa: E402

MIN_VOTES = 2
MAX_WORDS = 6

Labelled = tuple[str, str, frozenset[str]]  # (instruction key, intent, arguments)


def single_calls(path: Path) -> list[Labelled]:
    """A file's single-call requests: its single-call records, and the halves of its two-call records."""
    records = load_dataset(path)
    joiner = find_joiner(records)
    out = []
    for record in records:
        calls = parse(record.output)
        parts = [same_text_key(record.instruction)] if len(calls) == 1 else (
            halves(same_text_key(record.instruction), same_text_key(joiner)) if joiner else [])
        if len(parts) == len(calls):
            out += [(part, call.name, frozenset(call.args)) for part, call in zip(parts, calls)]
    return out


def phrases(text: str, args: frozenset[str]) -> set[str]:
    """The word spans of ``text`` that are not inside a longer argument of ``args``: a span inside one is
    part of another phrase's label ("vacuum" in ``robot vacuum cleaner``), not a vote on its own."""
    return {span for span in text_spans(text, max_words=MAX_WORDS)
            if not any(span != arg and f" {span} " in f" {arg} " for arg in args)}


class Conventions:
    """The training side's votes: for each (intent, phrase), which requests label it an argument and which not."""

    def __init__(self, reference: list[Labelled]) -> None:
        arguments = defaultdict(set)
        for _, intent, args in reference:
            arguments[intent] |= args
        self.votes: dict[tuple[str, str], Counter[tuple[str, bool]]] = defaultdict(Counter)
        for text, intent, args in reference:
            for phrase in phrases(text, args) & arguments[intent]:
                self.votes[intent, phrase][text, phrase in args] += 1

    def broken(self, text: str, intent: str, args: frozenset[str]) -> list[str]:
        """The phrases of ``text`` whose label in ``args`` is the minority's among the other requests."""
        out = []
        for phrase in sorted(phrases(text, args)):
            votes = Counter()
            for (voter, label), n in self.votes.get((intent, phrase), Counter()).items():
                if voter != text:
                    votes[label] += n
            total = votes[True] + votes[False]
            if total < MIN_VOTES:
                continue
            majority = votes[True] > total / 2
            if votes[majority] > total / 2 and (phrase in args) != majority:
                out.append(f"{phrase!r} is {'' if majority else 'not '}an argument in {votes[majority]} of {total}")
        return out


def _kind(conventions: Conventions, breaking: dict[str, list[str]], row: dict) -> str:
    """Why a wrong argument list is wrong: the label breaks a convention, the answer does, or neither has one."""
    if row["instruction"] in breaking:
        return "on records whose label breaks a convention"
    call = parse(row["raw"])[0]
    if conventions.broken(same_text_key(row["instruction"]), call.name, frozenset(call.args)):
        return "where the answer breaks a convention the label keeps"
    return "without a convention either way (new phrases)"


def main(train: Path, data: Path, reports: list[Path]) -> None:
    conventions = Conventions(single_calls(train))
    records = [r for r in load_dataset(data) if len(parse(r.output)) == 1]
    breaking = {}
    for record in records:
        call = parse(record.output)[0]
        broken = conventions.broken(same_text_key(record.instruction), call.name, frozenset(call.args))
        if broken:
            breaking[record.instruction] = broken
    print(f"{data}: {len(breaking)} of {len(records)} single-call records ({len(breaking) / len(records):.1%})"
          f" break a convention of {train}")
    for report in reports:
        rows = read_predictions(report)
        wrong = [r for r in rows if ";" not in r["gold"] and r["gold"] != "oos()" and r["reference_intent_correct"]
                 and not r["reference_params_correct"]]
        kinds = Counter(_kind(conventions, breaking, r) for r in wrong)
        print(f"{report}: {len(wrong)} wrong argument lists with the right intent: "
              + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()))
    for text, broken in list(breaking.items())[:12]:
        print(f"  {text!r}: {'; '.join(broken)}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
