"""Single-call and multi-call figures of an `intentlm eval` report, apart (the tables of docs/decisions.md).

    .venv/bin/python bench/split_figures.py REPORT_DIR [REPORT_DIR ...]

Prints one JSON line per report: for its single-call and its multi-call records, the records, the reference
script's intent and parameter accuracy, the exact match and the argument F1 (percent). bench/recipe_run.sh and
bench/classic_baseline.py print their figures with it.

The reference script's parameter figure compares the first gold call's arguments with the whole
prediction's, so a correct two-call answer counts as wrong: only its single-call part is comparable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.report import read_predictions


def by_call_count(golds: list[str], answers: list[str]) -> dict[str, tuple[int, Any]]:
    """``{"single"|"multi": (records, eval.metrics.Metrics)}``: the records with one gold call and those with more."""
    from eval.metrics import compute_metrics

    out = {}
    for part, multi in (("single", False), ("multi", True)):
        idx = [i for i, gold in enumerate(golds) if (";" in gold) == multi]
        if idx:
            out[part] = (len(idx), compute_metrics([golds[i] for i in idx], [answers[i] for i in idx]))
    return out


def split_figures(golds: list[str], answers: list[str]) -> dict[str, dict[str, float]]:
    """The figures (percent) of the single-call and the multi-call records."""
    return {
        part: {
            "records": n,
            "intent": round(100 * m.reference.intent_accuracy, 1),
            "param": round(100 * m.reference.parameter_accuracy, 1),
            "exact": round(100 * m.exact_match, 1),
            "arg_f1": None if m.argument_f1 is None else round(100 * m.argument_f1, 1),
        }
        for part, (n, m) in by_call_count(golds, answers).items()
    }


def figures(report: Path) -> dict[str, dict[str, float]]:
    rows = read_predictions(report)
    return split_figures([r["gold"] for r in rows], [r["raw"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, nargs="+", metavar="REPORT_DIR", help="`intentlm eval --report` folders")
    for report in parser.parse_args().reports:
        print(report, json.dumps(figures(report)))


if __name__ == "__main__":
    main()
