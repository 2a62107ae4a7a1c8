"""``intentlm ask``: the command-line client, a superset of the PAI reference client's flags.

Three modes, chosen by the arguments:

* ``intentlm ask TEXT``: the intents of TEXT from ``POST /v1/intents``, one per line (``--json``:
  the whole reply);
* ``intentlm ask -``: utterances from standard input, one per line, sent in batches; JSON Lines out,
  one object per input line in input order, each with its ``text``;
* ``intentlm ask --prompt TEXT``: free-form generation on the EAS-compatible ``POST /`` with the
  reference client's sampling flags (``--stream`` prints the answer as it grows).

``--history-file`` keeps a conversation across invocations: the turns it holds are sent as
``history`` and the new turn is appended to it afterwards.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import TextIO

import click

from clients.client import DEFAULT_URL, MAX_BATCH, TOKEN_ENV, URL_ENV, IntentClient, Retries
from clients.errors import AuthError, IntentLMConnectionError, IntentLMError, PayloadTooLargeError
from clients.models import History


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("text", nargs=-1)
@click.option("--prompt", help="Free-form generation on the EAS endpoint (POST /) instead of /v1/intents.")
@click.option("--system-prompt", help="System prompt (default: the one the model was trained with).")
@click.option("--top-k", type=int, help="[--prompt] Sample from the k likeliest tokens (-1: all). Server default 1.")
@click.option("--top-p", type=float, help="[--prompt] Nucleus sampling mass, 0 < p <= 1. Server default 0.8.")
@click.option("--temperature", type=float, help="[--prompt] 0 (greedy, the server default) to 2.")
@click.option("--max-new-tokens", type=int, help="[--prompt] Answer length limit. Server default 64.")
@click.option("--stream", is_flag=True, help="[--prompt] Print the answer as it is generated.")
@click.option(
    "--history-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON file of [[user, assistant], ...] turns: sent as history, then the new turn is appended.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole reply as JSON.")
@click.option(
    "--batch-size", type=click.IntRange(1, MAX_BATCH), default=32, show_default=True, help="[ask -] Lines per request."
)
@click.option("--url", envvar=URL_ENV, default=DEFAULT_URL, show_default=True, show_envvar=True, help="Service URL.")
@click.option("--token", envvar=TOKEN_ENV, show_envvar=True, help="API token (sent as the Authorization header).")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds to wait for an answer.")
@click.option(
    "--retries", type=click.IntRange(0), default=3, show_default=True, help="Retries when busy or unreachable."
)
def ask(
    text: tuple[str, ...],
    prompt: str | None,
    system_prompt: str | None,
    top_k: int | None,
    top_p: float | None,
    temperature: float | None,
    max_new_tokens: int | None,
    stream: bool,
    history_file: Path | None,
    as_json: bool,
    batch_size: int,
    url: str,
    token: str | None,
    timeout: float,
    retries: int,
) -> None:
    """Ask a running intentlm (or EAS) service.

    \b
      intentlm ask "turn the lights off"            intents, one per line
      intentlm ask --json "wake me up at 7"         the whole reply
      intentlm ask - < utterances.txt               JSON Lines, batched
      intentlm ask --prompt "How can I get there?" --temperature 0.95 --stream
    """
    utterance = " ".join(text)
    sampling = {"top_k": top_k, "top_p": top_p, "temperature": temperature, "max_new_tokens": max_new_tokens}
    if prompt is not None and utterance:
        raise click.UsageError("give either TEXT (intents) or --prompt (free-form), not both")
    if prompt is None:
        if not utterance:
            raise click.UsageError('nothing to ask: give TEXT, "-" to read standard input, or --prompt')
        chat_only = [f"--{name.replace('_', '-')}" for name, value in sampling.items() if value is not None]
        if stream:
            chat_only.append("--stream")
        if chat_only:
            raise click.UsageError(f"{', '.join(chat_only)}: only with --prompt (free-form generation)")
    if utterance == "-" and history_file is not None:
        raise click.UsageError("--history-file does not apply to standard-input mode (each line stands alone)")

    history = _read_history(history_file) if history_file else []
    client = IntentClient(url, token=token, timeout=timeout, retries=Retries(total=retries))
    try:
        with client:
            if utterance == "-":
                _ask_lines(client, sys.stdin, batch_size, system_prompt)
                return
            if prompt is not None:
                turn = _chat(client, prompt, history, system_prompt, sampling, stream, as_json)
            else:
                turn = _predict(client, utterance, history, system_prompt, as_json)
    except IntentLMError as error:
        raise click.ClickException(_explain(error, url)) from error
    if history_file:
        _write_history(history_file, [*history, turn])


def _predict(
    client: IntentClient, utterance: str, history: History, system_prompt: str | None, as_json: bool
) -> tuple[str, str]:
    prediction = client.predict(utterance, history=history or None, system_prompt=system_prompt)
    if as_json:
        click.echo(prediction.model_dump_json())
    elif prediction.intents:
        for intent in prediction.intents:
            click.echo(str(intent))
    else:
        click.echo(f"(no intent; the model wrote {prediction.raw!r})", err=True)
    return utterance, prediction.raw


def _chat(
    client: IntentClient,
    prompt: str,
    history: History,
    system_prompt: str | None,
    sampling: dict[str, int | float | None],
    stream: bool,
    as_json: bool,
) -> tuple[str, str]:
    if stream and not as_json:
        response = ""
        for text in client.stream(prompt, history, system_prompt=system_prompt, **sampling):
            # Each update carries the whole text so far: print only what is new.
            new = text[len(response) :] if text.startswith(response) else "\n" + text
            click.echo(new, nl=False)
            response = text
        click.echo()
        return prompt, response
    if stream:
        response = ""
        for response in client.stream(prompt, history, system_prompt=system_prompt, **sampling):
            pass
        new_history = [*history, (prompt, response)]
    else:
        response, new_history = client.chat(prompt, history, system_prompt=system_prompt, **sampling)
    if as_json:
        click.echo(json.dumps({"response": response, "history": new_history}, ensure_ascii=False))
    else:
        click.echo(response)
    return prompt, response


def _ask_lines(client: IntentClient, lines: TextIO, batch_size: int, system_prompt: str | None) -> None:
    """Label standard input in batches; a request fails whole, so the output never skips a line."""
    for batch in _batches((line.rstrip("\r\n") for line in lines if line.strip()), batch_size):
        try:
            predictions = client.predict_batch(batch, system_prompt=system_prompt)
        except PayloadTooLargeError as error:
            raise click.ClickException(f"{error} — try a smaller --batch-size") from error
        for utterance, prediction in zip(batch, predictions, strict=True):
            click.echo(json.dumps({"text": utterance, **prediction.model_dump(mode="json")}, ensure_ascii=False))
        sys.stdout.flush()


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(islice(items, size)):
        yield batch


def _read_history(path: Path) -> History:
    """The turns saved in ``path``; a missing file starts a new conversation."""
    if not path.exists():
        return []
    try:
        turns = json.loads(path.read_text(encoding="utf-8") or "[]")
        if not isinstance(turns, list) or not all(
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(part, str) for part in turn) for turn in turns
        ):
            raise ValueError("expected a JSON list of [user, assistant] string pairs")
    except ValueError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--history-file") from exc
    return [(user, assistant) for user, assistant in turns]


def _write_history(path: Path, history: History) -> None:
    """Replace the file atomically: an interrupted write never loses the conversation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump([list(turn) for turn in history], f, ensure_ascii=False, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _explain(error: IntentLMError, url: str) -> str:
    """The error with the one hint that fixes the usual cause."""
    if isinstance(error, AuthError):
        return f"{error} — pass --token or set {TOKEN_ENV}"
    if isinstance(error, IntentLMConnectionError):
        return f"cannot reach {url}: {error.message} — is `intentlm serve` running there? (--url or {URL_ENV})"
    return str(error)
