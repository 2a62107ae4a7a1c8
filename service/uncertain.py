"""The uncertain-traffic log (``intentlm serve --record-uncertain PATH``): live requests back to labels.

Each ``/v1/intents`` answer the out-of-scope rule rejected, or whose confidence fell below a threshold, is appended
to a JSON Lines file with its scores; ``intentlm data to-itag --from-log`` turns the file into a labelling job,
most uncertain first, pre-labelled with the answer the server gave. The utterances are the users' own words and can
be personal data: recording is off unless the operator names a file, and the file is created readable by its owner
only.

One line (the keys ``LogEntry`` reads back)::

    {"time": "2026-12-04T04:12:33.123456+00:00", "text": "turn it off", "history": [["dim the lights", "..."]],
     "intents": "oos()", "raw": "iot_hue_lightoff()", "confidence": 0.31, "typicality": 0.02,
     "oos_reason": "typicality", "ranking": [["iot_hue_lightoff", 0.31], ...], "model": "smarthome-v3"}

``history`` is left out when the request had none; ``typicality`` is null for a model without statistics.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from service.dataset import DatasetError, json_type
from service.intents import IntentParseError, format_calls, parse
from service.prompt import fold_history

if TYPE_CHECKING:
    from service.predictor import Answer

log = logging.getLogger("intentlm.uncertain")


class UncertainLog:
    """Appends one JSON line per uncertain answer, safely under concurrency, up to a size cap.

    Each line goes out in a single ``os.write`` on a descriptor opened ``O_APPEND``, under a lock that also keeps the
    size count: lines of this process never interleave, and the kernel appends each write whole at the end of the
    file. POSIX promises that atomicity across processes only for pipe writes up to ``PIPE_BUF`` (4096 bytes);
    Linux gives it for regular files on local filesystems whatever the size, NFS does not: point several servers
    at one file each, never one file shared over the network. The write is a few microseconds of the event loop's
    time (page cache), too little to hand to a thread.

    At ``max_bytes`` it stops appending and warns once, and it never rotates or truncates: the file is labelling
    material waiting for a person, and silently dropping the oldest lines would lose exactly the traffic that has
    not been labelled yet. An operator empties it (after ``to-itag``) when they choose; a restart counts the size
    from what is there. A failed write (full disk) is logged once and turns recording off: it must never fail the
    user's request.
    """

    def __init__(self, path: str | os.PathLike[str], *, confidence: float, max_bytes: int) -> None:
        """``confidence``: in-scope answers below it are recorded."""
        self.path = Path(path)
        self.confidence = confidence
        self.max_bytes = max_bytes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size
        self._lock = threading.Lock()
        self._full = False

    def wants(self, answer: Answer) -> bool:
        """Whether an answer is uncertain: rejected as out-of-scope, or in scope below the confidence threshold."""
        return answer.rejection is not None or answer.confidence < self.confidence

    def record(self, text: str, history: Sequence[Sequence[str]], answer: Answer, model: str) -> None:
        """Append the request and its answer when ``wants`` it (and the cap leaves room); ``model``: the served model
        that answered, by name."""
        if not self.wants(answer):
            return
        entry: dict[str, Any] = {"time": datetime.now(UTC).isoformat(), "text": text}
        if history:
            entry["history"] = [list(turn) for turn in history]
        entry |= {
            "intents": format_calls(answer.calls),
            "raw": answer.raw,
            "confidence": answer.confidence,
            "typicality": answer.typicality,
            "oos_reason": answer.rejection,
            "ranking": answer.ranking,
            "model": model,
        }
        self.write(orjson.dumps(entry) + b"\n")

    def write(self, line: bytes) -> None:
        """Append one whole line, or nothing."""
        with self._lock:
            if self._fd is None or self._full:
                return
            if self._size + len(line) > self.max_bytes:
                self._full = True
                log.warning(
                    "%s reached its cap of %d bytes (--record-uncertain-max-bytes): no more uncertain requests are "
                    "recorded until it is emptied and the server restarted",
                    self.path,
                    self.max_bytes,
                )
                return
            try:
                written = os.write(self._fd, line)
                if written != len(line):
                    raise OSError(f"wrote {written} of {len(line)} bytes")
            except OSError:
                log.exception("cannot append to %s; uncertain requests are no longer recorded", self.path)
                self._close()
                return
            self._size += written

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class LogEntry:
    """One line of the log, read back. ``instruction`` is the request as a record stores it (history folded in)."""

    instruction: str
    intents: str
    confidence: float
    rejected: bool
    line: int
    model: str | None = None  # the served model that answered (a server of several names it on each line)


def read_log(path: str | os.PathLike[str]) -> Iterator[LogEntry]:
    """The log's entries in file order; a bad line raises ``DatasetError`` naming ``file:line`` and the field."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                if raw.strip():  # a blank line (a hand-edited file's last one) carries nothing
                    yield _entry(path, number, raw)
    except FileNotFoundError:
        raise DatasetError(path, "no such file") from None
    except IsADirectoryError:
        raise DatasetError(path, "is a directory, not a log file") from None


def _entry(path: Path, number: int, raw: bytes) -> LogEntry:
    def error(message: str, field: str | None = None) -> DatasetError:
        return DatasetError(path, message, line=number, field=field)

    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # a server killed mid-write cannot leave half a line (one write each), but a copied or edited file can
        raise error(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(row, dict):
        raise error(f"expected a JSON object, found {json_type(row)}")

    def get(field: str, kind: type | tuple[type, ...], name: str) -> Any:
        value = row.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise error("missing" if value is None else f"expected {name}, found {json_type(value)}", field)
        return value

    text = get("text", str, "a string")
    intents = get("intents", str, "a string")
    confidence = get("confidence", (int, float), "a number")
    history = row.get("history", [])
    if not isinstance(history, list) or not all(isinstance(t, list) and t and isinstance(t[0], str) for t in history):
        raise error("expected a list of [user, assistant] turns", "history")
    reason = row.get("oos_reason")
    if reason is not None and not isinstance(reason, str):
        raise error(f"expected a string or null, found {json_type(reason)}", "oos_reason")
    try:
        parse(intents)
    except IntentParseError as exc:
        raise error(str(exc), "intents") from None
    model = row.get("model")
    if model is not None and not isinstance(model, str):
        raise error(f"expected a string or null, found {json_type(model)}", "model")
    return LogEntry(fold_history(text, history), intents, float(confidence), reason is not None, number, model)
