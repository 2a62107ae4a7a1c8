"""``intentlm eval``: evaluate a model directory or a running service on a dataset, or compare two runs."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from eval.metrics import DEFAULT_OOS_LABEL

if TYPE_CHECKING:
    from eval.runner import Prediction
    from service.dataset import Record
    from service.scope import OutOfScopeRule


@click.command("eval")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Model directory: predictions from vLLM's offline engine, one batched run.",
)
@click.option("--url", help="Base URL of a running intentlm (or EAS-compatible) service.")
@click.option(
    "--data",
    "data_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Dataset to evaluate on (JSON array of {instruction, output}).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write metrics.json, predictions.jsonl, confusion.png, report.md and report.html here.",
)
@click.option(
    "--free-form",
    is_flag=True,
    help="Decode without the intent grammar (the reference script's way). Default: constrained.",
)
@click.option(
    "--api",
    type=click.Choice(["intents", "eas"]),
    default="intents",
    show_default=True,
    help="--url only: POST /v1/intents, or the EAS-compatible POST / (free-form text).",
)
@click.option("--token", envvar="INTENTLM_API_TOKEN", help="--url only: API token [env INTENTLM_API_TOKEN].")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=16,
    show_default=True,
    help="--url only: requests in flight at once.",
)
@click.option("--system-prompt", help="Override the model card's system prompt.")
@click.option(
    "--oos-label",
    default=DEFAULT_OOS_LABEL,
    show_default=True,
    help="Intent name of out-of-scope records (for out-of-scope recall).",
)
@click.option(
    "--calibrate",
    is_flag=True,
    help="--model only: on this held-out IN-SCOPE data (the validation split), fit the confidence "
    "temperature and choose the out-of-scope threshold (on --oos-score) that rejects at most 1 % of "
    "correct in-scope answers (for typicality: of these and the training requests' cross-fitted "
    "scores); write both into the model's intentlm.json (the server's defaults).",
)
@click.option(
    "--oos-score",
    type=click.Choice(["confidence", "typicality"]),
    default="typicality",
    show_default=True,
    help="--calibrate: the score the out-of-scope threshold applies to. typicality: closeness of the "
    "prompt's hidden state to the training requests (needs the model's typicality.npz; finds "
    "the most out-of-scope requests, docs/decisions.md); confidence: the intent names' probability.",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default="auto",
    show_default=True,
    help="--model only: compute dtype; auto: bfloat16 where the hardware computes it "
    "natively (CUDA, AVX512-BF16/AMX CPUs), else float32 (the server's rule).",
)
@click.option("--limit", type=click.IntRange(1), help="Evaluate only the first N records.")
@click.option(
    "--compare",
    nargs=2,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    metavar="A/metrics.json B/metrics.json",
    help="Show two earlier runs side by side instead.",
)
def eval_command(
    model_dir: Path | None,
    url: str | None,
    data_file: Path | None,
    report_dir: Path | None,
    free_form: bool,
    api: str,
    token: str | None,
    concurrency: int,
    system_prompt: str | None,
    oos_label: str,
    calibrate: bool,
    oos_score: str,
    dtype: str,
    limit: int | None,
    compare: tuple[Path, Path] | None,
) -> None:
    """Evaluate a model directory (--model) or a running service (--url) on --data.

    Prints the reference script's two figures (computed exactly as that script does), then
    per-intent precision/recall/F1, multi-intent and out-of-scope figures and the most confused
    intents; --report writes them with a confusion matrix and the predictions.

    \b
      intentlm eval --model models/mine --data test.json --report out/
      intentlm eval --url http://127.0.0.1:8000 --data test.json
      intentlm eval --compare out-a/metrics.json out-b/metrics.json
    """
    from eval import report

    if compare:
        if model_dir or url or data_file:
            raise click.UsageError("--compare takes two metrics.json files and nothing to evaluate")
        try:
            a, b = (report.read_result(path) for path in compare)
        except ValueError as exc:
            raise click.ClickException(f"not an intentlm metrics.json: {exc}") from None
        click.echo(report.compare_report(a, b, names=(str(compare[0].parent), str(compare[1].parent))))
        return
    if (model_dir is None) == (url is None):
        raise click.UsageError("give exactly one of --model DIR or --url URL (or --compare A B)")
    if data_file is None:
        raise click.UsageError("--data FILE is required")
    if calibrate and (model_dir is None or free_form):
        raise click.UsageError("--calibrate needs --model DIR and constrained decoding")

    from eval.metrics import compute_metrics, score_record
    from service.dataset import DatasetError, file_sha256, load_dataset

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        records = load_dataset(data_file)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    records = records[:limit] if limit else records
    if not records:
        raise click.ClickException(f"{data_file}: no records to evaluate")
    instructions = [r.instruction for r in records]
    golds = [r.output for r in records]

    start = time.perf_counter()
    rule = None
    if model_dir is not None:
        from eval.runner import model_card
        from service.hardware import choose_dtype
        from service.scope import OutOfScopeRule

        click.echo(f"intentlm eval: {choose_dtype(dtype)}", err=True)  # type: ignore[arg-type]

        # Calibration looks at the raw scores, and free-form decoding is the reference script's, which has
        # no out-of-scope step; a constrained evaluation applies the card's thresholds, as the server does.
        rule = OutOfScopeRule() if calibrate or free_form else model_card(model_dir).oos_rule()
    predictions = _predict(
        model_dir,
        url,
        records,
        free_form=free_form,
        api=api,
        token=token,
        concurrency=concurrency,
        system_prompt=system_prompt,
        oos_label=oos_label,
        oos_rule=rule,
        dtype=dtype,
    )
    wall_s = time.perf_counter() - start

    latencies = [p.latency_ms for p in predictions if p.latency_ms is not None]
    metrics = compute_metrics(
        golds,
        [p.text for p in predictions],
        instructions=instructions,
        oos_label=oos_label,
        latencies_ms=latencies or None,
    )
    constrained = not free_form and not (url and api == "eas")
    result = report.EvalResult(
        run=report.RunInfo(
            source=str(model_dir or url),
            mode="model" if model_dir else f"url ({api})",
            data=str(data_file),
            data_sha256=file_sha256(data_file),
            records=len(records),
            constrained=constrained,
            wall_s=round(wall_s, 3),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            oos_label=oos_label,
        ),
        metrics=metrics,
    )
    scores = [score_record(g, p.text) for g, p in zip(golds, predictions)]
    rows = report.prediction_rows(instructions, golds, predictions, scores)
    if calibrate:
        rule = _calibrate(model_dir, rows, oos_label, oos_score, data_file)  # type: ignore[arg-type]
    if rule is not None:
        result.run.oos_threshold = rule.confidence_threshold or None
        result.run.typicality_threshold = rule.typicality_threshold or None
    click.echo(report.console_report(result))
    if report_dir is not None:
        out = report.write_report(report_dir, result, rows)
        click.echo(f"\nreport: {out / 'report.html'}")


def _calibrate(model_dir: Path, rows: list[dict], oos_label: str, oos_score: str, data_file: Path) -> OutOfScopeRule:
    """Fit the confidence temperature and choose the out-of-scope threshold on ``oos_score`` (in-scope rows, and
    for typicality the training requests' cross-fitted scores too); write them into the card, replacing its
    earlier thresholds.

    The rows' confidences are already under the card's temperature, so the fitted one multiplies it.
    """
    from eval.calibration import (
        KEEP,
        accuracy_at,
        choose_threshold,
        ece_noise,
        expected_calibration_error,
        fit_temperature,
        from_rows,
        rescale,
    )
    from eval.runner import model_card
    from service.modelcard import write_card
    from service.typicality import IntentStatistics

    c = from_rows(rows, oos_label)
    if c is None or not c.in_scope:
        raise click.ClickException(f"{data_file}: no in-scope record with a confidence to calibrate on")
    card = model_card(model_dir)
    factor = fit_temperature(c.in_scope, c.in_scope_correct)
    calibrated = rescale(c.in_scope, factor)
    scores = calibrated if oos_score == "confidence" else c.scores(oos_score)
    if scores is None:
        raise click.ClickException(
            f"{model_dir}: the model has no typicality statistics (typicality.npz) to "
            "score typicality with; calibrate --oos-score confidence, or retrain it"
        )
    # Typicality pools the validation answers with the training requests' cross-fitted scores (service.typicality):
    # more answers to bound the rejection of new in-scope requests with (smart-home split: 115 + 1 037).
    statistics = IntentStatistics.load(model_dir) if oos_score == "typicality" else None
    held_out = statistics.held_out.tolist() if statistics is not None else []
    pooled = list(c.in_scope_correct) + [True] * len(held_out)
    threshold = choose_threshold(list(scores) + held_out, pooled)
    card.confidence_temperature = round(card.confidence_temperature * factor, 4)
    card.oos_threshold = threshold if oos_score == "confidence" else 0.0
    card.typicality_threshold = threshold if oos_score == "typicality" else None
    if not threshold:
        click.echo(
            f"warning: {sum(pooled)} correct in-scope answers cannot bound the rejection of "
            f"new ones to {1 - KEEP:.0%} (it takes {round(1 / (1 - KEEP)) - 1}): out-of-scope threshold off",
            err=True,
        )
    card.metrics["calibration"] = {
        "data": str(data_file),
        "records": len(c.in_scope),
        "training_scores": len(held_out),
        "keep": KEEP,
        "oos_score": oos_score,
        "in_scope_accuracy": round(accuracy_at(0.0, scores, c.in_scope_correct), 4),
        "in_scope_accuracy_at_threshold": round(accuracy_at(threshold, scores, c.in_scope_correct), 4),
        "ece_before": round(expected_calibration_error(c.in_scope, c.in_scope_correct), 4),
        "ece": round(expected_calibration_error(calibrated, c.in_scope_correct), 4),
        # what a perfectly calibrated confidence would show on these records: a smaller "ece" is not measurable here
        "ece_floor": round(ece_noise(calibrated)[0], 4),
    }
    write_card(model_dir, card)
    click.echo(
        f"calibrated: confidence_temperature = {card.confidence_temperature}, {oos_score} threshold = "
        f"{threshold:.6f} written to {model_dir / 'intentlm.json'} ({card.metrics['calibration']})"
    )
    return card.oos_rule()


def _predict(
    model_dir: Path | None,
    url: str | None,
    records: list[Record],
    *,
    free_form: bool,
    api: str,
    token: str | None,
    concurrency: int,
    system_prompt: str | None,
    oos_label: str,
    oos_rule: OutOfScopeRule | None,
    dtype: str,
) -> list[Prediction]:
    """Run the chosen predictor; its failures become one clear line, not a traceback."""
    from eval.runner import RunnerError, predict_with_model, predict_with_url

    try:
        if url is not None:
            return predict_with_url(
                url,
                [r.instruction for r in records],
                api=api,
                token=token,  # type: ignore[arg-type]
                constrained=not free_form,
                system_prompt=system_prompt,
                concurrency=concurrency,
            )
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        return predict_with_model(
            model_dir,
            [r.instruction for r in records],
            constrained=not free_form,
            fallback_intents=sorted({c.name for r in records for c in r.calls()}),
            system_prompt=system_prompt,
            oos_label=oos_label,
            oos_rule=oos_rule,
            dtype=dtype,
        )  # type: ignore[arg-type]
    except RunnerError as exc:
        raise click.ClickException(str(exc)) from None
