"""Single-call and multi-call figures of an `intentlm eval` report, apart (bench/accuracy.md tables).

    .venv/bin/python bench/split_figures.py REPORT_DIR [REPORT_DIR ...]

The reference script's parameter figure compares the first gold call's arguments with the whole
prediction's, so a correct two-call answer counts as wrong: only its single-call part is comparable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def figures(report: Path) -> dict[str, dict[str, float]]:
    from eval.metrics import compute_metrics

    rows = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    out = {}
    for part, rows_part in (("single", [r for r in rows if ";" not in r["gold"]]),
                            ("multi", [r for r in rows if ";" in r["gold"]])):
        if rows_part:
            m = compute_metrics([r["gold"] for r in rows_part], [r["raw"] for r in rows_part])
            out[part] = {"records": len(rows_part), "intent": round(100 * m.reference.intent_accuracy, 1),
                         "param": round(100 * m.reference.parameter_accuracy, 1), "exact": round(100 * m.exact_match, 1)}
    return out


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(arg, json.dumps(figures(Path(arg))))
