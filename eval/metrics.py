"""Evaluation metrics: the reference script's two figures, exactly, and what that script lacks.

Pure Python (no torch, no vLLM): the trainer's ``--eval-data`` and the data tools import
``compute_metrics`` too.

**The reference figures** are computed as PAI's offline evaluation script computes them, quirks
included, so a number printed here is comparable with a number printed there:

- only the first gold call counts (``gold.split(';')[0]``); the prediction is not split, so a
  multi-call prediction can match the intent but never the arguments;
- the intent is the raw text before the first ``(`` on both sides (``f (x)`` names ``"f "``);
- the argument sets are ``set(s.strip()[:-1].split('(')[1].split(','))``: the last character is
  dropped whatever it is, nothing is trimmed, and ``play_music()`` compares the set ``{''}``;
- both figures divide by the number of records (parameter accuracy is not conditional).

Where the script would crash (an ``IndexError`` when the text before the last character has no
``(``, e.g. a prediction ``play_music`` for gold ``play_music(jazz)``), the intent counts as
recognised, because the script has incremented its counter by then, and the arguments count as
wrong. Only this guard departs from the script.

**The rest** parses with the intent grammar (``service.intents``), so whitespace does not matter
and a prediction that does not parse is *malformed*: it counts as a miss everywhere and as the
label ``(malformed)`` in the confusion matrix.

- per-intent precision/recall/F1 are computed over the *set of intent names* of each record
  (multi-label), which for single-intent data is ordinary classification; macro F1 averages the
  intents that occur in the gold data (a hallucinated name has no support to average over; the
  record it was predicted for already costs its gold intent's recall), micro F1 pools all counts;
- exact match compares the canonical outputs (order of calls matters: "A and then B");
  call-level precision/recall/F1 compare the sets of canonical ``name(args)`` calls, pooled;
- argument-level precision/recall/F1 compare the multisets of (intent, argument) pairs of each
  record, pooled: the slot F1 that the NLU literature reports, with the intent standing in for the
  slot type that the data format does not write (a right value under a wrong intent is a miss);
- the confusion matrix and "intent accuracy (parsed)" use the first call on each side, as the
  reference does; predicted names that are not gold labels are folded into ``(other)``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from service.intents import Call, parse, try_parse
from service.scope import DEFAULT_OOS_LABEL

MALFORMED = "(malformed)"
OTHER = "(other)"


def reference_record(gold: str, pred: str) -> tuple[bool, bool]:
    """(intent correct, parameters correct) for one record, as the reference script decides them."""
    gold = gold.split(";")[0] if ";" in gold else gold
    if gold.split("(")[0] != pred.split("(")[0]:
        return False, False
    if "(" not in gold.strip()[:-1] or "(" not in pred.strip()[:-1]:
        return True, False  # the script raises IndexError here, after counting the intent
    gold_list = set(gold.strip()[:-1].split("(")[1].split(","))
    pred_list = set(pred.strip()[:-1].split("(")[1].split(","))
    return True, gold_list == pred_list


@dataclass(frozen=True)
class RecordScore:
    """What one prediction got right; these become the flags in ``predictions.jsonl``."""

    reference_intent: bool
    reference_params: bool
    gold_intent: str
    pred_intent: str  # first predicted call's name, or MALFORMED
    intent_correct: bool  # parsed first names equal
    args_correct: bool  # ... and the first calls' argument multisets equal
    exact_match: bool  # canonical outputs equal
    malformed: bool


def score_record(gold: str, pred: str) -> RecordScore:
    gold_calls = parse(gold)
    pred_calls = try_parse(pred)
    ref_intent, ref_params = reference_record(gold, pred)
    first_gold = gold_calls[0]
    first_pred = pred_calls[0] if pred_calls else None
    intent_correct = first_pred is not None and first_pred.name == first_gold.name
    return RecordScore(
        reference_intent=ref_intent,
        reference_params=ref_params,
        gold_intent=first_gold.name,
        pred_intent=first_pred.name if first_pred else MALFORMED,
        intent_correct=intent_correct,
        args_correct=intent_correct and Counter(first_gold.args) == Counter(first_pred.args),
        exact_match=pred_calls is not None and pred_calls == gold_calls,
        malformed=pred_calls is None,
    )


class ReferenceFigures(BaseModel):
    intent_accuracy: float
    parameter_accuracy: float


class IntentScores(BaseModel):
    name: str
    support: int  # gold records naming the intent
    predicted: int  # records whose prediction names it
    precision: float
    recall: float
    f1: float


class ConfusedPair(BaseModel):
    gold: str
    predicted: str
    count: int
    examples: list[tuple[str, str]]  # (instruction, raw prediction)


class Confusion(BaseModel):
    rows: list[str]  # gold first-call intents, sorted
    columns: list[str]  # rows, then (other) and (malformed) when they occur
    matrix: list[list[int]]


class OutOfScope(BaseModel):
    label: str
    records: int
    recall: float  # out-of-scope records predicted as the label
    in_scope_records: int
    in_scope_accuracy: float | None  # in-scope records whose (parsed) intent is right
    in_scope_rejected: float | None  # in-scope records wrongly predicted as the label


class Latency(BaseModel):
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float


class Metrics(BaseModel):
    """Everything ``metrics.json`` holds; ``--compare`` reads two of these back."""

    records: int
    reference: ReferenceFigures
    intent_accuracy: float  # parsed first-call names equal
    args_accuracy_given_intent: float | None
    malformed_rate: float
    macro_f1: float
    micro_precision: float
    micro_recall: float
    micro_f1: float
    exact_match: float
    call_precision: float
    call_recall: float
    call_f1: float
    # None (shown as "n/a") on data where neither the gold nor the answers have an argument
    argument_precision: float | None
    argument_recall: float | None
    argument_f1: float | None
    multi_intent_records: int
    multi_intent_exact_match: float | None
    per_intent: list[IntentScores]
    confusion: Confusion
    most_confused: list[ConfusedPair]
    out_of_scope: OutOfScope | None = None
    latency: Latency | None = None


def compute_metrics(
    golds: Sequence[str],
    preds: Sequence[str],
    *,
    instructions: Sequence[str] | None = None,
    oos_label: str = DEFAULT_OOS_LABEL,
    latencies_ms: Sequence[float] | None = None,
    top_pairs: int = 10,
    examples_per_pair: int = 3,
) -> Metrics:
    """All figures for gold outputs (valid per the data contract) and raw predictions, row by row."""
    if len(golds) != len(preds):
        raise ValueError(f"{len(golds)} gold outputs but {len(preds)} predictions")
    if not golds:
        raise ValueError("no records to evaluate")
    n = len(golds)
    instructions = instructions if instructions is not None else [""] * n
    scores = [score_record(g, p) for g, p in zip(golds, preds)]
    gold_calls = [parse(g) for g in golds]
    pred_calls = [try_parse(p) or [] for p in preds]

    per_intent, micro = _per_intent(gold_calls, pred_calls)
    call_p, call_r, call_f1 = _call_prf(gold_calls, pred_calls)
    arg_p, arg_r, arg_f1 = _argument_prf(gold_calls, pred_calls)
    right_intent = [s for s in scores if s.intent_correct]
    multi = [s for s, calls in zip(scores, gold_calls) if len(calls) > 1]
    confusion = _confusion(scores)
    gold_support = [s for s in per_intent if s.support > 0]
    return Metrics(
        records=n,
        reference=ReferenceFigures(
            intent_accuracy=sum(s.reference_intent for s in scores) / n,
            parameter_accuracy=sum(s.reference_params for s in scores) / n,
        ),
        intent_accuracy=len(right_intent) / n,
        args_accuracy_given_intent=(
            sum(s.args_correct for s in right_intent) / len(right_intent) if right_intent else None
        ),
        malformed_rate=sum(s.malformed for s in scores) / n,
        macro_f1=sum(s.f1 for s in gold_support) / len(gold_support),
        micro_precision=micro[0],
        micro_recall=micro[1],
        micro_f1=micro[2],
        exact_match=sum(s.exact_match for s in scores) / n,
        call_precision=call_p,
        call_recall=call_r,
        call_f1=call_f1,
        argument_precision=arg_p,
        argument_recall=arg_r,
        argument_f1=arg_f1,
        multi_intent_records=len(multi),
        multi_intent_exact_match=sum(s.exact_match for s in multi) / len(multi) if multi else None,
        per_intent=per_intent,
        confusion=confusion,
        most_confused=_most_confused(scores, instructions, preds, confusion, top_pairs, examples_per_pair),
        out_of_scope=_out_of_scope(scores, oos_label),
        latency=_latency(latencies_ms) if latencies_ms else None,
    )


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall, F1; 0 where undefined (nothing predicted / nothing to find)."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _per_intent(
    gold_calls: Sequence[list[Call]], pred_calls: Sequence[list[Call]]
) -> tuple[list[IntentScores], tuple[float, float, float]]:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for gold, pred in zip(gold_calls, pred_calls):
        gold_names = {c.name for c in gold}
        pred_names = {c.name for c in pred}
        tp.update(gold_names & pred_names)
        fp.update(pred_names - gold_names)
        fn.update(gold_names - pred_names)
    rows = []
    for name in sorted(set(tp) | set(fp) | set(fn)):
        precision, recall, f1 = _prf(tp[name], fp[name], fn[name])
        rows.append(
            IntentScores(
                name=name,
                support=tp[name] + fn[name],
                predicted=tp[name] + fp[name],
                precision=precision,
                recall=recall,
                f1=f1,
            )
        )
    return rows, _prf(sum(tp.values()), sum(fp.values()), sum(fn.values()))


def _pooled_prf(records: Iterable[tuple[Counter[Any], Counter[Any]]]) -> tuple[float, float, float]:
    """P/R/F1 of items matched within each record (gold and predicted multisets), counts pooled over the records."""
    tp = fp = fn = 0
    for gold, pred in records:
        hits = (gold & pred).total()
        tp += hits
        fp += pred.total() - hits
        fn += gold.total() - hits
    return _prf(tp, fp, fn)


def _call_prf(gold_calls: Sequence[list[Call]], pred_calls: Sequence[list[Call]]) -> tuple[float, float, float]:
    """Canonical calls as sets: a call repeated in one answer counts once."""
    return _pooled_prf(
        (Counter({str(c) for c in gold}), Counter({str(c) for c in pred})) for gold, pred in zip(gold_calls, pred_calls)
    )


def _argument_prf(
    gold_calls: Sequence[list[Call]], pred_calls: Sequence[list[Call]]
) -> tuple[float | None, float | None, float | None]:
    """(intent, argument) pairs as multisets: an argument written twice must be found twice. None where there is
    no argument on either side (a figure of 0 would read as a failure)."""
    if not any(c.args for calls in (*gold_calls, *pred_calls) for c in calls):
        return None, None, None
    return _pooled_prf(
        (Counter((c.name, arg) for c in gold for arg in c.args), Counter((c.name, arg) for c in pred for arg in c.args))
        for gold, pred in zip(gold_calls, pred_calls)
    )


def _column(score: RecordScore, rows: set[str]) -> str:
    if score.pred_intent == MALFORMED or score.pred_intent in rows:
        return score.pred_intent
    return OTHER


def _confusion(scores: Sequence[RecordScore]) -> Confusion:
    rows = sorted({s.gold_intent for s in scores})
    row_set = set(rows)
    extra = [label for label in (OTHER, MALFORMED) if any(_column(s, row_set) == label for s in scores)]
    columns = rows + extra
    index = {label: i for i, label in enumerate(columns)}
    matrix = [[0] * len(columns) for _ in rows]
    for s in scores:
        matrix[index[s.gold_intent]][index[_column(s, row_set)]] += 1
    return Confusion(rows=rows, columns=columns, matrix=matrix)


def _most_confused(
    scores: Sequence[RecordScore],
    instructions: Sequence[str],
    preds: Sequence[str],
    confusion: Confusion,
    top: int,
    per_pair: int,
) -> list[ConfusedPair]:
    row_set = set(confusion.rows)
    examples: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for s, instruction, pred in zip(scores, instructions, preds):
        column = _column(s, row_set)
        if column != s.gold_intent and len(examples[(s.gold_intent, column)]) < per_pair:
            examples[(s.gold_intent, column)].append((instruction, pred))
    pairs = [
        ConfusedPair(gold=gold, predicted=column, count=count, examples=examples[(gold, column)])
        for gold, row in zip(confusion.rows, confusion.matrix)
        for column, count in zip(confusion.columns, row)
        if count and column != gold
    ]
    pairs.sort(key=lambda p: (-p.count, p.gold, p.predicted))
    return pairs[:top]


def _out_of_scope(scores: Sequence[RecordScore], label: str) -> OutOfScope | None:
    """Only where the data has out-of-scope records: otherwise there is nothing to recall."""
    oos = [s for s in scores if s.gold_intent == label]
    if not oos:
        return None
    inside = [s for s in scores if s.gold_intent != label]
    return OutOfScope(
        label=label,
        records=len(oos),
        recall=sum(s.pred_intent == label for s in oos) / len(oos),
        in_scope_records=len(inside),
        in_scope_accuracy=sum(s.intent_correct for s in inside) / len(inside) if inside else None,
        in_scope_rejected=sum(s.pred_intent == label for s in inside) / len(inside) if inside else None,
    )


def _latency(values: Sequence[float]) -> Latency:
    ordered = sorted(values)

    def quantile(q: float) -> float:
        """Nearest-rank quantile: a latency some record actually had."""
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return Latency(
        mean_ms=sum(ordered) / len(ordered),
        p50_ms=quantile(0.5),
        p90_ms=quantile(0.9),
        p99_ms=quantile(0.99),
        max_ms=ordered[-1],
    )
