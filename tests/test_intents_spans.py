"""The per-request grammar: arguments limited to word spans of the utterance (``args_from_text``)."""

from __future__ import annotations

import json

import pytest
from conftest import MULTI_TEST_FILE, TEST_FILE, TRAIN_FILE, grammar_accepts
from hypothesis import given, settings
from hypothesis import strategies as st

from service.intents import (
    _WHITESPACE,
    _WORD,
    MAX_SPAN_WORDS,
    Call,
    args_are_spans,
    decoding_grammar,
    format_calls,
    intent_grammar,
    parse,
    text_spans,
    try_parse,
)

NAMES = ["play_music", "alarm_set", "alarm", "a.b-c"]
# Words with the characters regex engines treat specially, delimiters, unicode and odd spacing.
piece_st = st.sampled_from(
    [
        "wake",
        "me",
        "at",
        "5:30",
        "a.m.",
        "o'clock",
        "paris?",
        "(now)",
        "x,y",
        ";",
        "$1.50",
        "c++",
        "[a]",
        "{2}",
        "a|b",
        "back\\slash",
        "^up",
        "-",
        "天气",
        "café",
        "_",
        "é",
    ]
)
text_st = st.lists(st.tuples(piece_st, st.sampled_from([" ", "  ", ", ", "\t", " - "])), max_size=10).map(
    lambda parts: "".join(p + sep for p, sep in parts).strip()
)


@given(text_st)
def test_spans_are_valid_arguments_taken_from_the_text(text: str) -> None:
    for span in text_spans(text):
        assert span in text
        assert parse(f"f({span})") == [Call("f", (span,))]  # trimmed, no delimiter
        assert len(_WORD.findall(span)) <= MAX_SPAN_WORDS  # words as spans count them: ' - ' is no word


@settings(max_examples=200, deadline=None)  # a grammar compiled per example
@given(text_st, st.data())
def test_grammar_accepts_exactly_calls_whose_arguments_are_spans(text: str, data: st.DataObject) -> None:
    spans = text_spans(text)
    grammar = intent_grammar(NAMES, arg_spans=spans)
    arg_st = (
        st.sampled_from(spans) | st.sampled_from(["wake me", "me at", "paris?", "x", "a.m.", "5:30 a.m"])
        if spans
        else st.sampled_from(["x", "wake"])
    )
    calls = data.draw(
        st.lists(
            st.builds(Call, st.sampled_from([*NAMES, "play"]), st.lists(arg_st, max_size=3).map(tuple)),
            min_size=1,
            max_size=3,
        )
    )
    output = format_calls(calls)
    expected = try_parse(output) == calls and all(c.name in NAMES and all(a in spans for a in c.args) for c in calls)
    assert grammar_accepts(grammar, output) == expected


@pytest.mark.parametrize("path", [TRAIN_FILE, TEST_FILE, MULTI_TEST_FILE])
def test_every_real_answer_fits_its_own_grammar(path) -> None:
    records = json.loads(path.read_text())
    names = sorted({c.name for r in records for c in parse(r["output"])})
    assert args_are_spans((r["instruction"], parse(r["output"])) for r in records) == 1.0
    for r in records:
        assert grammar_accepts(decoding_grammar(names, r["instruction"]), r["output"]), r


def test_args_are_spans_counts_invented_words() -> None:
    records = [
        ("wake me at five", [Call("alarm_set", ("five",))]),
        (
            "wake me at five",
            [
                Call(
                    "alarm_set",
                    ("5",),
                )
            ],
        ),
        ("lights off", [Call("iot_hue_lightoff")]),
    ]
    assert args_are_spans(records) == 0.5
    assert args_are_spans([]) == 1.0


def test_decoding_grammar_without_text_or_names() -> None:
    assert decoding_grammar(NAMES) == intent_grammar(NAMES)
    assert grammar_accepts(decoding_grammar(NAMES), "alarm(any text,it is)")
    assert not grammar_accepts(decoding_grammar(NAMES), "alarm(any text, it is)")  # untrimmed
    assert not grammar_accepts(decoding_grammar(NAMES), "alarm( untrimmed)")
    assert grammar_accepts(decoding_grammar([], "turn off the lights"), "anything(the lights)")
    assert not grammar_accepts(decoding_grammar([], "turn off the lights"), "anything(lamp)")
    assert grammar_accepts(decoding_grammar(NAMES, "?!"), "alarm()")  # no words: no argument possible
    assert not grammar_accepts(decoding_grammar(NAMES, "?!"), "alarm(?!)")


def test_whitespace_is_what_python_strips() -> None:
    """An argument's edges exclude exactly the characters ``str.strip`` removes (spelled out in the module)."""
    assert "".join(chr(c) for c in range(0x110000) if chr(c).isspace()) == _WHITESPACE
    free = decoding_grammar(NAMES)
    assert not any(grammar_accepts(free, f"alarm(x{space})") for space in _WHITESPACE)
    assert grammar_accepts(free, "alarm(x\u00a0y)")
