"""iTAG manifests (DESIGN §2): labelled manifests in, datasets out, and back for a labelling job.

A manifest is JSON Lines. What iTAG exports after labelling looks like (one line)::

    {"data": {"instruction": "...", "_itag_index": ""},
     "label-1787402095227383808": {"results": [{"questionId": "2", "data": "play_music()",
                                                "markTitle": "output", "type": "survey/value"}]},
     "abandonFlag": 0, "abandonRemark": null}

Decisions where the format leaves room:

* ``data`` keys other than ``instruction`` are the record's extra keys, so a dataset's extra keys
  survive ``to-itag`` → labelling → ``from-itag``. Keys starting with ``_itag`` are iTAG's own
  bookkeeping and are dropped, as are the row's top-level keys other than the labels.
* In a label, the answer is the result whose ``markTitle`` is ``output`` (the template of the
  reference); a label with a single result and no such title uses that result, as the reference's
  conversion script does.
* ``label-intentlm`` holds a model's pre-label (written by ``to-itag --model``). It is a
  suggestion, never an answer: a row whose only label is the pre-label counts as not labelled.
* Several labellers' keys (several jobs over the same rows) must agree; when they don't, the
  conversion fails naming the lines, unless the caller picks one key.
* Problems are collected over all lines and reported together as ``file:line: what``, and nothing
  is written when there is one: a dataset missing rows silently is worse than no dataset.
* ``uncertain_rows`` makes a job of the server's uncertain-traffic log (service.uncertain) instead
  of a dataset: the same manifest, pre-labelled with the answers the server gave.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from service.dataset import DatasetError, Record, json_type, same_text_key
from service.errors import IntentlmError
from service.intents import IntentParseError, canonical, parse, try_parse
from service.modelcard import ModelCardError, atomic_write_bytes
from service.uncertain import LogEntry

PRELABEL_KEY = "label-intentlm"
LABEL_PREFIX = "label-"
OUTPUT_TITLE = "output"
ITAG_BOOKKEEPING_PREFIX = "_itag"
# Enough problems to fix in one go; a file of garbage should not print a million lines.
MAX_PROBLEMS = 50


class PrelabelError(IntentlmError, RuntimeError):
    """A model directory cannot pre-label: no card, no intents, or a card that does not load."""


class ItagError(IntentlmError, ValueError):
    """A manifest breaks the format; ``problems`` holds each bad line as a ``DatasetError``."""

    def __init__(self, problems: Sequence[DatasetError], more: int = 0) -> None:
        self.problems = list(problems)
        lines = [str(p) for p in self.problems]
        if more:
            lines.append(f"... and {more} more problems")
        super().__init__("\n".join(lines))


@dataclass
class Conversion:
    """The records read from labelled manifests, and the rows skipped on purpose."""

    records: list[Record]
    abandoned: int


def read_manifests(paths: Iterable[str | os.PathLike[str]], *, label_key: str | None = None) -> Conversion:
    """Convert labelled manifests into records, in file and line order.

    ``label_key`` (e.g. ``label-1787402095227383808``) takes the answer from that key only,
    ignoring the others; by default the labellers' keys must agree.
    """
    records: list[Record] = []
    problems: list[DatasetError] = []
    more = 0
    abandoned = 0
    for path in paths:
        for number, raw in _lines(Path(path)):
            try:
                record = _row(Path(path), number, raw, label_key)
            except DatasetError as exc:
                if len(problems) < MAX_PROBLEMS:
                    problems.append(exc)
                else:
                    more += 1
                continue
            if record is None:
                abandoned += 1
            else:
                records.append(record)
    if problems:
        raise ItagError(problems, more)
    return Conversion(records, abandoned)


def manifest_bytes(records: Sequence[Record], prelabels: Sequence[str | None] | None = None) -> bytes:
    """The manifest for a labelling job: one ``{"data": {...}}`` line per record.

    ``prelabels`` (one output or None per record) are written in the shape iTAG exports answers
    in, under ``label-intentlm``, so labellers correct a suggestion instead of typing the answer.
    """
    if prelabels is not None and len(prelabels) != len(records):
        raise ValueError(f"{len(prelabels)} pre-labels for {len(records)} records")
    lines = []
    for index, record in enumerate(records):
        row: dict[str, Any] = {"data": {"instruction": record.instruction, **record.extra}}
        if prelabels is not None and prelabels[index] is not None:
            result = {"data": prelabels[index], "markTitle": OUTPUT_TITLE, "type": "survey/value"}
            row[PRELABEL_KEY] = {"results": [result]}
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(lines).encode("utf-8")


def write_manifest(
    path: str | os.PathLike[str], records: Sequence[Record], prelabels: Sequence[str | None] | None = None
) -> None:
    """Write the manifest atomically (see ``manifest_bytes``)."""
    atomic_write_bytes(path, manifest_bytes(records, prelabels))


def uncertain_rows(entries: Iterable[LogEntry]) -> tuple[list[Record], list[str]]:
    """The labelling job of an uncertain-traffic log (service.uncertain): records and their pre-labels.

    Most uncertain first: the answers the out-of-scope rule rejected (the user got the out-of-scope label), then the
    in-scope ones; each group by rising confidence, ties in log order. A request asked several times (the same
    instruction up to case and whitespace, history folded in) is one row, kept where it was most uncertain: labellers
    label it once. The pre-label is the answer the server gave, ``oos()`` for a rejected request, so that a
    labeller confirms or corrects what the user got; a record labelled ``oos()`` teaches training what is out of
    scope (training.trainer.in_scope).
    """
    ordered = sorted(entries, key=lambda e: (not e.rejected, e.confidence, e.line))
    kept: dict[str, LogEntry] = {}
    for entry in ordered:
        if entry.instruction:  # a whitespace-only request has nothing to label
            kept.setdefault(same_text_key(entry.instruction), entry)
    rows = list(kept.values())
    return [Record(e.instruction, e.intents) for e in rows], [e.intents for e in rows]


def prelabel(model_dir: str | os.PathLike[str], instructions: Sequence[str]) -> list[str | None]:
    """The model's answer for each instruction, or None where it ran out of tokens mid-answer.

    The evaluation runner does the work (one batched vLLM call, the model's own prompt, decoding
    constrained to the intents of its ``intentlm.json``), so every suggestion parses and names an
    intent the labellers know.
    """
    from eval.runner import RunnerError, predict_with_model

    try:
        predictions = predict_with_model(model_dir, instructions)
    except (RunnerError, ModelCardError) as exc:
        raise PrelabelError(f"cannot pre-label: {exc}") from None
    texts = [prediction.text.strip() for prediction in predictions]
    return [text if try_parse(text) else None for text in texts]


def _lines(path: Path) -> Iterable[tuple[int, bytes]]:
    """Stream the file's lines (manifests can be large) with their 1-based numbers."""
    try:
        with path.open("rb") as f:
            yield from enumerate(f, start=1)
    except FileNotFoundError:
        raise DatasetError(path, "no such file") from None
    except IsADirectoryError:
        raise DatasetError(path, "is a directory, not a manifest file") from None


def _row(path: Path, number: int, raw: bytes, label_key: str | None) -> Record | None:
    """One manifest line as a record; None for an abandoned row."""

    def error(message: str, field: str | None = None) -> DatasetError:
        return DatasetError(path, message, line=number, field=field)

    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not valid UTF-8 (byte {exc.start} of the line)") from None
    if not text.strip():
        raise error("empty line (a manifest has one JSON object per line)")
    try:
        # orjson, unlike json, refuses lone surrogates (text that cannot be written back as
        # UTF-8) and bounds the nesting depth instead of overflowing the stack.
        row = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise error(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(row, dict):
        raise error(f"expected a JSON object, found {json_type(row)}")

    flag = row.get("abandonFlag", 0)
    if flag not in (0, 1):
        raise error(f"expected 0 or 1, found {flag!r}", "abandonFlag")
    if flag == 1:
        return None

    data = row.get("data")
    if not isinstance(data, dict):
        raise error("missing" if data is None else f"expected an object, found {json_type(data)}", "data")
    instruction = data.get("instruction")
    if not isinstance(instruction, str):
        what = "missing" if instruction is None else f"expected a string, found {json_type(instruction)}"
        raise error(what, "data.instruction")
    if not instruction.strip():
        raise error("empty", "data.instruction")
    if "output" in data:
        raise error("the answer belongs in a label-* key, not in data", "data.output")

    answers = {
        key: _answer(key, value, error)
        for key, value in row.items()
        if key.startswith(LABEL_PREFIX) and (label_key is None or key == label_key)
    }
    if label_key is not None and label_key not in answers:
        raise error(f"no {label_key!r} label")
    if label_key is None:
        answers.pop(PRELABEL_KEY, None)
    if not answers:
        hint = " (only the model's pre-label)" if PRELABEL_KEY in row else ""
        raise error(f"not labelled{hint}")
    if len({canonical(a) for a in answers.values()}) > 1:
        said = ", ".join(f"{key} says {value!r}" for key, value in answers.items())
        raise error(f"labels disagree: {said}; choose one with --label-key")

    extra = {k: v for k, v in data.items() if k != "instruction" and not k.startswith(ITAG_BOOKKEEPING_PREFIX)}
    return Record(instruction, next(iter(answers.values())), extra, number)


def _answer(key: str, label: Any, error: Callable[..., DatasetError]) -> str:
    """The ``output`` answer of one label, parsed so that a typo is caught at conversion."""
    results = label.get("results") if isinstance(label, dict) else None
    if not isinstance(results, list) or not results:
        raise error("expected an object with a non-empty 'results' list", key)
    titled = [i for i, r in enumerate(results) if isinstance(r, dict) and r.get("markTitle") == OUTPUT_TITLE]
    if len(titled) > 1:
        raise error(f"{len(titled)} results titled {OUTPUT_TITLE!r}", f"{key}.results")
    if not titled and len(results) > 1:
        raise error(f"no result titled {OUTPUT_TITLE!r} among {len(results)}", f"{key}.results")
    index = titled[0] if titled else 0
    result = results[index]
    field = f"{key}.results[{index}].data"
    answer = result.get("data") if isinstance(result, dict) else None
    if not isinstance(answer, str):
        raise error("missing" if answer is None else f"expected a string, found {json_type(answer)}", field)
    if not answer.strip():
        raise error("empty answer", field)
    try:
        parse(answer)
    except IntentParseError as exc:
        raise error(str(exc), field) from None
    return answer
