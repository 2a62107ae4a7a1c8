"""The intent output grammar (DESIGN §2): the one parser, formatter and decoding grammar everyone uses.

    output := call ( ";" call )*
    call   := name ws* "(" [ arg ( "," arg )* ] ")"
    name   := a letter or "_" (any script), then letters, digits, "_", "-", "."
    arg    := any text without "," "(" ")" ";" — trimmed

Parsing is tolerant of whitespace around and inside calls (the reference's own examples write
``weather_search (Hangzhou)``); formatting is canonical (``weather_search(Hangzhou)``). Two
decisions where the grammar is loose: ``f()`` and ``f( )`` have no arguments, and an empty
argument inside a list (``f(a,,b)``) is an error, because no real slot value is empty and the
constrained decoder must never produce one.

The decoding grammar accepts exactly the canonical text of calls to known intents, so whatever a
constrained decoder emits parses, formats back to itself and names a known intent. When a model's
arguments are copied from the utterance (``args_from_text`` in its card), the per-request grammar
also limits every argument to a word span of that request's text (``text_spans``), so the model
cannot invent words that are not there.

It is written in EBNF, the dialect of xgrammar (vLLM's grammar engine, ``structured_outputs.grammar``), not as a
regex: a rule is written once and referenced, where a regex repeats the argument's prefix tree four times (two
arguments of two calls), and xgrammar compiles a request's grammar 2.6x faster (2.3 against 6.0 ms, the longest
utterances of the test file 7 against 30 ms), on the request's path to its first token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from service.errors import IntentlmError

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


class IntentParseError(IntentlmError, ValueError):
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


# An argument is trimmed, so it neither starts nor ends with whitespace (Python's ``\s``, the set ``str.strip``
# removes, spelled out: EBNF character classes have no ``\s``).
_WHITESPACE = (  # every character for which str.isspace() is true
    "\u0009\u000a\u000b\u000c\u000d\u001c\u001d\u001e\u001f\u0020\u0085\u00a0\u1680\u2000"
    "\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_ARG = re.compile(r"[^,();\s](?:[^,();]*[^,();\s])?")
_DELIMITERS = re.compile(r"[,();]")


# A word: letters/digits joined by anything but whitespace and the grammar's delimiters, so
# "5:30", "o'clock" and "p.m" are one word and "paris?" yields "paris".
_WORD = re.compile(r"[^\W_](?:[^\s,();]*[^\W_])?")
MAX_SPAN_WORDS = 12  # the longest argument of the smart-home data is 9 words


def text_spans(text: str, *, max_words: int = MAX_SPAN_WORDS) -> list[str]:
    """Every run of 1..``max_words`` consecutive words of ``text``, as written there (inner spacing kept).

    A span never contains a grammar delimiter (``,();``), so each one is a valid argument.
    Duplicates are dropped; order is by first occurrence.
    """
    words = [m.span() for m in _WORD.finditer(text)]
    spans: dict[str, None] = {}
    for i, (start, _) in enumerate(words):
        for j in range(i, min(i + max_words, len(words))):
            if j > i and _DELIMITERS.search(text, words[j - 1][1], words[j][0]):
                break
            spans[text[start : words[j][1]]] = None
    return list(spans)


def args_are_spans(records: Iterable[tuple[str, Sequence[Call]]]) -> float:
    """The share of arguments that are word spans of their instruction (1.0 when there are none)."""
    total = found = 0
    for instruction, calls in records:
        spans = set(text_spans(instruction, max_words=len(instruction)))
        for call in calls:
            total += len(call.args)
            found += sum(arg in spans for arg in call.args)
    return found / total if total else 1.0


def intent_grammar(names: Sequence[str], *, arg_spans: Sequence[str] | None = None) -> str:
    """The grammar of canonical outputs whose calls all name one of ``names``.

    ``arg_spans`` (from ``text_spans``), when given, are the only allowed arguments; an empty list allows no
    argument."""
    if not names:
        raise ValueError("intent_grammar needs at least one intent name")
    bad = [n for n in names if not is_valid_name(n)]
    if bad:
        raise ValueError(f"not valid intent names: {bad}")
    return _calls_grammar(" | ".join(map(_literal, sorted(set(names)))), _arg_grammar(arg_spans))


def any_intent_grammar(*, arg_spans: Sequence[str] | None = None) -> str:
    """The grammar of canonical outputs naming any ASCII intent name, for models that list no intents.

    ASCII only: trained intent names are identifiers, and a grammar engine's letter classes differ from Python's."""
    return _calls_grammar(r"[A-Za-z_] [A-Za-z0-9_.\-]*", _arg_grammar(arg_spans))


def decoding_grammar(names: Sequence[str], text: str | None = None) -> str:
    """The constrained-decoding grammar for one request, the same for the server and the evaluator.

    ``names``: the model's intents (empty: any ASCII name). ``text``: the request's instruction
    when the model copies its arguments from the text (card ``args_from_text``), else None.
    """
    spans = None if text is None else text_spans(text)
    return intent_grammar(names, arg_spans=spans) if names else any_intent_grammar(arg_spans=spans)


def _calls_grammar(name: str, arg: str | None) -> str:
    """The rules of calls (``;``-joined) of ``name``, with arguments ``arg`` (None: no argument at all)."""
    args = "" if arg is None else ' (arg ("," arg)*)?'
    rules = ['root ::= call (";" call)*', f'call ::= name "("{args} ")"', f"name ::= {name}"]
    return "\n".join(rules if arg is None else [*rules, f"arg ::= {arg}"])


def _arg_grammar(spans: Sequence[str] | None) -> str | None:
    """Any trimmed argument (None), no argument at all (empty), or exactly one of ``spans``.

    The spans are written as a prefix tree, one alternation per branching point: spans starting at
    the same word share their prefix, so the grammar grows with the text, not with the span count
    times the span length, and the grammar compiler has fewer states to build.
    """
    if spans is None:
        edge = _character_class(",();" + _WHITESPACE)
        return f"{edge} ({_character_class(',();')}* {edge})?"
    bad = [s for s in spans if not s or _ARG.fullmatch(s) is None]
    if bad:
        raise ValueError(f"not valid arguments: {bad}")
    if not spans:
        return None
    trie: dict[str, dict] = {}
    for span in spans:
        node = trie
        for ch in span:
            node = node.setdefault(ch, {})
        node[""] = {}  # end of a span
    return _trie_grammar(trie)


def _trie_grammar(node: dict[str, dict]) -> str:
    """The grammar expression of the strings of a character trie (``""`` marks where one ends)."""
    optional = "" in node
    branches = []
    for ch, child in node.items():
        if ch == "":
            continue
        # follow a chain of single children without nesting groups
        literal = [ch]
        while len(child) == 1 and "" not in child:
            ((ch, child),) = child.items()
            literal.append(ch)
        rest = _trie_grammar(child)
        branches.append(_literal("".join(literal)) + (f" {rest}" if rest else ""))
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(" + " | ".join(branches) + ")"
    return f"({body})?" if optional else body


def _literal(text: str) -> str:
    """A string literal of the grammar (its escapes are JSON's)."""
    return json.dumps(text, ensure_ascii=False)


def _character_class(excluded: str) -> str:
    """The grammar's class of every character but ``excluded``."""
    escaped = "".join(f"\\u{ord(c):04x}" if c.isspace() or c in "]\\-^" else c for c in excluded)
    return f"[^{escaped}]"


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
