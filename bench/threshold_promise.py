"""Does the out-of-scope threshold that ``intentlm train`` picks keep its promise on data nobody here trained on?

The promise (``eval.calibration.choose_threshold``, ``training.trainer``): the typicality threshold written into
a model's card rejects a new correct in-scope answer with probability at most 1 %. This trains the default recipe on
two public data sets and counts, on each one's own test split, the correct in-scope answers the card's rule rejects:

* SNIPS (sonos/nlu-benchmark, ``2017-06-custom-intent-engines``, CC0): 7 intents with slots; train from each
  intent's ``train_*_full.json``, validation from other rows of it (40 per intent), test on its ``validate_*.json``
  (100 per intent, 700 rows);
* CLINC150 (clinc/oos-eval, ``data/data_full.json``, CC BY 3.0): the 15 intents of one domain, no arguments;
  validation and test from their val and test rows (20 and 30 per intent), and its out-of-scope test rows for the
  recall.

Then the same with the threshold the product's calibration picks on the validation split, which the model did not
train on (``intentlm eval --calibrate``, on the bench's own model directory; the card as trained is kept beside it
as ``intentlm.train.json`` and restored on the next run).

Neither is committed: pass a checkout of each repository. The records are written as the smart-home data is
(``data/smarthome/build_smarthome.py``: lower-cased, whitespace collapsed; SNIPS slot values in utterance order,
a comma inside one becomes a space; intent names in snake case)::

    .venv/bin/python bench/threshold_promise.py --snips PATH/nlu-benchmark --clinc PATH/oos-eval --out runs/promise

Each data set trains for ~10 minutes on the 2-core CPU on ``--train-records`` records (default 490, as many per
intent). ``--threshold-folds K`` trains with the knob ``threshold_folds`` K (0: the threshold from the model's
cross-fitted scores; K >= 2: from K more fine-tunes, each without one fold, about K times as long) into
``model_folds_K``; without it the knob keeps its default (auto: 5 folds for these data sets' 32-70 records per
intent where under 50).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INTENTLM = REPO / ".venv" / "bin" / "intentlm"
SNIPS_INTENTS = (
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
)
SEED = 42
VALIDATION_PER_INTENT = 40


def clean(text: str) -> str:
    """Lower-cased, whitespace collapsed, as the smart-home records."""
    return " ".join(text.lower().split())


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def snips_records(root: Path, intent: str, split: str) -> list[dict[str, str]]:
    """One SNIPS intent's records: ``split`` is ``train`` (the ``_full`` file) or ``validate`` (its test rows)."""
    name = f"train_{intent}_full.json" if split == "train" else f"validate_{intent}.json"
    path = root / "2017-06-custom-intent-engines" / intent / name
    # errors="replace": train_PlayMusic_full.json spells one emoji as UTF-8-encoded surrogates, which are no UTF-8
    rows = json.loads(path.read_bytes().decode("utf-8", errors="replace"))[intent]
    records = []
    for row in rows:
        utterance = clean("".join(part["text"] for part in row["data"]))
        values = [clean(part["text"]).replace(",", " ") for part in row["data"] if part.get("entity")]
        values = [" ".join(v.split()) for v in values if v.strip(" ,();")]
        if all(re.fullmatch(r"[^,();]+", v) for v in values):
            records.append({"instruction": utterance, "output": f"{snake(intent)}({','.join(values)})"})
    return records


def build_snips(root: Path, out: Path, records: int) -> None:
    per_intent = records // len(SNIPS_INTENTS)
    rng = random.Random(SEED)
    train, validation, test = [], [], []
    for intent in SNIPS_INTENTS:
        rows = snips_records(root, intent, "train")
        rng.shuffle(rows)
        train += rows[:per_intent]
        validation += rows[per_intent : per_intent + VALIDATION_PER_INTENT]
        test += snips_records(root, intent, "validate")
    rng.shuffle(train)
    write(out, train=train, validation=validation, test=test)


def build_clinc(root: Path, out: Path, train_records: int, domain: str) -> None:
    data = json.loads((root / "data" / "data_full.json").read_text())
    intents = set(json.loads((root / "data" / "domains.json").read_text())[domain])
    per_intent = train_records // len(intents)
    rng = random.Random(SEED)

    def records(split: str) -> list[dict[str, str]]:
        return [{"instruction": clean(t), "output": f"{i}()"} for t, i in data[split] if i in intents]

    train, pool = [], records("train")
    for intent in sorted(intents):
        rows = [r for r in pool if r["output"] == f"{intent}()"]
        rng.shuffle(rows)
        train += rows[:per_intent]
    rng.shuffle(train)
    oos = [{"instruction": clean(t), "output": "oos()"} for t, _ in data["oos_test"]]
    write(out, train=train, validation=records("val"), test=records("test"), oos_test=oos)


def write(out: Path, **files: list[dict[str, str]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        (out / f"{name}.json").write_text(json.dumps(records, indent=1))


def run(*args: str) -> None:
    print("$ intentlm", " ".join(args), flush=True)
    subprocess.run([str(INTENTLM), *args], check=True, cwd=REPO)


def promise(work: Path, threshold_folds: int | None = None) -> dict[str, dict[str, float | int]]:
    """Train (unless done), then count what the card's rule does to the correct in-scope test answers: as trained,
    and once calibrated on the validation split."""
    suffix = "" if threshold_folds is None else f"_folds_{threshold_folds}"
    model = work / f"model{suffix}"
    trained_card = model / "intentlm.train.json"
    if not (model / "intentlm.json").exists():
        folds = [] if threshold_folds is None else ["--threshold_folds", str(threshold_folds)]
        run("train", "--data", str(work / "train.json"), "--output", str(model), *folds)
    if trained_card.exists():
        shutil.copyfile(trained_card, model / "intentlm.json")
    else:
        shutil.copyfile(model / "intentlm.json", trained_card)
    figures = {"as trained": measure(work, model, f"trained{suffix}")}
    run("eval", "--model", str(model), "--data", str(work / "validation.json"), "--calibrate")
    figures["calibrated on validation"] = measure(work, model, f"calibrated{suffix}")
    return figures


def measure(work: Path, model: Path, name: str) -> dict[str, float | int]:
    """The test split's correct in-scope answers (before the out-of-scope rule) and how many of them the card's rule
    rejected; the out-of-scope recall where the data has out-of-scope test rows."""
    card = json.loads((model / "intentlm.json").read_text())
    rows = evaluate(model, work / "test.json", work / f"eval_{name}")
    correct = [r for r in rows if r["raw"].partition("(")[0] == r["gold_intent"]]
    rejected = [r for r in correct if r["pred_intent"] == "oos"]
    figures: dict[str, float | int] = {
        "test": len(rows),
        "correct_before_rule": len(correct),
        "rejected": len(rejected),
        "rejected_share": len(rejected) / len(correct),
        "typicality_threshold": card.get("typicality_threshold") or 0.0,
        "oos_threshold": card.get("oos_threshold") or 0.0,
    }
    if (work / "oos_test.json").exists():
        oos = evaluate(model, work / "oos_test.json", work / f"eval_oos_{name}")
        figures["oos_recall"] = sum(r["pred_intent"] == "oos" for r in oos) / len(oos)
    return figures


def evaluate(model: Path, data: Path, report: Path) -> list[dict]:
    run("eval", "--model", str(model), "--data", str(data), "--report", str(report))
    return [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snips", type=Path, help="a checkout of sonos/nlu-benchmark")
    parser.add_argument("--clinc", type=Path, help="a checkout of clinc/oos-eval")
    parser.add_argument("--clinc-domain", default="home", help="the CLINC150 domain whose 15 intents are used")
    parser.add_argument("--train-records", type=int, default=490, help="training records, as many per intent")
    parser.add_argument("--threshold-folds", type=int, help="train with --threshold_folds K (default: auto)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "promise")
    args = parser.parse_args()
    if not (args.snips or args.clinc):
        parser.error("pass --snips and/or --clinc")
    results = {}
    if args.snips:
        build_snips(args.snips, args.out / "snips", args.train_records)
        results["snips"] = promise(args.out / "snips", args.threshold_folds)
    if args.clinc:
        build_clinc(args.clinc, args.out / "clinc", args.train_records, args.clinc_domain)
        results[f"clinc150 {args.clinc_domain}"] = promise(args.out / "clinc", args.threshold_folds)
    suffix = "" if args.threshold_folds is None else f"_folds_{args.threshold_folds}"
    (args.out / f"results{suffix}.json").write_text(json.dumps(results, indent=1))
    print("| data | rule | correct in-scope test answers | rejected by the rule | typicality threshold | oos recall |")
    print("|---|---|---|---|---|---|")
    for name, rules in results.items():
        for rule, f in rules.items():
            recall = f"{f['oos_recall']:.1%}" if "oos_recall" in f else "—"
            print(
                f"| {name} | {rule} | {f['correct_before_rule']} of {f['test']} | {f['rejected']} "
                f"({f['rejected_share']:.2%}) | {f['typicality_threshold']:.4f} | {recall} |"
            )


if __name__ == "__main__":
    sys.exit(main())
