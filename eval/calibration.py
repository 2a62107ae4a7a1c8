"""Confidence calibration and out-of-scope rejection: the threshold, the reliability diagram, ECE.

The confidence is the server's (``service.predictor.Predictor.confidence``: the probability of the intent
name tokens, under the card's temperature, which ``fit_temperature`` fits on held-out data). A
record is rejected as out-of-scope when its confidence (or, as chosen, its typicality) is
below the threshold, as the server does. ``choose_threshold`` picks it on held-out IN-SCOPE data (the
validation split) so that a new correct in-scope answer is rejected with probability at most
``1 - KEEP``, because out-of-scope examples of a deployment are unknown in advance while the
in-scope cost is what users feel.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.scope import OutOfScopeRule

KEEP = 0.99  # keep ≥ 99 % of the in-scope accuracy (≈ 1 point at 95 %): issue 7's cost budget
BINS = 10
OTHER_SCORES = ("typicality",)  # the out-of-scope scores besides the confidence (service.scope)
STYLES = {"confidence": "-", "typicality": ":"}  # their lines in the trade-off plot


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    confidence: float  # mean confidence in the bin
    accuracy: float


def accuracy_at(threshold: float, confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """In-scope accuracy when records below ``threshold`` are answered out-of-scope (counted wrong)."""
    return sum(ok and c >= threshold for c, ok in zip(confidences, correct)) / len(correct)


def choose_threshold(scores: Sequence[float], correct: Sequence[bool], keep: float = KEEP) -> float:
    """The highest threshold that rejects a new correct in-scope answer with probability ≤ ``1 - keep``.

    The split-conformal bound: with ``n`` correct calibration answers, a threshold that rejects ``k`` of
    them rejects a new one (exchangeable with them) with probability at most ``(k + 1) / (n + 1)``. So
    with fewer than 99 correct answers no threshold keeps 99 % (0, off), and with 99 to 198 the threshold
    is the lowest correct score. Choosing by the calibration set's own kept share instead (as an
    earlier version did) lets one correct answer of 111 go: an expected cost of 1.8 % (docs/decisions.md).
    Wrong answers below the threshold cost nothing: they are wrong either way.
    """
    if not scores:
        raise ValueError("no scores to calibrate on")
    right = sorted(s for s, ok in zip(scores, correct) if ok)
    rejectable = math.floor((1 - keep) * (len(right) + 1)) - 1  # correct answers the threshold may reject
    return right[rejectable] if rejectable >= 0 else 0.0


def fit_temperature(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    """The temperature T minimising the log-loss of ``c ** (1/T)`` as the probability of being right.

    Temperature scaling (Guo et al. 2017) on the intent log-probability: one parameter, so a
    validation split of a hundred records fits it without over-fitting, and a monotone map, so
    the ranking of answers (and what a threshold rejects) is unchanged. Searched on a log grid
    from 1/16 to 16 (the loss is convex in 1/T, a grid of 1 % steps is exact enough).
    """
    logs = [math.log(max(c, 1e-12)) for c in confidences]

    def loss(t: float) -> float:
        total = 0.0
        for lp, ok in zip(logs, correct):
            p = min(max(math.exp(lp / t), 1e-12), 1 - 1e-12)
            total -= math.log(p) if ok else math.log(1 - p)
        return total

    grid = [16 ** (i / 200) for i in range(-200, 201)]
    return min(grid, key=loss)


def rescale(confidences: Sequence[float], temperature: float) -> list[float]:
    """``c ** (1/T)``: confidences under a further temperature."""
    return [c ** (1 / temperature) for c in confidences]


def bin_indices(confidences: Sequence[float], bins: int = BINS) -> Any:
    """Each confidence's equal-width bin, low <= c < high with 1.0 in the last one (a numpy array)."""
    import numpy as np

    edges = np.arange(bins) / bins
    return np.minimum(np.searchsorted(edges, np.asarray(confidences, dtype=float), side="right") - 1, bins - 1)


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> list[Bin]:
    """Equal-width confidence bins with their mean confidence and accuracy (empty bins left out)."""
    index = bin_indices(confidences, bins)
    out = []
    for i in range(bins):
        low, high = i / bins, (i + 1) / bins
        members = [(c, ok) for c, ok, b in zip(confidences, correct, index) if b == i]
        if members:
            out.append(
                Bin(
                    low,
                    high,
                    len(members),
                    sum(c for c, _ in members) / len(members),
                    sum(ok for _, ok in members) / len(members),
                )
            )
    return out


def expected_calibration_error(confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    return sum(b.count * abs(b.confidence - b.accuracy) for b in reliability(confidences, correct, bins)) / len(
        confidences
    )


def ece_noise(confidences: Sequence[float], bins: int = BINS, draws: int = 1000, seed: int = 0) -> tuple[float, float]:
    """The ECE a perfectly calibrated confidence would show on these records: its mean and 95th percentile.

    Each draw makes every record right with probability equal to its confidence. ECE is biased upwards when bins
    hold few records (60 two-intent records: 0.07 on average, docs/decisions.md), so an observed ECE inside
    this spread is no evidence of miscalibration, and a target under its mean cannot be measured on that data.
    """
    import numpy as np

    conf = np.asarray(confidences, dtype=float)
    if not len(conf):
        return 0.0, 0.0
    members = np.eye(bins)[bin_indices(conf, bins)]  # records x bins
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // len(conf))  # draws at a time, so that a large file needs no large matrix
    ece = np.concatenate(
        [
            np.abs(conf @ members - (rng.random((min(chunk, draws - start), len(conf))) < conf) @ members).sum(axis=1)
            for start in range(0, draws, chunk)
        ]
    ) / len(conf)
    return float(ece.mean()), float(np.quantile(ece, 0.95))


def tradeoff(
    in_conf: Sequence[float], in_correct: Sequence[bool], oos_conf: Sequence[float], steps: int = 101
) -> list[tuple[float, float, float | None]]:
    """(threshold, in-scope accuracy, out-of-scope recall) over thresholds 0..1."""
    rows = []
    for i in range(steps):
        t = i / (steps - 1)
        recall = sum(c < t for c in oos_conf) / len(oos_conf) if oos_conf else None
        rows.append((t, accuracy_at(t, in_conf, in_correct) if in_conf else 0.0, recall))
    return rows


@dataclass(frozen=True)
class Confidences:
    """What the calibration figures need from a run's prediction rows (``predictions.jsonl``)."""

    in_scope: list[float]
    in_scope_correct: list[bool]  # the model's own answer (before any threshold) names the gold intent
    out_of_scope: list[float]
    # The other out-of-scope scores of the same records (OTHER_SCORES that every row has): name -> (in-scope,
    # out-of-scope); a run has typicality when the model has statistics.
    other: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    def scores(self, name: str) -> list[float] | None:
        """The in-scope values of one score (``confidence`` or one of ``other``); None when the run lacks it."""
        return self.in_scope if name == "confidence" else self.other.get(name, (None, None))[0]


def from_rows(rows: Sequence[dict[str, Any]], oos_label: str) -> Confidences | None:
    """Split the rows into in-scope (with correctness of the raw answer) and out-of-scope scores."""
    from eval.metrics import score_record

    scored = [r for r in rows if r.get("confidence") is not None]
    if not scored:
        return None
    inside = [r for r in scored if r["gold_intent"] != oos_label]
    outside = [r for r in scored if r["gold_intent"] == oos_label]
    return Confidences(
        in_scope=[r["confidence"] for r in inside],
        in_scope_correct=[score_record(r["gold"], r["raw"]).intent_correct for r in inside],
        out_of_scope=[r["confidence"] for r in outside],
        other={
            name: ([r[name] for r in inside], [r[name] for r in outside])
            for name in OTHER_SCORES
            if all(r.get(name) is not None for r in scored)
        },
    )


def calibration_png(c: Confidences, rule: OutOfScopeRule | None = None) -> bytes:
    """Reliability diagram (with ECE) beside the in-scope / out-of-scope trade-off over each score's
    threshold (confidence, and the run's other scores), with ``rule``'s thresholds marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    if c.in_scope:
        bins = reliability(c.in_scope, c.in_scope_correct)
        ece = expected_calibration_error(c.in_scope, c.in_scope_correct)
        left.bar(
            [b.low for b in bins],
            [b.accuracy for b in bins],
            width=1 / BINS,
            align="edge",
            edgecolor="black",
            alpha=0.7,
            label="accuracy",
        )
        left.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        for b in bins:
            left.annotate(str(b.count), (b.low + 0.5 / BINS, b.accuracy), ha="center", va="bottom", fontsize=8)
        left.set_title(f"Reliability (in-scope, n={len(c.in_scope)}), ECE = {ece:.3f}")
        left.set_xlabel("confidence (intent-name probability)")
        left.set_ylabel("intent accuracy")
        left.legend(loc="upper left")
    rule = rule or OutOfScopeRule()
    scores = [
        ("confidence", c.in_scope, c.out_of_scope),
        *((name, *c.other[name]) for name in OTHER_SCORES if name in c.other),
    ]
    for name, inside, outside in scores:
        style = STYLES[name]
        threshold = getattr(rule, f"{name}_threshold")
        curve = tradeoff(inside, c.in_scope_correct, outside)
        ts = [t for t, _, _ in curve]
        right.plot(ts, [a for _, a, _ in curve], style, color="tab:blue", label=f"in-scope accuracy ({name})")
        if outside:
            right.plot(
                ts,
                [r for _, _, r in curve],
                style,
                color="tab:orange",
                label=f"out-of-scope recall ({name}, n={len(outside)})",
            )
        if threshold:
            right.axvline(threshold, color="red", linestyle=style, label=f"{name} threshold {threshold:.3f}")
    right.set_title("Out-of-scope threshold trade-off")
    right.set_xlabel("threshold (answers below it become out-of-scope)")
    right.set_ylim(0, 1.02)
    right.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
