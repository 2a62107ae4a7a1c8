"""A classic NLU pipeline on the same data and machine: the comparison issue 7's goal names.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/classic_baseline.py TRAIN VAL --grid            # choose the knobs on validation
    .venv/bin/python bench/classic_baseline.py TRAIN EVAL [EVAL ...] [--C C --c1 C1 --c2 C2] [--report DIR]

The pipeline Rasa and Snips NLU made standard for small intent data, without a language model:

- **Several intents**: the request is split at the connective the data's multi-call records share
  (the product's own ``find_joiner``: ", and then " here), and each part is one call. Every
  multi-call training record splits into as many parts as it has calls, so the split is perfect on
  this data: a best case for the pipeline. (Rasa's combined labels, ``alarm_set+audio_volume_mute``,
  were tried first: they cannot name a pair of intents the training data lacks, and answered none
  of the 18 two-call validation records right, with or without composed records: docs/decisions.md,
  "A classic NLU pipeline".)
- **Intent** of each part: TF-IDF over word 1-2-grams and character 2-5-grams, then logistic regression.
- **Arguments** of each part: a linear-chain CRF (python-crfsuite) tagging each word ``B``/``I``/``O``
  (the data format has no slot types, so the tag says only where an argument is), with the usual
  lexical features: the word, its affixes and shape, two words either side, and the intent (gold
  while training, predicted when answering).
- **Out-of-scope**: the classifier's top probability (the maximum-softmax-probability detector; the
  lowest over the parts), thresholded by ``eval.calibration.choose_threshold`` on cross-fitted training
  probabilities: the same rule and data as the product's training-only threshold (docs/decisions.md, "The
  typicality threshold from cross-fitted training scores").

Answers are written in the data format and scored by ``eval.metrics`` as `intentlm eval` scores the
model; ``--report DIR`` writes them as ``predictions.jsonl`` rows (``prediction`` as served, ``raw`` before
the threshold) for the other bench scripts.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pycrfsuite
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline, make_union

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from split_figures import split_figures

from eval.calibration import choose_threshold
from eval.metrics import compute_metrics, reference_record
from service.dataset import Record, load_dataset
from service.intents import Call, format_calls
from training.data.compose import find_joiner

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
OOS = "oos"


def tokens(text: str) -> list[re.Match[str]]:
    return list(WORD.finditer(text))


def single_calls(records: list[Record], joiner: str | None) -> list[tuple[str, Call]]:
    """``(text, call)`` per call: multi-call records split at the joiner (skipped if the parts and calls differ)."""
    out = []
    for record in records:
        calls = record.calls()
        parts = record.instruction.split(joiner) if joiner and len(calls) > 1 else [record.instruction]
        if len(parts) == len(calls):
            out.extend(zip(parts, calls))
    return out


def word_tags(text: str, call: Call) -> list[str] | None:
    """``B``/``I``/``O`` per token, arguments found left to right; None if one is not a whole-word span."""
    words = tokens(text)
    tags = ["O"] * len(words)
    cursor = 0
    for arg in call.args:
        pattern = re.compile(rf"(?<!\w){re.escape(arg)}(?!\w)")
        found = pattern.search(text, cursor) or pattern.search(text)
        if found is None:
            return None
        inside = [i for i, w in enumerate(words) if found.start() <= w.start() and w.end() <= found.end()]
        if not inside or words[inside[0]].start() != found.start() or words[inside[-1]].end() != found.end():
            return None
        for n, i in enumerate(inside):
            tags[i] = "B" if n == 0 else "I"
        cursor = found.end()
    return tags


def _shape(word: str) -> str:
    return re.sub(r"(.)\1+", r"\1", re.sub(r"\d", "9", re.sub(r"[a-z]", "a", word.lower())))


def word_features(text: str, intent: str) -> list[list[str]]:
    """The CRF's features of each token (crfsuite takes binary features as strings)."""
    words = [m.group(0).lower() for m in tokens(text)]
    out = []
    for i, w in enumerate(words):
        near = {
            d: words[i + d] if 0 <= i + d < len(words) else ("<s>" if i + d < 0 else "</s>") for d in (-2, -1, 1, 2)
        }
        out.append(
            [
                f"w={w}",
                f"suf3={w[-3:]}",
                f"suf2={w[-2:]}",
                f"pre3={w[:3]}",
                f"shape={_shape(w)}",
                f"w-1={near[-1]}",
                f"w-2={near[-2]}",
                f"w+1={near[1]}",
                f"w+2={near[2]}",
                f"w-1|w={near[-1]}|{w}",
                f"w|w+1={w}|{near[1]}",
                f"intent={intent}",
                f"intent|w={intent}|{w}",
            ]
        )
    return out


def arguments(text: str, tags: list[str]) -> tuple[str, ...]:
    """The tagged arguments, each as written in the text (inner spacing kept)."""
    args = []
    span: tuple[int, int] | None = None
    for w, tag in itertools.chain(zip(tokens(text), tags), [(None, "O")]):
        if span and tag != "I":
            args.append(text[span[0] : span[1]])
            span = None
        if w is not None and tag != "O":
            span = (w.start(), w.end()) if span is None else (span[0], w.end())
    return tuple(args)


def intent_classifier(c: float) -> Pipeline:
    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    )
    return make_pipeline(features, LogisticRegression(C=c, max_iter=5000))


class ClassicNLU:
    """The fitted pipeline: ``predict`` returns the answer and the classifier's top probability per request."""

    def __init__(self, records: list[Record], *, c: float, c1: float, c2: float, model_path: Path) -> None:
        self.joiner = find_joiner(records)
        parts = single_calls(records, self.joiner)
        self.classifier = intent_classifier(c).fit([text for text, _ in parts], [call.name for _, call in parts])
        trainer = pycrfsuite.Trainer(verbose=False)
        self.skipped = 0
        for text, call in parts:
            tags = word_tags(text, call)
            if tags is None:
                self.skipped += 1
                continue
            trainer.append(word_features(text, call.name), tags)
        trainer.set_params({"c1": c1, "c2": c2, "max_iterations": 200, "feature.possible_transitions": True})
        trainer.train(str(model_path))
        self.tagger = pycrfsuite.Tagger()
        self.tagger.open(str(model_path))

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        parts = [text.split(self.joiner) if self.joiner else [text] for text in texts]
        flat = [part for request in parts for part in request]
        probs = self.classifier.predict_proba(flat)
        names = self.classifier.classes_[probs.argmax(axis=1)]
        calls = [
            Call(name, arguments(part, self.tagger.tag(word_features(part, name)))) for part, name in zip(flat, names)
        ]
        answers, top, i = [], [], 0
        for request in parts:
            answers.append(format_calls(calls[i : i + len(request)]))
            top.append(float(probs[i : i + len(request)].max(axis=1).min()))
            i += len(request)
        return answers, top


def training_threshold(records: list[Record], c: float, folds: int = 5, seed: int = 42) -> float:
    """The out-of-scope threshold from cross-fitted training probabilities (intent right or not), by the rule
    of the product's training-only threshold."""
    parts = single_calls(records, find_joiner(records))
    texts = np.array([text for text, _ in parts])
    labels = np.array([call.name for _, call in parts])
    top, right = np.zeros(len(parts)), np.zeros(len(parts), dtype=bool)
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(texts, labels):
        clf = intent_classifier(c).fit(texts[fit], labels[fit])
        probs = clf.predict_proba(texts[held])
        top[held] = probs.max(axis=1)
        right[held] = clf.classes_[probs.argmax(axis=1)] == labels[held]
    return choose_threshold(top.tolist(), right.tolist())


def evaluate(model: ClassicNLU, path: Path, threshold: float, report: Path | None) -> dict[str, object]:
    records = load_dataset(path)
    started = time.perf_counter()
    answers, top = model.predict([r.instruction for r in records])
    per_request_ms = 1000 * (time.perf_counter() - started) / len(records)
    served = [a if p >= threshold else f"{OOS}()" for a, p in zip(answers, top)]
    golds = [r.output for r in records]
    inside = [i for i, g in enumerate(golds) if not g.startswith(f"{OOS}(")]
    result: dict[str, object] = {
        "data": str(path),
        "ms_per_request": round(per_request_ms, 2),
        **split_figures([golds[i] for i in inside], [served[i] for i in inside]),
    }
    arg = compute_metrics([golds[i] for i in inside], [served[i] for i in inside])
    result["arg_prf"] = [
        None if x is None else round(100 * x, 1) for x in (arg.argument_precision, arg.argument_recall, arg.argument_f1)
    ]
    oos = compute_metrics(golds, served).out_of_scope
    if oos is not None:
        before = sum(reference_record(golds[i], answers[i])[0] for i in inside)
        result["oos"] = {
            "recall": round(100 * oos.recall, 1),
            "in_scope_intent": round(100 * oos.in_scope_accuracy, 1),
            "in_scope_intent_before": round(100 * before / len(inside), 1),
            "in_scope_rejected": round(100 * oos.in_scope_rejected, 1),
        }
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        rows = [
            {"instruction": r.instruction, "gold": r.output, "prediction": s, "raw": a, "confidence": p}
            for r, s, a, p in zip(records, served, answers, top)
        ]
        (report / "predictions.jsonl").write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path)
    parser.add_argument("eval", type=Path, nargs="+")
    parser.add_argument("--C", type=float, default=10.0, help="inverse regularisation of the intent classifier")
    parser.add_argument("--c1", type=float, default=0.1, help="the CRF's L1 penalty")
    parser.add_argument("--c2", type=float, default=0.01, help="the CRF's L2 penalty")
    parser.add_argument("--grid", action="store_true", help="score every knob combination on the (one) EVAL file")
    parser.add_argument("--report", type=Path, help="write predictions.jsonl of each EVAL file under this folder")
    parser.add_argument("--work", type=Path, default=Path("runs/classic"), help="where the CRF model file goes")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    records = load_dataset(args.train)

    if args.grid:
        for c, c1, c2 in itertools.product((1.0, 10.0, 100.0), (0.0, 0.05, 0.2, 0.5), (0.001, 0.01, 0.1)):
            model = ClassicNLU(records, c=c, c1=c1, c2=c2, model_path=args.work / "grid.crfsuite")
            figures = evaluate(model, args.eval[0], 0.0, None)
            parts = [figures[p] for p in ("single", "multi") if p in figures]
            exact = sum(f["exact"] * f["records"] for f in parts) / sum(f["records"] for f in parts)
            print(
                orjson.dumps(
                    {
                        "C": c,
                        "c1": c1,
                        "c2": c2,
                        "exact_all": round(exact, 1),
                        **{k: figures[k] for k in ("single", "multi", "arg_prf") if k in figures},
                    }
                ).decode(),
                flush=True,
            )
        return

    started = time.perf_counter()
    model = ClassicNLU(records, c=args.C, c1=args.c1, c2=args.c2, model_path=args.work / "model.crfsuite")
    trained = time.perf_counter() - started
    threshold = training_threshold(records, args.C)
    print(
        f"trained in {trained:.1f} s; {model.skipped} calls without whole-word argument spans; "
        f"out-of-scope threshold {threshold:.3f} (cross-fitted, {time.perf_counter() - started - trained:.1f} s)"
    )
    for path in args.eval:
        report = args.report / path.stem if args.report else None
        print(orjson.dumps(evaluate(model, path, threshold, report)).decode())


if __name__ == "__main__":
    main()
