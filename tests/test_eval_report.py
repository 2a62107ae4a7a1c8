"""eval.report: the report files, the confusion matrix image (12 and 150 intents) and --compare."""

from __future__ import annotations

import json
import random
from pathlib import Path

import matplotlib.image
from click.testing import CliRunner

from eval.cli import eval_command
from eval.metrics import compute_metrics, score_record
from eval.report import EvalResult, RunInfo, confusion_png, prediction_rows, read_result, write_report
from eval.runner import Prediction

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _result(golds: list[str], preds: list[str], *, source: str = "models/x") -> tuple[EvalResult, list[dict]]:
    instructions = [f"utterance {i}" for i in range(len(golds))]
    predictions = [Prediction(text=p, raw=p, latency_ms=10.0 + i, confidence=0.5) for i, p in enumerate(preds)]
    metrics = compute_metrics(golds, preds, instructions=instructions, latencies_ms=[p.latency_ms for p in predictions])
    run = RunInfo(
        source=source,
        mode="model",
        data="test.json",
        data_sha256="0" * 64,
        records=len(golds),
        constrained=True,
        wall_s=1.5,
        created_at="2026-01-01T00:00:00+00:00",
    )
    scores = [score_record(g, p) for g, p in zip(golds, preds)]
    return EvalResult(run=run, metrics=metrics), prediction_rows(instructions, golds, predictions, scores)


def _random_run(n_intents: int, records: int, seed: int, *, source: str = "models/x") -> tuple[EvalResult, list[dict]]:
    rng = random.Random(seed)
    names = [f"domain{i // 10}_intent_number_{i}" for i in range(n_intents)]
    golds = [f"{rng.choice(names)}(x)" for _ in range(records)]
    preds = [g if rng.random() < 0.7 else rng.choice([f"{rng.choice(names)}(x)", "garbage"]) for g in golds]
    return _result(golds, preds, source=source)


def test_report_files(tmp_path: Path) -> None:
    result, rows = _random_run(12, 200, seed=1)
    out = write_report(tmp_path / "out", result, rows)
    assert sorted(p.name for p in out.iterdir()) == [  # calibration.png: the predictions have confidences
        "calibration.png",
        "confusion.png",
        "metrics.json",
        "predictions.jsonl",
        "report.html",
        "report.md",
    ]
    png = (out / "confusion.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    assert matplotlib.image.imread(out / "confusion.png").ndim == 3
    assert read_result(out / "metrics.json") == result
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 200
    row = json.loads(lines[0])
    assert {
        "instruction",
        "gold",
        "prediction",
        "reference_intent_correct",
        "reference_params_correct",
        "intent_correct",
        "exact_match",
        "malformed",
        "latency_ms",
    } <= set(row)
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "Worst errors" in page
    assert "src='http" not in page and "href=" not in page  # self-contained
    md = (out / "report.md").read_text()
    assert "Intent accuracy (reference script)" in md and "](confusion.png)" in md
    assert "a perfectly calibrated confidence would show" in md  # the ECE's noise floor on these records
    assert oct((out / "report.html").stat().st_mode & 0o044) == oct(0o044)  # readable by others


def test_confusion_matrix_scales_to_150_intents(tmp_path: Path) -> None:
    small, _ = _random_run(12, 200, seed=2)
    large, _ = _random_run(150, 3000, seed=3)
    (tmp_path / "c150.png").write_bytes(confusion_png(large.metrics))
    image = matplotlib.image.imread(tmp_path / "c150.png")
    assert len(large.metrics.confusion.rows) == 150
    # about 20 px per row/column: labels in a 5 pt font do not overlap
    assert image.shape[0] > 150 * 20 and image.shape[1] > 150 * 20
    assert matplotlib.image.imread(_save(tmp_path / "c12.png", confusion_png(small.metrics))).shape[1] < 2000


def _save(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_compare_two_runs(tmp_path: Path) -> None:
    a, rows_a = _random_run(12, 200, seed=4, source="models/a")
    b, rows_b = _random_run(12, 200, seed=5, source="models/b")
    write_report(tmp_path / "a", a, rows_a)
    write_report(tmp_path / "b", b, rows_b)
    result = CliRunner().invoke(
        eval_command, ["--compare", str(tmp_path / "a" / "metrics.json"), str(tmp_path / "b" / "metrics.json")]
    )
    assert result.exit_code == 0, result.output
    assert "models/a" in result.output and "models/b" in result.output
    first = a.metrics.per_intent[0]
    other = next(s for s in b.metrics.per_intent if s.name == first.name)
    line = next(line for line in result.output.splitlines() if line.startswith(first.name + " "))
    assert f"{other.f1 - first.f1:+.3f}" in line

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    result = CliRunner().invoke(eval_command, ["--compare", str(bad), str(bad)])
    assert result.exit_code == 1 and "not an intentlm metrics.json" in result.output
