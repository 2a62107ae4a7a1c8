"""``intentlm model`` (prepare, info) and ``intentlm train``. Heavy imports happen inside the commands."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def model() -> None:
    """Prepare the default models and inspect model directories."""


@model.command()
@click.option("--force", is_flag=True, help="Convert again even if the directory exists.")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the base model (default: $INTENTLM_HOME/models/SmolLM2-135M-Instruct).",
)
def prepare(force: bool, output: Path | None) -> None:
    """Convert the bundled SmolLM2-135M-Instruct GGUF into a safetensors model directory (once)."""
    from training.basemodel import BaseModelError, is_prepared, prepare_base_model
    from service.modelcard import base_model_dir

    target = output or base_model_dir()
    if is_prepared(target) and not force:
        click.echo(f"base model ready: {target}")
        return
    click.echo(f"converting the SmolLM2-135M-Instruct GGUF into {target} (about 20 s) ...", err=True)
    try:
        path = prepare_base_model(target, force=force)
    except BaseModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"base model ready: {path}")


@model.command()
@click.argument("model_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(model_dir: Path, as_json: bool) -> None:
    """Print what MODEL_DIR holds: architecture, weights, chat template, intents, training data."""
    from training.basemodel import BaseModelError, model_info
    from service.modelcard import ModelCardError

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
    for key in ("base_model", "system_prompt", "apply_chat_template", "intents", "data", "metrics", "created_at"):
        click.echo(f"{key:>24}: {card.get(key)}")
