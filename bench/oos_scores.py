"""Out-of-scope scores compared offline on an `intentlm eval` report (bench/accuracy.md §4).

    .venv/bin/python bench/oos_scores.py TRAIN.json CALIBRATION_REPORT REPORT

For each score: AUROC (in-scope against out-of-scope records of REPORT) and the out-of-scope recall
at the threshold that keeps 99 % of the correct in-scope answers of CALIBRATION_REPORT (an `oos()`
answer of the model itself counts as detected). Scores:

  conf        the served confidence (calibrated intent-name probability)
  known       1 - novelty: the share of the request's words outside its predicted arguments that
              the training instructions use outside their arguments (argument words are expected
              to be new: names, places, times)
  conf*known  both
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service.intents import IntentParseError, parse  # noqa: E402

_WORD = re.compile(r"[a-z0-9']+")


def argument_words(answer: str) -> set[str]:
    try:
        calls = parse(answer)
    except IntentParseError:
        return set()
    return {w for call in calls for arg in call.args for w in _WORD.findall(arg.lower())}


def rows(report: str) -> list[dict]:
    out = [json.loads(line) for line in (Path(report) / "predictions.jsonl").read_text().splitlines()]
    for row in out:  # correctness before any threshold: the raw answer's first intent
        row["ok"] = row["raw"].split("(", 1)[0] == row["gold_intent"]
    return out


def main(train: str, calibration: str, report: str) -> None:
    vocabulary: set[str] = set()
    for record in json.loads(Path(train).read_text()):
        vocabulary |= set(_WORD.findall(record["instruction"].lower())) - argument_words(record["output"])

    cal, test = rows(calibration), rows(report)
    for row in cal + test:
        arguments = argument_words(row["raw"])
        words = [w for w in _WORD.findall(row["instruction"].lower()) if w not in arguments]
        row["known"] = sum(w in vocabulary for w in words) / len(words) if words else 1.0

    scores: dict[str, Callable[[dict], float]] = {
        "conf": lambda r: r["confidence"], "known": lambda r: r["known"],
        "conf*known": lambda r: r["confidence"] * r["known"]}
    inside = [r for r in test if r["gold_intent"] != "oos"]
    outside = [r for r in test if r["gold_intent"] == "oos"]
    for name, score in scores.items():
        correct = sorted(score(r) for r in cal if r["ok"])
        threshold = correct[math.floor(0.01 * len(correct))]
        recall = sum(r["raw"].startswith("oos(") or score(r) < threshold for r in outside) / len(outside)
        cost = sum(score(r) < threshold and r["ok"] for r in inside) / len(inside)
        pos, neg = [score(r) for r in inside], [score(r) for r in outside]
        auroc = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))
        print(f"{name:11s} AUROC {auroc:.3f}  threshold {threshold:.3f}: recall {100 * recall:.1f} %, "
              f"in-scope cost {100 * cost:.1f} points")


if __name__ == "__main__":
    main(*sys.argv[1:])
