"""The intent output grammar (DESIGN §2): the one parser, formatter and decoding regex everyone uses.

    output := call ( ";" call )*
    call   := name ws* "(" [ arg ( "," arg )* ] ")"
    name   := a letter or "_" (any script), then letters, digits, "_", "-", "."
    arg    := any text without "," "(" ")" ";" — trimmed

Parsing is tolerant of whitespace around and inside calls (the reference's own examples write
``weather_search (Hangzhou)``); formatting is canonical (``weather_search(Hangzhou)``). Two
decisions where the grammar is loose: ``f()`` and ``f( )`` have no arguments, and an empty
argument inside a list (``f(a,,b)``) is an error, because no real slot value is empty and the
constrained decoder must never produce one.

The decoding regex accepts exactly the canonical text of calls to known intents, so whatever a
constrained decoder emits parses, formats back to itself and names a known intent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# A letter or underscore (any script), then letters, digits, '_', '-', '.'.
_NAME = re.compile(r"[^\W\d][\w.\-]*")
_ARG_RUN = re.compile(r"[^,();]*")  # the stretch of an argument up to its next delimiter


@dataclass(frozen=True)
class Call:
    """One intent call: ``name(arg1,arg2)``."""

    name: str
    args: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.name}({','.join(self.args)})"


class IntentParseError(ValueError):
    """The text is not a valid output; ``position`` is the 0-based character offset of the problem."""

    def __init__(self, text: str, position: int, reason: str) -> None:
        self.text = text
        self.position = position
        self.reason = reason
        super().__init__(f"{reason} at column {position + 1} of {text!r}")


def parse(text: str) -> list[Call]:
    """Parse an output into its calls, tolerating whitespace; raise IntentParseError where it breaks."""
    parser = _Parser(text)
    calls = [parser.call()]
    parser.skip_ws()
    while parser.peek() == ";":
        parser.pos += 1
        calls.append(parser.call())
        parser.skip_ws()
    if parser.pos != len(text):
        raise IntentParseError(text, parser.pos, f"unexpected {text[parser.pos]!r} after a call")
    return calls


def try_parse(text: str) -> list[Call] | None:
    """``parse`` for callers that count malformed outputs instead of reporting them."""
    try:
        return parse(text)
    except IntentParseError:
        return None


def format_calls(calls: Iterable[Call]) -> str:
    """The canonical text of calls: no whitespace around names, parentheses, commas or semicolons."""
    return ";".join(str(call) for call in calls)


def canonical(text: str) -> str:
    """Parse and re-format: ``"weather_search (Hangzhou)"`` → ``"weather_search(Hangzhou)"``."""
    return format_calls(parse(text))


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


# An argument is trimmed, so it neither starts nor ends with whitespace (Python's ``\s`` is the
# set ``str.strip`` removes).
_ARG_CHAR = r"[^,();]"
_ARG_EDGE = r"[^,();\s]"
_ARG_REGEX = rf"{_ARG_EDGE}(?:{_ARG_CHAR}*{_ARG_EDGE})?"


def intent_regex(names: Sequence[str], *, max_calls: int | None = None) -> str:
    """The regex of canonical outputs whose calls all name one of ``names``.

    ``max_calls`` bounds the number of ``;``-joined calls (None: unbounded). Names are sorted
    longest-first so alternation never stops at a prefix of a longer name.
    """
    if not names:
        raise ValueError("intent_regex needs at least one intent name")
    bad = [n for n in names if not is_valid_name(n)]
    if bad:
        raise ValueError(f"not valid intent names: {bad}")
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=lambda n: (-len(n), n)))
    return _calls_regex(alternatives, max_calls)


def any_intent_regex(*, max_calls: int | None = None) -> str:
    """The regex of canonical outputs naming any ASCII intent name, for models that list no intents.

    ASCII only: decoding-regex engines disagree on Unicode classes, and trained intent names are
    identifiers.
    """
    return _calls_regex(r"[A-Za-z_][A-Za-z0-9_.\-]*", max_calls)


def _calls_regex(name: str, max_calls: int | None) -> str:
    call = rf"(?:{name})\((?:{_ARG_REGEX}(?:,{_ARG_REGEX})*)?\)"
    repeat = "*" if max_calls is None else f"{{0,{max_calls - 1}}}"
    return rf"{call}(?:;{call}){repeat}"


class _Parser:
    """A cursor over the text; each method consumes one grammar element or raises."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def call(self) -> Call:
        self.skip_ws()
        match = _NAME.match(self.text, self.pos)
        if match is None:
            what = repr(self.peek()) if self.peek() else "end of text"
            raise IntentParseError(self.text, self.pos, f"expected an intent name, found {what}")
        name = match.group()
        self.pos = match.end()
        self.skip_ws()
        if self.peek() != "(":
            what = repr(self.peek()) if self.peek() else "end of text"
            raise IntentParseError(self.text, self.pos, f"expected '(' after {name!r}, found {what}")
        self.pos += 1
        args = self.args()
        return Call(name, args)

    def args(self) -> tuple[str, ...]:
        """Arguments up to and including the closing parenthesis."""
        raw: list[tuple[int, str]] = []
        start = self.pos
        while True:
            ch = self.peek()
            if ch == "":
                raise IntentParseError(self.text, self.pos, "missing ')'")
            if ch in ",)":
                raw.append((start, self.text[start : self.pos]))
                self.pos += 1
                if ch == ")":
                    break
                start = self.pos
            elif ch in "(;":
                raise IntentParseError(self.text, self.pos, f"{ch!r} inside an argument list")
            else:
                self.pos = _ARG_RUN.match(self.text, self.pos).end()
        if len(raw) == 1 and not raw[0][1].strip():
            return ()
        for offset, value in raw:
            if not value.strip():
                raise IntentParseError(self.text, offset, "empty argument")
        return tuple(value.strip() for _, value in raw)
