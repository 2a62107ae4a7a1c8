"""A classic NLU pipeline on the same data and machine: the comparison issue 7's goal names.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/classic_baseline.py TRAIN VAL --grid            # choose the knobs on validation
    .venv/bin/python bench/classic_baseline.py TRAIN EVAL [EVAL ...] [--C C --c1 C1 --c2 C2 --compose F]

The pipeline Rasa and Snips NLU made standard for small intent data, without a language model:

- **Intent**: TF-IDF over word 1-2-grams and character 2-5-grams, then logistic regression. A
  multi-intent request gets one combined label (``alarm_set;audio_volume_mute``), Rasa's convention.
- **Arguments**: a linear-chain CRF (python-crfsuite) tagging each word ``B-k``/``I-k``/``O``, ``k`` the
  call the argument belongs to (the data format has no slot types, so the tag says only where an
  argument is), with the usual lexical features: the word, its affixes and shape, two words either
  side, the clause it is in, and the intent label (gold while training, predicted when answering).
- **Out-of-scope**: the classifier's top probability (the maximum-softmax-probability detector),
  thresholded by ``eval.calibration.choose_threshold`` on cross-fitted training probabilities, the
  same rule and data the product's training-only threshold uses (bench/accuracy.md §9).
- Composed two-call records (``--compose``, the product's ``compose_multi_intent``) are offered to it
  as to the language model.

Answers are written in the data format and scored by ``eval.metrics`` as `intentlm eval` scores the
model; ``--report DIR`` writes them as ``predictions.jsonl`` rows for the other bench scripts.
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
from sklearn.pipeline import make_pipeline, make_union

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval.calibration import choose_threshold  # noqa: E402
from eval.metrics import compute_metrics  # noqa: E402
from service.intents import Call, format_calls  # noqa: E402
from split_figures import split_figures  # noqa: E402
from training.data.compose import compose_multi_intent  # noqa: E402
from training.data.dataset import Record, load_dataset  # noqa: E402

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")
OOS = "oos"


def tokens(text: str) -> list[re.Match[str]]:
    return list(WORD.finditer(text))


def word_tags(record: Record) -> list[str] | None:
    """``B-k``/``I-k``/``O`` per token, arguments found left to right; None if one is not a whole-word span."""
    words = tokens(record.instruction)
    tags = ["O"] * len(words)
    cursor = 0
    for k, call in enumerate(record.calls(), start=1):
        for arg in call.args:
            pattern = re.compile(rf"(?<!\w){re.escape(arg)}(?!\w)")
            found = pattern.search(record.instruction, cursor) or pattern.search(record.instruction)
            if found is None:
                return None
            inside = [i for i, w in enumerate(words) if found.start() <= w.start() and w.end() <= found.end()]
            if not inside or words[inside[0]].start() != found.start() or words[inside[-1]].end() != found.end():
                return None
            for n, i in enumerate(inside):
                tags[i] = f"{'B' if n == 0 else 'I'}-{k}"
            cursor = found.end()
    return tags


def _shape(word: str) -> str:
    return re.sub(r"(.)\1+", r"\1", re.sub(r"\d", "9", re.sub(r"[a-z]", "a", word.lower())))


def word_features(text: str, intent: str) -> list[list[str]]:
    """The CRF's features of each token (crfsuite takes binary features as strings)."""
    words = [m.group(0).lower() for m in tokens(text)]
    clause = np.cumsum([w == "," for w in words]) - np.array([w == "," for w in words])
    out = []
    for i, w in enumerate(words):
        near = {d: words[i + d] if 0 <= i + d < len(words) else ("<s>" if i + d < 0 else "</s>") for d in (-2, -1, 1, 2)}
        out.append([
            f"w={w}", f"suf3={w[-3:]}", f"suf2={w[-2:]}", f"pre3={w[:3]}", f"shape={_shape(w)}",
            f"w-1={near[-1]}", f"w-2={near[-2]}", f"w+1={near[1]}", f"w+2={near[2]}",
            f"w-1|w={near[-1]}|{w}", f"w|w+1={w}|{near[1]}", f"clause={min(int(clause[i]), 2)}",
            f"intent={intent}", f"intent|w={intent}|{w}", f"intent|clause={intent}|{min(int(clause[i]), 2)}",
        ])
    return out


def answer(text: str, label: str, tags: list[str]) -> str:
    """The data-format answer for an intent label and the CRF's tags: each argument as written in the text."""
    names = label.split(";")
    args: list[list[str]] = [[] for _ in names]
    words = tokens(text)
    span: tuple[int, int, int] | None = None  # (call, start, end)
    for w, tag in itertools.chain(zip(words, tags), [(None, "O")]):
        if span and (tag == "O" or tag.startswith("B-") or int(tag[2:]) != span[0]):
            args[min(span[0], len(names)) - 1].append(text[span[1]:span[2]])
            span = None
        if w is None or tag == "O":
            continue
        span = (int(tag[2:]), w.start(), w.end()) if span is None else (span[0], span[1], w.end())
    return format_calls(Call(n, tuple(a)) for n, a in zip(names, args))


def intent_label(record: Record) -> str:
    return ";".join(call.name for call in record.calls())


def intent_classifier(c: float) -> object:
    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True))
    return make_pipeline(features, LogisticRegression(C=c, max_iter=5000))


class ClassicNLU:
    """The fitted pipeline: ``predict`` returns the answer and the classifier's top probability per request."""

    def __init__(self, records: list[Record], *, c: float, c1: float, c2: float, model_path: Path) -> None:
        self.labels = [intent_label(r) for r in records]
        self.classifier = intent_classifier(c).fit([r.instruction for r in records], self.labels)
        trainer = pycrfsuite.Trainer(verbose=False)
        self.skipped = 0
        for r, label in zip(records, self.labels):
            tags = word_tags(r)
            if tags is None:
                self.skipped += 1
                continue
            trainer.append(word_features(r.instruction, label), tags)
        trainer.set_params({"c1": c1, "c2": c2, "max_iterations": 200, "feature.possible_transitions": True})
        trainer.train(str(model_path))
        self.tagger = pycrfsuite.Tagger()
        self.tagger.open(str(model_path))

    def predict(self, texts: list[str]) -> tuple[list[str], list[float]]:
        probs = self.classifier.predict_proba(texts)
        labels = self.classifier.classes_[probs.argmax(axis=1)]
        answers = [answer(t, label, self.tagger.tag(word_features(t, label))) for t, label in zip(texts, labels)]
        return answers, probs.max(axis=1).tolist()


def training_threshold(records: list[Record], c: float, folds: int = 5, seed: int = 42) -> float:
    """The out-of-scope threshold from cross-fitted training probabilities (intent right or not), as §9."""
    texts = np.array([r.instruction for r in records])
    labels = np.array([intent_label(r) for r in records])
    top, right = np.zeros(len(records)), np.zeros(len(records), dtype=bool)
    # Labels seen fewer than `folds` times (rare two-intent pairs) cannot be stratified: fold on the first intent.
    strata = np.array([label.split(";")[0] for label in labels])
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(texts, strata):
        clf = intent_classifier(c).fit(texts[fit], labels[fit])
        probs = clf.predict_proba(texts[held])
        top[held] = probs.max(axis=1)
        right[held] = clf.classes_[probs.argmax(axis=1)] == labels[held]
    return choose_threshold(top.tolist(), right.tolist())


def with_composed(records: list[Record], share: float, seed: int = 42) -> list[Record]:
    return records + compose_multi_intent(records, round(share * len(records)), seed=seed)


def evaluate(model: ClassicNLU, path: Path, threshold: float, report: Path | None) -> dict[str, object]:
    records = load_dataset(path)
    started = time.perf_counter()
    answers, top = model.predict([r.instruction for r in records])
    per_request_ms = 1000 * (time.perf_counter() - started) / len(records)
    served = [a if p >= threshold else f"{OOS}()" for a, p in zip(answers, top)]
    golds = [r.output for r in records]
    inside = [i for i, g in enumerate(golds) if not g.startswith(f"{OOS}(")]
    result: dict[str, object] = {"data": str(path), "ms_per_request": round(per_request_ms, 2),
                                 **split_figures([golds[i] for i in inside], [served[i] for i in inside])}
    arg = compute_metrics([golds[i] for i in inside], [served[i] for i in inside])
    result["arg_prf"] = [round(100 * x, 1) for x in (arg.argument_precision, arg.argument_recall, arg.argument_f1)]
    oos = compute_metrics(golds, served).out_of_scope
    if oos is not None:
        before = sum(a.split("(")[0] == g.split("(")[0] for a, g in ((answers[i], golds[i]) for i in inside))
        result["oos"] = {"recall": round(100 * oos.recall, 1), "in_scope_intent": round(100 * oos.in_scope_accuracy, 1),
                         "in_scope_intent_before": round(100 * before / len(inside), 1),
                         "in_scope_rejected": round(100 * oos.in_scope_rejected, 1)}
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        rows = [{"instruction": r.instruction, "gold": r.output, "prediction": s, "raw": s, "confidence": p}
                for r, s, p in zip(records, served, top)]
        (report / "predictions.jsonl").write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("train", type=Path)
    parser.add_argument("eval", type=Path, nargs="+")
    parser.add_argument("--C", type=float, default=10.0, help="inverse regularisation of the intent classifier")
    parser.add_argument("--c1", type=float, default=0.1, help="the CRF's L1 penalty")
    parser.add_argument("--c2", type=float, default=0.01, help="the CRF's L2 penalty")
    parser.add_argument("--compose", type=float, default=0.2, help="composed two-call records, share of the data")
    parser.add_argument("--grid", action="store_true", help="score every knob combination on the (one) EVAL file")
    parser.add_argument("--report", type=Path, help="write predictions.jsonl of each EVAL file under this folder")
    parser.add_argument("--work", type=Path, default=Path("runs/classic"), help="where the CRF model file goes")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    records = load_dataset(args.train)

    if args.grid:
        for compose, c, c1, c2 in itertools.product((0.0, 0.2), (1.0, 10.0, 100.0), (0.0, 0.05, 0.2, 0.5), (0.001, 0.01, 0.1)):
            model = ClassicNLU(with_composed(records, compose), c=c, c1=c1, c2=c2, model_path=args.work / "grid.crfsuite")
            figures = evaluate(model, args.eval[0], 0.0, None)
            exact = [figures[p]["exact"] * figures[p]["records"] for p in ("single", "multi") if p in figures]
            print(orjson.dumps({"compose": compose, "C": c, "c1": c1, "c2": c2,
                                "exact_all": round(sum(exact) / sum(figures[p]["records"] for p in ("single", "multi") if p in figures), 1),
                                **{k: figures[k] for k in ("single", "multi", "arg_prf") if k in figures}}).decode(), flush=True)
        return

    started = time.perf_counter()
    model = ClassicNLU(with_composed(records, args.compose), c=args.C, c1=args.c1, c2=args.c2,
                       model_path=args.work / "model.crfsuite")
    threshold = training_threshold(records, args.C)
    print(f"trained in {time.perf_counter() - started:.1f} s (threshold included); "
          f"{model.skipped} records without whole-word argument spans; out-of-scope threshold {threshold:.3f}")
    for path in args.eval:
        report = args.report / path.stem if args.report else None
        print(orjson.dumps(evaluate(model, path, threshold, report)).decode())


if __name__ == "__main__":
    main()
