"""The ``intentlm`` command line: one click group, each subcommand living beside the logic it drives.

Subcommands are imported only when they run (or when ``--help`` lists them, from their short help
below), so ``intentlm --help`` answers without importing torch, vLLM or FastAPI.
"""

from __future__ import annotations

import importlib

import click

# name -> ("module:attribute", short help shown by `intentlm --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("training.data.cli:data", "Datasets: check against the strategy, split, iTAG conversion."),
    "model": ("training.cli:model", "Prepare the base/demo model, show what a model directory holds."),
    "train": ("training.cli:train", "Fine-tune (full, LoRA, QLoRA) into a merged model directory."),
    "eval": ("eval.cli:eval_command", "Evaluate a model directory or a running service on a dataset."),
    "serve": ("service.cli:serve", "Serve a model: EAS API, /v1/intents, metrics, health, web page."),
    "ask": ("clients.cli:ask", "Ask a running service for the intents of an utterance."),
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[cmd_name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="intentlm")
def main() -> None:
    """intentlm: labelled utterances in, a low-latency LLM intent service out.

    \b
    The pipeline:
      intentlm data check train.json         lint the data against the labelling strategy
      intentlm model prepare                 convert the default base model (once)
      intentlm train --data train.json --output models/mine
      intentlm eval --model models/mine --data test.json --report out/
      intentlm serve --model models/mine     EAS-compatible API on :8000
      intentlm ask "turn the lights off"     ask it
    """
