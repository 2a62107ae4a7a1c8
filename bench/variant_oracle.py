"""How far can choosing among trained variants go? (bench/accuracy.md §21)

    .venv/bin/python bench/variant_oracle.py REPORT_DIR REPORT_DIR [REPORT_DIR ...]

Each REPORT_DIR is an `intentlm eval` report of the same data (models of one recipe with other seeds or
knobs). Prints the split figures (bench/split_figures.py) of each, of their per-record majority vote
(an output ensemble; a tie keeps the first report's answer) and of the oracle that is right whenever any
of them is: the most that selecting, rescoring or ensembling these answers could reach.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval.report import read_predictions  # noqa: E402
from split_figures import split_figures  # noqa: E402


def majority(options: tuple[str, ...]) -> str:
    """The answer most runs gave; the first run's where none is given twice."""
    answer, votes = Counter(options).most_common(1)[0]
    return answer if votes > 1 else options[0]


def main(reports: list[Path]) -> None:
    answers: dict[str, list[str]] = {}
    golds: list[str] = []
    for report in reports:
        rows = read_predictions(report)
        if golds and [r["gold"] for r in rows] != golds:
            raise SystemExit(f"{report}: not the same records as {reports[0]}")
        golds = [r["gold"] for r in rows]
        answers[str(report)] = [r["raw"] for r in rows]
    for name, answer in answers.items():
        print(name, json.dumps(split_figures(golds, answer)))
    per_record = list(zip(*answers.values()))
    vote = [majority(options) for options in per_record]
    print("majority vote", json.dumps(split_figures(golds, vote)))
    oracle = [gold if gold in options else options[0] for gold, options in zip(golds, per_record)]
    print("oracle (any right)", json.dumps(split_figures(golds, oracle)))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main([Path(arg) for arg in sys.argv[1:]])
