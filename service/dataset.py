"""The dataset format (DESIGN §2): a UTF-8 JSON array of ``{"instruction": str, "output": str}``.

Every reader of datasets (linter, trainer, evaluator, iTAG converter) goes through ``load_dataset`` so
that bad input is reported the same way everywhere: ``file:line: record N: field 'x': what is wrong``.
Records keep their extra keys, so converting a file loses nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.errors import IntentlmError
from service.intents import Call, IntentParseError, parse
from service.modelcard import atomic_write_bytes

REQUIRED_FIELDS = ("instruction", "output")


def same_text_key(text: str) -> str:
    """``text`` ignoring case and runs of whitespace: how instructions are compared by the data's strategy
    check (training.data.check) and split (training.data.split)."""
    return " ".join(text.split()).casefold()


class DatasetError(IntentlmError, ValueError):
    """A dataset file breaks the contract; the message names the file, line, record (1-based) and field."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        message: str,
        *,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.record = record
        self.field = field
        where = self.path + (f":{line}" if line is not None else "")
        what = "".join(
            [
                f" record {record}:" if record is not None else "",
                f" field {field!r}:" if field is not None else "",
            ]
        )
        super().__init__(f"{where}:{what} {message}")


@dataclass
class Record:
    """One labelled utterance. ``line`` is where it starts in its file (1-based), for error messages."""

    instruction: str
    output: str
    extra: dict[str, Any] = field(default_factory=dict)
    line: int | None = None

    def calls(self) -> list[Call]:
        return parse(self.output)

    def to_json(self) -> dict[str, Any]:
        return {"instruction": self.instruction, "output": self.output, **self.extra}


def load_dataset(
    path: str | os.PathLike[str], *, check_outputs: bool = True, require_output: bool = True
) -> list[Record]:
    """Read and validate a dataset file.

    ``check_outputs`` checks the content: no empty field, every output parses with the intent
    grammar. Turn it off only where bad content is itself the subject (the linter reports every
    empty field and malformed output instead of stopping at the first); the structure (an array of
    objects with string fields) is always checked.

    ``require_output=False`` accepts records without an ``output`` (their ``output`` is ""): the
    utterances still to be labelled that ``intentlm data to-itag`` reads.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(path, "no such file") from None
    except IsADirectoryError:
        raise DatasetError(path, "is a directory, not a dataset file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DatasetError(path, f"not valid UTF-8 (byte {exc.start})", line=line) from None
    if not text.strip():
        raise DatasetError(path, "empty file (expected a JSON array of records)")
    records = []
    for number, (line, item) in enumerate(_array_items(path, text), start=1):
        records.append(_record(path, number, line, item, check_outputs, require_output))
    return records


def save_dataset(path: str | os.PathLike[str], records: Iterable[Record | dict[str, Any]]) -> None:
    """Write a dataset atomically, in the reference's layout (indented, non-ASCII kept readable)."""
    items = [r.to_json() if isinstance(r, Record) else r for r in records]
    data = json.dumps(items, ensure_ascii=False, indent=4).encode("utf-8") + b"\n"
    atomic_write_bytes(path, data)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _array_items(path: Path, text: str) -> Iterable[tuple[int, Any]]:
    """Yield ``(line, value)`` for each element of the top-level JSON array.

    Decoding element by element (instead of one ``json.loads``) is what lets errors name the line
    of the record they are in.
    """
    decoder = json.JSONDecoder()
    position = _skip_ws(text, 0)
    line = 1 + text.count("\n", 0, position)
    if text[position] != "[":
        kind = "an object" if text[position] == "{" else "not an array"
        raise DatasetError(path, f"the top level is {kind}; a dataset is a JSON array of records", line=line)
    position += 1
    expect_item = True
    count = 0
    while True:
        next_position = _skip_ws(text, position)
        line += text.count("\n", position, next_position)
        position = next_position
        if position >= len(text):
            raise DatasetError(path, "unexpected end of file inside the array", line=line)
        if text[position] == "]" and (not expect_item or count == 0):
            break
        if not expect_item:
            if text[position] != ",":
                raise DatasetError(path, f"expected ',' or ']' between records, found {text[position]!r}", line=line)
            position += 1
            expect_item = True
            continue
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise DatasetError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
        except RecursionError:
            raise DatasetError(path, "invalid JSON: nested too deeply", line=line) from None
        yield line, value
        count += 1
        line += text.count("\n", position, end)
        position = end
        expect_item = False
    trailing = _skip_ws(text, position + 1)
    if trailing < len(text):
        raise DatasetError(path, "extra data after the array", line=1 + text.count("\n", 0, trailing))


def _skip_ws(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _record(path: Path, number: int, line: int, item: Any, check_outputs: bool, require_output: bool) -> Record:
    if not isinstance(item, dict):
        raise DatasetError(path, f"expected an object, found {json_type(item)}", line=line, record=number)
    if not require_output:
        item = {"output": "", **item}
    for name in REQUIRED_FIELDS:
        if name not in item:
            raise DatasetError(path, "missing", line=line, record=number, field=name)
        if not isinstance(item[name], str):
            raise DatasetError(
                path, f"expected a string, found {json_type(item[name])}", line=line, record=number, field=name
            )
        if not _encodable(item[name]):
            raise DatasetError(
                path, "contains a lone surrogate escape (not valid Unicode text)", line=line, record=number, field=name
            )
        if check_outputs and not item[name].strip() and (require_output or name != "output"):
            raise DatasetError(path, "empty", line=line, record=number, field=name)
    if check_outputs and item["output"]:
        try:
            parse(item["output"])
        except IntentParseError as exc:
            raise DatasetError(path, str(exc), line=line, record=number, field="output") from None
    extra = {k: v for k, v in item.items() if k not in REQUIRED_FIELDS}
    return Record(item["instruction"], item["output"], extra, line)


def _encodable(text: str) -> bool:
    """False for text with lone surrogates (from JSON escapes like \\ud800), which UTF-8 cannot hold."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_type(value: Any) -> str:
    """How a JSON value's type reads in an error message."""
    return {
        dict: "an object",
        list: "an array",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)
