"""The output grammar: tolerant parsing, canonical formatting, and the decoding grammar."""

from __future__ import annotations

import json

import pytest
from conftest import MULTI_TEST_FILE, OOS_TEST_FILE, TEST_FILE, TRAIN_FILE, grammar_accepts
from hypothesis import given, settings
from hypothesis import strategies as st

from service.intents import Call, IntentParseError, canonical, format_calls, intent_grammar, parse, try_parse


@pytest.mark.parametrize(
    "text, calls",
    [
        ("play_music()", [Call("play_music")]),
        ("weather_search (Hangzhou)", [Call("weather_search", ("Hangzhou",))]),
        ("  alarm_set( tomorrow , six am ) ", [Call("alarm_set", ("tomorrow", "six am"))]),
        ("a();b(x)", [Call("a"), Call("b", ("x",))]),
        ("a() ; b( x )", [Call("a"), Call("b", ("x",))]),
        ("f( )", [Call("f")]),
        ("天气_查询(杭州)", [Call("天气_查询", ("杭州",))]),
        ("_x.y-z(1)", [Call("_x.y-z", ("1",))]),
        ("f(a b  c)", [Call("f", ("a b  c",))]),
    ],
)
def test_parse_accepts(text: str, calls: list[Call]) -> None:
    assert parse(text) == calls


@pytest.mark.parametrize(
    "text, position, reason",
    [
        ("", 0, "expected an intent name"),
        ("play_music", 10, "expected '('"),
        ("play_music(", 11, "missing ')'"),
        ("1play()", 0, "expected an intent name"),
        ("f(a,,b)", 4, "empty argument"),
        ("f(a,)", 4, "empty argument"),
        ("f(a(b))", 3, "'(' inside an argument list"),
        ("f(a;b)", 3, "';' inside an argument list"),
        ("f() g()", 4, "unexpected 'g'"),
        ("f();", 4, "expected an intent name"),
    ],
)
def test_parse_rejects_with_position(text: str, position: int, reason: str) -> None:
    with pytest.raises(IntentParseError) as info:
        parse(text)
    assert info.value.position == position
    assert reason in str(info.value)
    assert f"column {position + 1}" in str(info.value)
    assert try_parse(text) is None


def test_format_is_canonical() -> None:
    assert canonical(" weather_search ( Hangzhou ) ;play_music( ) ") == "weather_search(Hangzhou);play_music()"
    assert format_calls([Call("a", ("x", "y z"))]) == "a(x,y z)"


@pytest.mark.parametrize("path", [TRAIN_FILE, TEST_FILE, MULTI_TEST_FILE, OOS_TEST_FILE])
def test_every_real_output_parses_and_is_canonical(path) -> None:
    records = json.loads(path.read_text())
    for record in records:
        assert canonical(record["output"]) == record["output"]


# --- property tests -------------------------------------------------------------------------

NAMES = ["play_music", "alarm_set", "iot_hue_lightoff", "a.b-c", "天气", "alarm"]
name_st = st.sampled_from(NAMES)
arg_st = (
    st.text(st.characters(blacklist_characters=",();", blacklist_categories=("Cs",)), min_size=1)
    .map(str.strip)
    .filter(bool)
)
call_st = st.builds(Call, name_st, st.lists(arg_st, max_size=4).map(tuple))
calls_st = st.lists(call_st, min_size=1, max_size=4)
ws_st = st.sampled_from(["", " ", "  ", "\t", "\n "])


@given(calls_st)
def test_parse_inverts_format(calls: list[Call]) -> None:
    assert parse(format_calls(calls)) == calls


@given(calls_st, st.data())
def test_parse_tolerates_whitespace(calls: list[Call], data: st.DataObject) -> None:
    """Whitespace around every token parses to the same calls."""
    pieces = []
    for i, call in enumerate(calls):
        if i:
            pieces.append(data.draw(ws_st) + ";")
        args = ",".join(data.draw(ws_st) + a + data.draw(ws_st) for a in call.args)
        pieces.append(f"{data.draw(ws_st)}{call.name}{data.draw(ws_st)}({args})")
    text = "".join(pieces) + data.draw(ws_st)
    assert parse(text) == calls


GRAMMAR = intent_grammar(NAMES)
alphabet = st.sampled_from(list("(),; \tab_.-1天x") + ["play_music", "alarm", "alarm_set", "a.b-c", "zz"])


@settings(max_examples=400, deadline=None)  # the first example imports xgrammar
@given(st.lists(alphabet, max_size=14).map("".join))
def test_grammar_accepts_exactly_canonical_known_outputs(text: str) -> None:
    """grammar(text) ⇔ text parses, is canonical and names only known intents."""
    calls = try_parse(text)
    expected = calls is not None and format_calls(calls) == text and all(c.name in NAMES for c in calls)
    assert grammar_accepts(GRAMMAR, text) == expected


@settings(deadline=None)
@given(calls_st)
def test_grammar_accepts_every_canonical_output(calls: list[Call]) -> None:
    assert grammar_accepts(GRAMMAR, format_calls(calls))


def test_grammar_rejects_unknown_names() -> None:
    assert grammar_accepts(intent_grammar(["a", "b"]), "a(x);b();a()")
    assert not grammar_accepts(intent_grammar(["a", "b"]), "c()")
    assert not grammar_accepts(intent_grammar(["alarm"]), "alarm_set()")


def test_grammar_refuses_bad_names() -> None:
    with pytest.raises(ValueError):
        intent_grammar([])
    with pytest.raises(ValueError, match="not valid intent names"):
        intent_grammar(["ok", "no way"])
