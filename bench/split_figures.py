"""Single-call and multi-call figures of an `intentlm eval` report, apart (bench/accuracy.md tables).

    .venv/bin/python bench/split_figures.py REPORT_DIR [REPORT_DIR ...]

The reference script's parameter figure compares the first gold call's arguments with the whole
prediction's, so a correct two-call answer counts as wrong: only its single-call part is comparable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.report import read_predictions  # noqa: E402


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
    """The accuracy.md tables' figures (percent) of the single-call and the multi-call records."""
    return {part: {"records": n, "intent": round(100 * m.reference.intent_accuracy, 1),
                   "param": round(100 * m.reference.parameter_accuracy, 1), "exact": round(100 * m.exact_match, 1),
                   "arg_f1": round(100 * m.argument_f1, 1)}
            for part, (n, m) in by_call_count(golds, answers).items()}


def figures(report: Path) -> dict[str, dict[str, float]]:
    rows = read_predictions(report)
    return split_figures([r["gold"] for r in rows], [r["raw"] for r in rows])


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(arg, json.dumps(figures(Path(arg))))
