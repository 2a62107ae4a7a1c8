"""``intentlm model`` (prepare, info) and ``intentlm train``. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from training.config import DEFAULT_PRESET, PRESETS, TrainConfig


@click.group()
def model() -> None:
    """Prepare the default models and inspect model directories."""


@model.command()
@click.option("--force", is_flag=True, help="Convert again even if the directory exists.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the base model (default: $INTENTLM_HOME/models/SmolLM2-135M-Instruct); "
    "the demo model goes beside it.",
)
def prepare(force: bool, output: Path | None) -> None:
    """Convert the bundled SmolLM2-135M-Instruct GGUF into a safetensors model directory (once), and
    build the smart-home demo model from it (base + the bundled demo LoRA adapter, merged)."""
    from service.modelcard import base_model_dir, demo_model_dir
    from training.basemodel import (
        BaseModelError,
        is_prepared,
        prepare_base_model,
        prepare_demo_model,
    )

    target = output or base_model_dir()
    try:
        if is_prepared(target) and not force:
            click.echo(f"base model ready: {target}")
        else:
            click.echo(f"converting the SmolLM2-135M-Instruct GGUF into {target} (about 20 s) ...", err=True)
            click.echo(f"base model ready: {prepare_base_model(target, force=force)}")
        demo = target.parent / demo_model_dir().name if output else demo_model_dir()
        click.echo(f"demo model ready: {prepare_demo_model(target, demo, force=force)}")
    except BaseModelError as exc:
        raise click.ClickException(str(exc)) from exc


@model.command()
@click.option(
    "--model",
    "adapter",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The adapter directory to merge (intentlm train --adapter, training/demo).",
)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The model directory to write.")
def merge(adapter: Path, output: Path) -> None:
    """Merge an adapter directory into its base: one model served without LoRA's cost (docs/serving.md)."""
    from service.modelcard import ModelCardError, is_adapter_dir, weights_dir
    from training.merge import merge_adapter_dir

    if not is_adapter_dir(adapter):
        raise click.ClickException(f"{adapter} is not an adapter directory (no adapter_config.json)")
    try:
        base = weights_dir(adapter)
    except ModelCardError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"merged: {merge_adapter_dir(adapter, output, base)}")


@model.command()
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The model directory to describe.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(model_dir: Path, as_json: bool) -> None:
    """Print what a model directory holds: architecture, weights, chat template, intents, training data."""
    from service.modelcard import ModelCardError
    from service.typicality import IntentStatistics
    from training.basemodel import BaseModelError, model_info

    try:
        details = model_info(model_dir)
    except (BaseModelError, ModelCardError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(details, indent=2))
        return
    card = details.pop("intentlm")
    for key, value in details.items():
        click.echo(f"{key:>24}: {value}")
    if card is None:
        click.echo(f"{'intentlm':>24}: none (not trained by intentlm; served with defaults)")
        return
    for key in (
        "base_model",
        "system_prompt",
        "apply_chat_template",
        "intents",
        "args_from_text",
        "confidence_temperature",
        "oos_threshold",
        "typicality_threshold",
        "data",
        "metrics",
        "created_at",
    ):
        click.echo(f"{key:>24}: {card.get(key)}")
    statistics = IntentStatistics.load(model_dir)
    click.echo(
        f"{'typicality':>24}: "
        + (
            f"statistics of {len(statistics.intents)} intents, "
            f"{statistics.means.shape[1]} dimensions, "
            f"{len(statistics.held_out)} held-out training scores"
            if statistics
            else "none (no typicality score)"
        )
    )


def _knobs_help() -> str:
    preset = ", ".join(f"{k} {v}" for k, v in PRESETS[DEFAULT_PRESET].items())
    lines = [
        "\b",
        f"Knobs (--NAME VALUE) [default]; unless --preset says otherwise, the '{DEFAULT_PRESET}' "
        f"preset then sets: {preset}.",
    ]
    for name, field in TrainConfig.model_fields.items():
        lines.append(f"  {name} [{field.default}]: {field.description}")
    return "\n".join(lines)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, epilog=_knobs_help())
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="Training dataset (JSON array).")
@click.option("--output", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    default=DEFAULT_PRESET,
    show_default=True,
    help="Starting knob values: 'intent' is the studied recipe (docs/decisions.md); full/lora/qlora "
    "the reference's recommended ones (global batch scaled to the data); none the knob defaults.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="YAML/JSON file of knobs (applied after the preset, before flags).",
)
@click.option(
    "--base-model",
    "base_model",
    type=click.Path(path_type=Path),
    default=None,
    help="Base model directory (default: the prepared SmolLM2-135M-Instruct).",
)
@click.option(
    "--eval-data",
    "eval_data",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset scored at the end (intent/parameter accuracy), stored in intentlm.json.",
)
@click.option(
    "--tensorboard-dir",
    "tensorboard_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="TensorBoard log directory (default: OUTPUT/tensorboard).",
)
@click.option(
    "--adapter",
    is_flag=True,
    help="LoRA runs: write an adapter directory (adapter, card, statistics; served over its base) instead of "
    "merged weights.",
)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in OUTPUT.checkpoints.")
@click.option(
    "--dry-run",
    "dry_run",
    is_flag=True,
    help="Print the resolved config, token statistics and estimated steps/time; train nothing.",
)
@click.pass_context
def train(
    ctx: click.Context,
    data: Path,
    output: Path,
    preset: str,
    config_file: Path | None,
    base_model: Path | None,
    eval_data: Path | None,
    tensorboard_dir: Path | None,
    adapter: bool,
    resume: bool,
    dry_run: bool,
) -> None:
    """Fine-tune the base model on DATA into a merged model directory OUTPUT (with --adapter: an adapter directory).

    Any knob is a flag spelled as its name in the reference, e.g. --learning_rate 3e-4 --lora_dim 16.
    The knobs, with their defaults, are listed below.
    """
    from service.dataset import DatasetError, load_dataset
    from service.modelcard import base_model_dir
    from training.config import (
        ConfigError,
        parse_knob_args,
        read_config_file,
        resolve_config,
    )

    try:
        flags = parse_knob_args(ctx.args)
        file_values = read_config_file(config_file) if config_file else None
        config, explicit = resolve_config(preset, file_values, flags)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc

    from training.trainer import TrainError, describe, dry_run_report, plan_training

    try:
        if eval_data is not None:
            load_dataset(eval_data)
        plan = plan_training(data, output, config, explicit, base_model or base_model_dir(), resume=resume)
    except (DatasetError, TrainError) as exc:
        raise click.ClickException(str(exc)) from exc
    _quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    logging.getLogger("intentlm.train").setLevel(logging.INFO)  # its progress lines (threshold folds)
    for line in describe(plan):
        click.echo(line, err=True)
    if dry_run:
        click.echo(json.dumps(dry_run_report(plan), indent=2))
        return
    from training.trainer import train as run_training

    try:
        card = run_training(plan, resume=resume, tensorboard_dir=tensorboard_dir, eval_data=eval_data, adapter=adapter)
    except TrainError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"output": str(output), "metrics": card.metrics}, indent=2))


def _quiet_libraries() -> None:
    """transformers/PEFT warnings that do not concern the user (e.g. tied-weight notes) are hidden, and
    bitsandbytes' note that an optional faster CPU 4-bit kernel package is absent (4-bit works without it)."""
    import warnings

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
