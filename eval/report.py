"""Reports of an evaluation: the console table, ``OUT/`` files, and the side-by-side of two runs.

``OUT/`` holds ``metrics.json`` (the run and every figure; ``--compare`` reads it back),
``predictions.jsonl`` (one row per record with its flags), ``confusion.png``, ``report.md`` and a
self-contained ``report.html`` (the PNG inlined, so the file can be mailed or attached to a CI run).
Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from eval.metrics import DEFAULT_OOS_LABEL, Metrics, RecordScore
from service.modelcard import atomic_write_bytes
from service.scope import OutOfScopeRule

WORST_ERRORS = 25


class RunInfo(BaseModel):
    """What was evaluated and how, so a metrics file says where its numbers come from."""

    source: str  # model directory or service URL
    mode: str  # "model" or "url (intents|eas)"
    data: str
    data_sha256: str
    records: int
    constrained: bool
    wall_s: float
    created_at: str
    oos_label: str = DEFAULT_OOS_LABEL
    oos_threshold: float | None = None  # the confidence threshold applied (None: none)
    typicality_threshold: float | None = None  # the typicality threshold applied (None: none)

    def oos_rule(self) -> OutOfScopeRule:
        """The out-of-scope rule this run applied."""
        return OutOfScopeRule(self.oos_threshold or 0.0, self.typicality_threshold or 0.0)


class EvalResult(BaseModel):
    """The content of ``metrics.json``."""

    run: RunInfo
    metrics: Metrics


def prediction_rows(
    instructions: Sequence[str],
    golds: Sequence[str],
    predictions: Sequence[Any],
    scores: Sequence[RecordScore],
) -> list[dict[str, Any]]:
    """The ``predictions.jsonl`` rows: what was asked, expected, answered, and which checks passed."""
    return [
        {
            "instruction": instruction,
            "gold": gold,
            "prediction": p.text,
            "raw": p.raw,
            "gold_intent": s.gold_intent,
            "pred_intent": s.pred_intent,
            "reference_intent_correct": s.reference_intent,
            "reference_params_correct": s.reference_params,
            "intent_correct": s.intent_correct,
            "args_correct": s.args_correct,
            "exact_match": s.exact_match,
            "malformed": s.malformed,
            "latency_ms": p.latency_ms,
            "confidence": p.confidence,
            "typicality": p.typicality,
        }
        for instruction, gold, p, s in zip(instructions, golds, predictions, scores)
    ]


def worst_errors(rows: Sequence[dict[str, Any]], limit: int = WORST_ERRORS) -> list[dict[str, Any]]:
    """Wrong intents, the most confident first (confident mistakes are the dangerous ones), then the rest."""
    wrong = [r for r in rows if not r["intent_correct"]]
    wrong.sort(key=lambda r: -(r["confidence"] if r["confidence"] is not None else -1.0))
    return wrong[:limit]


# ---------------------------------------------------------------------------------------- text


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def headline(result: EvalResult) -> list[tuple[str, str]]:
    """The figures every report starts with, as (label, value) pairs."""
    m = result.metrics
    rows = [
        ("Intent accuracy (reference script)", _pct(m.reference.intent_accuracy)),
        ("Parameter accuracy (reference script)", _pct(m.reference.parameter_accuracy)),
        ("Intent accuracy (parsed, first call)", _pct(m.intent_accuracy)),
        ("Argument accuracy given the right intent", _pct(m.args_accuracy_given_intent)),
        ("Macro F1 / micro F1", f"{_pct(m.macro_f1)} / {_pct(m.micro_f1)}"),
        ("Exact match (all calls)", _pct(m.exact_match)),
        ("Call-level P / R / F1", f"{_pct(m.call_precision)} / {_pct(m.call_recall)} / {_pct(m.call_f1)}"),
        (
            "Argument-level P / R / F1",
            f"{_pct(m.argument_precision)} / {_pct(m.argument_recall)} / {_pct(m.argument_f1)}",
        ),
        ("Malformed outputs", _pct(m.malformed_rate)),
    ]
    if m.multi_intent_records:
        rows.append((f"Multi-intent exact match ({m.multi_intent_records} records)", _pct(m.multi_intent_exact_match)))
    if m.out_of_scope is not None:
        o = m.out_of_scope
        rows.append((f"Out-of-scope recall ({o.label}, {o.records} records)", _pct(o.recall)))
        if o.in_scope_records:
            rows.append((f"In-scope accuracy ({o.in_scope_records} records)", _pct(o.in_scope_accuracy)))
            rows.append(("In-scope wrongly rejected", _pct(o.in_scope_rejected)))
    if m.latency is not None:
        lat = m.latency
        rows.append(("Latency p50 / p90 / p99 (ms)", f"{lat.p50_ms:.0f} / {lat.p90_ms:.0f} / {lat.p99_ms:.0f}"))
    rows.append(
        (
            "Records / wall time",
            f"{m.records} in {result.run.wall_s:.1f} s ({m.records / max(result.run.wall_s, 1e-9):.1f} rec/s)",
        )
    )
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows])


def _intent_rows(m: Metrics) -> list[list[str]]:
    return [
        [s.name, str(s.support), str(s.predicted), f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}"]
        for s in m.per_intent
    ]


INTENT_HEADER = ["intent", "support", "predicted", "precision", "recall", "F1"]


def console_report(result: EvalResult) -> str:
    """What ``intentlm eval`` prints: the headline, the per-intent table and the most confused pairs."""
    run = result.run
    parts = [
        f"{run.source} on {run.data} ({run.mode}, {'constrained' if run.constrained else 'free-form'})",
        _table(["figure", "value"], headline(result), markdown=False),
        _table(INTENT_HEADER, _intent_rows(result.metrics), markdown=False),
    ]
    if result.metrics.most_confused:
        pairs = [[p.gold, p.predicted, str(p.count)] for p in result.metrics.most_confused]
        parts.append(_table(["gold", "predicted", "count"], pairs, markdown=False))
    return "\n\n".join(parts)


def markdown_report(result: EvalResult, rows: Sequence[dict[str, Any]]) -> str:
    run = result.run
    m = result.metrics
    parts = [
        "# Evaluation report",
        f"`{run.source}` ({run.mode}, {'constrained' if run.constrained else 'free-form'} decoding) on "
        f"`{run.data}` ({run.records} records, sha256 `{run.data_sha256[:12]}`), {run.created_at}.",
        "## Summary",
        _table(["figure", "value"], headline(result), markdown=True),
        "The first two figures are computed exactly as PAI's offline evaluation script computes them "
        "(first gold call only, raw text before `(`, argument sets); see docs/evaluation.md.",
        "## Per intent",
        _table(INTENT_HEADER, _intent_rows(m), markdown=True),
        "## Confusion matrix",
        "![confusion matrix](confusion.png)",
    ]
    if m.most_confused:
        parts += [
            "## Most confused pairs",
            _table(
                ["gold", "predicted", "count", "examples (utterance → answer)"],
                [
                    [p.gold, p.predicted, str(p.count), "<br>".join(f"{i} → `{a}`" for i, a in p.examples)]
                    for p in m.most_confused
                ],
                markdown=True,
            ),
        ]
    errors = worst_errors(rows)
    if errors:
        parts += [
            "## Worst errors",
            _table(
                ["utterance", "gold", "answer", "confidence"],
                [[r["instruction"], f"`{r['gold']}`", f"`{r['raw']}`", _confidence(r)] for r in errors],
                markdown=True,
            ),
        ]
    text = _calibration_text(result, rows)
    if text is not None:
        parts += ["## Confidence and out-of-scope", text, "![reliability and trade-off](calibration.png)"]
    return "\n\n".join(parts) + "\n"


def _calibration_text(result: EvalResult, rows: Sequence[dict[str, Any]]) -> str | None:
    """ECE and the out-of-scope thresholds, when the run has in-scope confidences."""
    from eval.calibration import ece_noise, expected_calibration_error, from_rows

    c = from_rows(rows, result.run.oos_label)
    if c is None or not c.in_scope:
        return None
    rule = result.run.oos_rule()
    thresholds = ", ".join(
        f"{name} {getattr(rule, f'{name}_threshold'):.4f}" if getattr(rule, f"{name}_threshold") else f"{name} none"
        for name in ("confidence", *c.other)
    )
    mean, high = ece_noise(c.in_scope)
    return (
        f"Expected calibration error of the intent confidence on the {len(c.in_scope)} in-scope records: "
        f"{expected_calibration_error(c.in_scope, c.in_scope_correct):.3f} (a perfectly calibrated confidence "
        f"would show {mean:.3f} on these records, {high:.3f} at the 95th percentile); out-of-scope thresholds: "
        f"{thresholds}."
    )


def _confidence(row: dict[str, Any]) -> str:
    return "—" if row["confidence"] is None else f"{row['confidence']:.3f}"


def html_report(result: EvalResult, rows: Sequence[dict[str, Any]], png: bytes, calibration: bytes | None) -> str:
    """One file, no external resources: the confusion matrix (``png``) and the calibration figure are data:
    URIs."""
    run = result.run
    m = result.metrics
    esc = html.escape

    def table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
        head = "".join(f"<th>{esc(h)}</th>" for h in header)
        cells = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"

    sections = [
        f"<h1>Evaluation report</h1><p><code>{esc(run.source)}</code> ({esc(run.mode)}, "
        f"{'constrained' if run.constrained else 'free-form'} decoding) on <code>{esc(run.data)}</code> "
        f"({run.records} records), {esc(run.created_at)}.</p>",
        "<h2>Summary</h2>" + table(["figure", "value"], headline(result)),
        "<p>The first two figures are computed exactly as PAI's offline evaluation script computes them.</p>",
        "<h2>Per intent</h2>" + table(INTENT_HEADER, _intent_rows(m)),
        "<h2>Confusion matrix</h2><img alt='confusion matrix' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>",
    ]
    if m.most_confused:
        sections.append(
            "<h2>Most confused pairs</h2>"
            + table(
                ["gold", "predicted", "count", "examples (utterance → answer)"],
                [
                    [p.gold, p.predicted, str(p.count), " | ".join(f"{i} → {a}" for i, a in p.examples)]
                    for p in m.most_confused
                ],
            )
        )
    errors = worst_errors(rows)
    if errors:
        sections.append(
            "<h2>Worst errors</h2>"
            + table(
                ["utterance", "gold", "answer", "confidence"],
                [[r["instruction"], r["gold"], r["raw"], _confidence(r)] for r in errors],
            )
        )
    text = _calibration_text(result, rows)
    if text is not None and calibration is not None:
        sections.append(
            f"<h2>Confidence and out-of-scope</h2><p>{esc(text)}</p><img alt='reliability diagram and "
            f"trade-off' src='data:image/png;base64,{base64.b64encode(calibration).decode()}'>"
        )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;font-size:14px}th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>intentlm evaluation</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
    )


# ----------------------------------------------------------------------------------- confusion


def confusion_png(metrics: Metrics) -> bytes:
    """The confusion matrix as a PNG, readable from a dozen intents to a few hundred.

    Cells are coloured by the share of the gold row (so rare and frequent intents read alike) on a
    square-root scale (so a stray confusion stands out from the blank background) and
    carry their counts while they are large enough to hold them; the figure grows with the number
    of intents so that labels never overlap.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    c = metrics.confusion
    counts = np.array(c.matrix, dtype=float)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n_rows, n_cols = counts.shape
    cell = 0.5 if n_cols <= 30 else 0.16  # inches per cell
    font = 9 if n_cols <= 30 else 5
    fig, ax = plt.subplots(figsize=(max(6.0, 3 + n_cols * cell), max(5.0, 2.5 + n_rows * cell)))
    # A square-root scale, so a cell holding a few percent of its row is still visible.
    norm = matplotlib.colors.PowerNorm(gamma=0.5, vmin=0, vmax=1)
    image = ax.imshow(share, cmap="Blues", norm=norm, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_cols), labels=c.columns, rotation=90, fontsize=font)
    ax.set_yticks(range(n_rows), labels=c.rows, fontsize=font)
    ax.set_xlabel("predicted (first call)")
    ax.set_ylabel("gold (first call)")
    ax.set_title(f"Confusion matrix, {metrics.records} records (colour: share of the gold row)")
    if n_cols <= 30:
        for (i, j), value in np.ndenumerate(counts):
            if value:
                ax.text(
                    j,
                    i,
                    int(value),
                    ha="center",
                    va="center",
                    fontsize=font,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    else:  # a faint grid makes rows and columns followable when the cells are small
        ax.set_xticks(np.arange(-0.5, n_cols), minor=True)
        ax.set_yticks(np.arange(-0.5, n_rows), minor=True)
        ax.grid(which="minor", color="#eeeeee", linewidth=0.3)
        ax.tick_params(which="minor", length=0)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110 if n_cols <= 30 else 130)
    plt.close(fig)
    return buffer.getvalue()


# -------------------------------------------------------------------------------------- files


def write_report(out_dir: str | os.PathLike[str], result: EvalResult, rows: Sequence[dict[str, Any]]) -> Path:
    """Write every report file into ``out_dir`` (created if needed); ``calibration.png`` when the
    predictions carry confidences."""
    from eval.calibration import calibration_png, from_rows

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = confusion_png(result.metrics)
    atomic_write_bytes(out / "confusion.png", png)
    confidences = from_rows(rows, result.run.oos_label)
    calibration = None if confidences is None else calibration_png(confidences, result.run.oos_rule())
    if calibration is not None:
        atomic_write_bytes(out / "calibration.png", calibration)
    atomic_write_bytes(out / "metrics.json", result.model_dump_json(indent=2).encode() + b"\n")
    atomic_write_bytes(out / "predictions.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in rows))
    atomic_write_bytes(out / "report.md", markdown_report(result, rows).encode())
    atomic_write_bytes(out / "report.html", html_report(result, rows, png, calibration).encode())
    return out


# ------------------------------------------------------------------------------------- compare


def compare_report(a: EvalResult, b: EvalResult, *, names: tuple[str, str] = ("A", "B")) -> str:
    """Two runs side by side: the headline figures, then each intent's F1 and its change."""
    left, right = dict(headline(a)), dict(headline(b))
    labels = list(left) + [label for label in right if label not in left]
    figures = [[label, left.get(label, "—"), right.get(label, "—")] for label in labels]
    f1_a = {s.name: s for s in a.metrics.per_intent}
    f1_b = {s.name: s for s in b.metrics.per_intent}
    intents = sorted(set(f1_a) | set(f1_b))

    def f1(table: dict[str, Any], name: str) -> float | None:
        return table[name].f1 if name in table else None

    def delta(x: float | None, y: float | None) -> str:
        return "—" if x is None or y is None else f"{y - x:+.3f}"

    per_intent = [
        [
            name,
            "—" if f1(f1_a, name) is None else f"{f1(f1_a, name):.3f}",
            "—" if f1(f1_b, name) is None else f"{f1(f1_b, name):.3f}",
            delta(f1(f1_a, name), f1(f1_b, name)),
        ]
        for name in intents
    ]
    return "\n\n".join(
        [
            f"{names[0]}: {a.run.source} on {a.run.data}\n{names[1]}: {b.run.source} on {b.run.data}",
            _table(["figure", names[0], names[1]], figures, markdown=False),
            _table(["intent", f"F1 {names[0]}", f"F1 {names[1]}", "change"], per_intent, markdown=False),
        ]
    )


def read_result(path: str | os.PathLike[str]) -> EvalResult:
    return EvalResult.model_validate_json(Path(path).read_bytes())


def read_predictions(report: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a report directory's ``predictions.jsonl`` (``prediction_rows``), for scripts comparing runs."""
    return [orjson.loads(line) for line in (Path(report) / "predictions.jsonl").read_bytes().splitlines()]
