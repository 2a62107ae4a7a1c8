"""``intentlm data``: check, split, and iTAG conversion. Heavy imports happen inside the commands.

Every bad input ends as a ``click.ClickException`` naming the file, line, record and field (exit 1),
never a traceback; every output is written atomically, so a failed run leaves an existing output
file as it was.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from service.dataset import DatasetError, Record, load_dataset, save_dataset

INPUT = click.Path(exists=True, dir_okay=False, path_type=Path)
OUTPUT = click.Path(dir_okay=False, writable=True, path_type=Path)


@click.group()
def data() -> None:
    """Datasets: check against the labelling strategy, split, convert from and to iTAG manifests."""


@data.command()
@click.argument("file", type=INPUT)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--seq_length",
    "seq_length",
    type=click.IntRange(min=1),
    default=None,
    help="The training seq_length to measure against (default 128).",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Model directory whose tokenizer and prompt measure token lengths (default: the prepared base model, if any).",
)
@click.option("--no-tokens", is_flag=True, help="Skip the token-length measurement (fast on huge files).")
def check(file: Path, as_json: bool, seq_length: int | None, model_dir: Path | None, no_tokens: bool) -> None:
    """Lint FILE against the data-preparation strategy. Exit 1 on errors, 0 with warnings only."""
    from service.modelcard import base_model_dir
    from training.data.check import (
        DEFAULT_SEQ_LENGTH,
        Issue,
        check_records,
        format_report,
        measure_tokens,
        token_issues,
    )

    records = _load(file, check_outputs=False)
    report = check_records(records, file=str(file))
    # The light core (no `train` extra) has no tokenizer library: it lints without the token lengths.
    tokenizers = importlib.util.find_spec("transformers") is not None
    if model_dir is not None and not no_tokens and not tokenizers:
        raise click.UsageError("--model measures token lengths with transformers: install intentlm[train]")
    no_tokens = no_tokens or not tokenizers
    if model_dir is None and not no_tokens and (base_model_dir() / "tokenizer_config.json").exists():
        model_dir = base_model_dir()
    if records and model_dir is not None and not no_tokens:
        report.tokens = measure_tokens(records, model_dir, seq_length or DEFAULT_SEQ_LENGTH)
        report.issues += token_issues(report.tokens)
    elif not no_tokens:
        report.issues.append(
            Issue(
                "info", "no-tokenizer", "token lengths not measured: pass --model DIR or run `intentlm model prepare`"
            )
        )
    click.echo(json.dumps(report.to_json(), ensure_ascii=False, indent=2) if as_json else format_report(report))
    if report.errors:
        raise SystemExit(1)


@data.command("from-itag")
@click.argument("manifests", nargs=-1, required=True, type=INPUT)
@click.option("-o", "--output", required=True, type=OUTPUT, help="The dataset file to write.")
@click.option(
    "--label-key",
    default=None,
    metavar="KEY",
    help="Take answers from this label key only (e.g. label-1787402095227383808) when several labelling jobs disagree.",
)
def from_itag(manifests: tuple[Path, ...], output: Path, label_key: str | None) -> None:
    """Convert labelled iTAG MANIFESTS (exported JSON Lines) into a dataset."""
    from training.data.itag import ItagError, read_manifests

    try:
        conversion = read_manifests(manifests, label_key=label_key)
    except (ItagError, DatasetError) as exc:
        raise click.ClickException(f"{exc}\nnothing written") from None
    if not conversion.records:
        raise click.ClickException(f"no labelled rows ({conversion.abandoned} abandoned); nothing written")
    with _writing(output):
        save_dataset(output, conversion.records)
    click.echo(f"{output}: {len(conversion.records)} records written, {conversion.abandoned} abandoned rows skipped")


@data.command("to-itag")
@click.argument("file", type=INPUT, required=False)
@click.option(
    "--from-log",
    "log_file",
    type=INPUT,
    default=None,
    help="Instead of FILE: the uncertain-traffic log of `intentlm serve --record-uncertain`, most uncertain "
    "first, deduplicated, pre-labelled with the server's answers.",
)
@click.option(
    "--log-model",
    default=None,
    help="With --from-log: only the requests this served model answered (required when the log names several: "
    "each model's utterances go to a job of its own intents).",
)
@click.option("-o", "--output", required=True, type=OUTPUT, help="The manifest file to write.")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Pre-label every row with this model directory's predictions (needs vLLM).",
)
def to_itag(
    file: Path | None, log_file: Path | None, log_model: str | None, output: Path, model_dir: Path | None
) -> None:
    """Write FILE's utterances as an iTAG manifest for a labelling job.

    FILE is a dataset; its outputs may be missing (utterances still to label) and are not
    written: labels come from the labellers, or as suggestions from --model. With --from-log
    LOG instead of FILE, the utterances are the server's uncertain requests.
    """
    from training.data.itag import write_manifest

    if (file is None) == (log_file is None):
        raise click.UsageError("give either FILE or --from-log LOG")
    if log_model is not None and log_file is None:
        raise click.UsageError("--log-model chooses among the requests of --from-log LOG")
    if log_file is not None and model_dir is not None:
        raise click.UsageError("--from-log rows are pre-labelled with the logged answers; --model does not apply")
    prelabels: list[str | None] | None = None
    if file is not None:
        records = _load(file, require_output=False)
    else:
        from service.uncertain import read_log
        from training.data.itag import uncertain_rows

        try:
            entries = list(read_log(log_file))
        except DatasetError as exc:
            raise click.ClickException(str(exc)) from None
        models = sorted({entry.model or "" for entry in entries})
        if log_model is not None:
            entries = [entry for entry in entries if entry.model == log_model]
            if not entries:
                raise click.UsageError(f"{log_file} has no request of --log-model {log_model!r} (it has {models})")
        elif len(models) > 1:
            raise click.UsageError(
                f"{log_file} holds the requests of several models ({', '.join(models)}): choose one with --log-model"
            )
        records, logged = uncertain_rows(entries)
        prelabels = list(logged)
    if model_dir is not None:
        from training.data.itag import PrelabelError, prelabel

        click.echo(f"pre-labelling {len(records)} utterances with {model_dir} ...", err=True)
        try:
            prelabels = prelabel(model_dir, [r.instruction for r in records])
        except PrelabelError as exc:
            raise click.ClickException(str(exc)) from None
    with _writing(output):
        write_manifest(output, records, prelabels)
    what = ""
    if prelabels is not None:
        what = f", {sum(p is not None for p in prelabels)} pre-labelled"
    click.echo(f"{output}: {len(records)} rows to label{what}")


@data.command()
@click.argument("file", type=INPUT)
@click.option(
    "--test-ratio",
    required=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of records for the test side, e.g. 0.1.",
)
@click.option("--seed", default=42, show_default=True, help="Shuffling seed: the same seed gives the same split.")
@click.option("--train-out", required=True, type=OUTPUT, help="Where to write the training side.")
@click.option("--test-out", required=True, type=OUTPUT, help="Where to write the test side.")
def split(file: Path, test_ratio: float, seed: int, train_out: Path, test_out: Path) -> None:
    """Split FILE into train and test, stratified by intent (combination), reproducibly.

    A multi-intent record composed of single-intent records of FILE (joined by the data's connective,
    as in HWU64) goes to the same side as they do, so that no test utterance is trained on.
    """
    from training.data.split import SplitError, split_records

    if train_out.resolve() == test_out.resolve():
        raise click.UsageError("--train-out and --test-out must be different files")
    records = _load(file)
    try:
        result = split_records(records, test_ratio, seed=seed)
    except SplitError as exc:
        raise click.ClickException(str(exc)) from None
    with _writing(test_out):
        save_dataset(test_out, result.test)
    with _writing(train_out):
        save_dataset(train_out, result.train)
    click.echo(f"{train_out}: {len(result.train)} records; {test_out}: {len(result.test)} records (seed {seed})")


def _load(file: Path, **options: bool) -> list[Record]:
    try:
        return load_dataset(file, **options)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Create the parent directory; turn a failed write (full disk, no permission) into a message.

    The write itself is atomic, so a failure leaves an existing file as it was.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
    except OSError as exc:
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None
