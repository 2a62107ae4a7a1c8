"""Out-of-scope scores compared offline on `intentlm eval` reports (bench/accuracy.md §4–6).

    .venv/bin/python bench/oos_scores.py CALIBRATION_REPORT REPORT [--weights TRAIN.json]

The model needs a vocabulary and typicality statistics (`intentlm train` writes them; `intentlm model
scope` adds them), so that the reports carry the served familiarity and typicality. For each score:
AUROC (in-scope against out-of-scope records of REPORT) and the out-of-scope recall, with its in-scope
cost, at the lowest score of a correct in-scope answer of CALIBRATION_REPORT (the conformal threshold of
`intentlm eval --calibrate` once there are 99 to 198 correct answers; an `oos()` answer of the model
itself counts as detected). Scores:

  confidence              the served confidence (calibrated intent-name probability)
  familiarity             the served familiarity (service.scope)
  confidence*familiarity  both
  typicality              the served typicality (service.typicality)
  typicality*familiarity  both

With ``--weights TRAIN.json`` (the model's training data), familiarity is also recomputed with other
weights of argument words (``service.scope.ARGUMENT_WEIGHT``, the served one, is 0.25).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.report import read_predictions  # noqa: E402
from service.intents import try_parse  # noqa: E402
from service.scope import DEFAULT_OOS_LABEL, Familiarity, build_vocabulary  # noqa: E402

WEIGHTS = (0.0, 0.25, 0.5, 1.0)

SCORES: dict[str, Callable[[dict], float]] = {
    "confidence": lambda r: r["confidence"],
    "familiarity": lambda r: r["familiarity"],
    "confidence*familiarity": lambda r: r["confidence"] * r["familiarity"],
    "typicality": lambda r: r["typicality"],
    "typicality*familiarity": lambda r: r["typicality"] * r["familiarity"],
}


def rows(report: str) -> list[dict]:
    out = read_predictions(report)
    if any(row["familiarity"] is None or row.get("typicality") is None for row in out):
        sys.exit(f"{report}: no familiarity or typicality in the predictions: run `intentlm model scope` first")
    for row in out:  # correctness before any threshold: the raw answer's first intent
        row["ok"] = row["raw"].split("(", 1)[0] == row["gold_intent"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("calibration")
    parser.add_argument("report")
    parser.add_argument("--weights", metavar="TRAIN.json", help="also score familiarity with other argument weights")
    args = parser.parse_args()
    cal, test = rows(args.calibration), rows(args.report)
    scores = dict(SCORES)
    if args.weights:
        records = [(r["instruction"], try_parse(r["output"]) or []) for r in json.loads(Path(args.weights).read_text())]
        vocabulary = build_vocabulary((text, calls) for text, calls in records
                                      if any(c.name != DEFAULT_OOS_LABEL for c in calls))
        for weight in WEIGHTS:
            familiarity = Familiarity(vocabulary, argument_weight=weight)
            for row in cal + test:
                row[f"w{weight}"] = familiarity.score(row["instruction"], try_parse(row["raw"].strip()) or [])
            scores[f"familiarity, weight {weight}"] = lambda r, key=f"w{weight}": r[key]
    inside = [r for r in test if r["gold_intent"] != "oos"]
    outside = [r for r in test if r["gold_intent"] == "oos"]
    for name, score in scores.items():
        threshold = min(score(r) for r in cal if r["ok"])
        recall = sum(r["raw"].startswith("oos(") or score(r) < threshold for r in outside) / len(outside)
        cost = sum(score(r) < threshold and r["ok"] for r in inside) / len(inside)
        pos, neg = [score(r) for r in inside], [score(r) for r in outside]
        auroc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
        print(f"{name:27s} AUROC {auroc:.3f}  threshold {threshold:.3f}: recall {100 * recall:.1f} %, "
              f"in-scope cost {100 * cost:.1f} points")


if __name__ == "__main__":
    main()
