"""iTAG conversion through the real CLI and real files: round trip, abandoned rows, several labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TRAIN_FILE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.dataset import DatasetError, load_dataset
from service.intents import parse
from service.modelcard import ModelCard, read_card, write_card
from training.data.cli import data
from training.data.itag import PRELABEL_KEY, ItagError, read_manifests

INTENTLM = Path(sys.executable).parent / "intentlm"
LABEL = "label-1787402095227383808"


def labelled_row(instruction: str, output: str, *, key: str = LABEL, abandoned: int = 0, **data: object) -> str:
    """A line as iTAG exports it (the reference's example, field for field)."""
    return json.dumps(
        {
            "data": {"instruction": instruction, "_itag_index": "", **data},
            key: {"results": [{"questionId": "2", "data": output, "markTitle": "output", "type": "survey/value"}]},
            "abandonFlag": abandoned,
            "abandonRemark": None,
        },
        ensure_ascii=False,
    )


def label(manifest: Path, outputs: list[str], labelled: Path) -> None:
    """Simulate the labelling job: fill each exported row's answer in, in the exported shape."""
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(outputs)
    with labelled.open("w", encoding="utf-8") as f:
        for row, output in zip(rows, outputs):
            row["data"]["_itag_index"] = ""
            row[LABEL] = {
                "results": [{"questionId": "2", "data": output, "markTitle": "output", "type": "survey/value"}]
            }
            row["abandonFlag"] = 0
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(data, [str(a) for a in args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_round_trip_of_the_training_data_is_lossless(tmp_path: Path) -> None:
    original = json.loads(TRAIN_FILE.read_text(encoding="utf-8"))
    # Extra keys (any JSON) and non-ASCII text must survive too.
    original[0]["source"] = "hwu64"
    original[1]["meta"] = {"round": 2, "tags": ["a", "ß"]}
    original[2]["instruction"] = "放一首歌 ♪"
    dataset = tmp_path / "train.json"
    dataset.write_text(json.dumps(original, ensure_ascii=False), encoding="utf-8")

    code, out = invoke("to-itag", dataset, "-o", tmp_path / "tolabel.manifest")
    assert code == 0, out
    lines = (tmp_path / "tolabel.manifest").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(original)
    assert json.loads(lines[3]) == {"data": {"instruction": original[3]["instruction"]}}
    assert "output" not in lines[0]

    label(tmp_path / "tolabel.manifest", [r["output"] for r in original], tmp_path / "labelled.manifest")
    code, out = invoke("from-itag", tmp_path / "labelled.manifest", "-o", tmp_path / "back.json")
    assert code == 0, out
    assert f"{len(original)} records written, 0 abandoned rows skipped" in out
    assert json.loads((tmp_path / "back.json").read_text(encoding="utf-8")) == original


def test_the_references_exported_example_converts(tmp_path: Path) -> None:
    manifest = tmp_path / "export.manifest"
    manifest.write_text(
        "\n".join(
            [
                labelled_row("I want to listen to music", "play_music()"),
                labelled_row("Too loud, turn the sound down", "volume_down()"),
                labelled_row("I want to visit Hangzhou. Check the weather forecast for me", "weather_search(Hangzhou)"),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    code, out = invoke("from-itag", manifest, "-o", tmp_path / "train.json")
    assert code == 0, out
    records = load_dataset(tmp_path / "train.json")
    assert [(r.instruction, r.output, r.extra) for r in records] == [
        ("I want to listen to music", "play_music()", {}),
        ("Too loud, turn the sound down", "volume_down()", {}),
        ("I want to visit Hangzhou. Check the weather forecast for me", "weather_search(Hangzhou)", {}),
    ]


def test_abandoned_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    first, second = tmp_path / "a.manifest", tmp_path / "b.manifest"
    first.write_text(
        labelled_row("lights off", "iot_hue_lightoff()") + "\n" + labelled_row("asdf qwer", "", abandoned=1) + "\n",
        encoding="utf-8",
    )
    second.write_text(
        labelled_row("garbled", "whatever(", abandoned=1) + "\n" + labelled_row("wake me at 7", "alarm_set(7)") + "\n",
        encoding="utf-8",
    )
    code, out = invoke("from-itag", first, second, "-o", tmp_path / "train.json")
    assert code == 0, out
    assert "2 records written, 2 abandoned rows skipped" in out
    assert [r.output for r in load_dataset(tmp_path / "train.json")] == ["iot_hue_lightoff()", "alarm_set(7)"]
    # Nothing but abandoned rows: nothing to write, and the previous dataset stays.
    only_abandoned = tmp_path / "none.manifest"
    only_abandoned.write_text(labelled_row("x", "", abandoned=1) + "\n", encoding="utf-8")
    code, out = invoke("from-itag", only_abandoned, "-o", tmp_path / "train.json")
    assert code == 1 and "no labelled rows (1 abandoned); nothing written" in out
    assert len(load_dataset(tmp_path / "train.json")) == 2


def test_several_label_keys(tmp_path: Path) -> None:
    def row(answers: dict[str, str]) -> dict:
        line = {"data": {"instruction": "turn it off"}, "abandonFlag": 0}
        for key, answer in answers.items():
            line[key] = {"results": [{"data": "note", "markTitle": "comment"}, {"data": answer, "markTitle": "output"}]}
        return line

    manifest = tmp_path / "jobs.manifest"
    rows = [
        row({"label-1": "music_exit()", "label-2": "music_exit ( )"}),  # agree (canonically)
        row({PRELABEL_KEY: "volume_down()", "label-1": "music_exit()"}),  # labeller corrected the model
        row({"label-1": "music_exit()", "label-2": "volume_mute()"}),  # disagree
        row({PRELABEL_KEY: "volume_down()"}),  # never reviewed
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    with pytest.raises(ItagError) as caught:
        read_manifests([manifest])
    assert [p.line for p in caught.value.problems] == [3, 4]
    assert "labels disagree: label-1 says 'music_exit()', label-2 says 'volume_mute()'" in str(caught.value)
    assert "not labelled (only the model's pre-label)" in str(caught.value)

    out_file = tmp_path / "train.json"
    code, out = invoke("from-itag", manifest, "-o", out_file)
    assert code == 1 and f"{manifest}:3: labels disagree" in out and "nothing written" in out
    assert not out_file.exists()

    # Choosing a key settles it; rows without that key are still reported.
    with pytest.raises(ItagError, match=r":4: no 'label-1' label"):
        read_manifests([manifest], label_key="label-1")
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows[:3]), encoding="utf-8")
    assert [r.output for r in read_manifests([manifest], label_key="label-1").records] == ["music_exit()"] * 3
    manifest.write_text("".join(json.dumps(r) + "\n" for r in (rows[0], rows[2])), encoding="utf-8")
    outputs = [r.output for r in read_manifests([manifest], label_key="label-2").records]
    assert outputs == ["music_exit ( )", "volume_mute()"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, found an array"),
        ('{"abandonFlag": 0}', "field 'data': missing"),
        ('{"data": {"text": "x"}}', "field 'data.instruction': missing"),
        ('{"data": {"instruction": 5}}', "field 'data.instruction': expected a string, found a number"),
        (
            '{"data": {"instruction": "  "}, "label-1": {"results": [{"data": "a()"}]}}',
            "field 'data.instruction': empty",
        ),
        ('{"data": {"instruction": "x"}}', "not labelled"),
        ('{"data": {"instruction": "x"}, "label-1": {"results": []}}', "field 'label-1': expected an object"),
        (
            '{"data": {"instruction": "x"}, "label-1": {"results": [{"data": "play music"}]}}',
            "field 'label-1.results[0].data': expected '(' after 'play'",
        ),
        (
            '{"data": {"instruction": "x"}, "label-1": {"results": [{"data": ["a()"]}]}}',
            "expected a string, found an array",
        ),
        ('{"data": {"instruction": "x"}, "abandonFlag": 2}', "field 'abandonFlag': expected 0 or 1"),
        (
            '{"data": {"instruction": "x", "output": "a()"}, "label-1": {"results": [{"data": "a()"}]}}',
            "field 'data.output'",
        ),
        ("", "empty line"),
    ],
)
def test_bad_lines_are_reported_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    manifest = tmp_path / "bad.manifest"
    manifest.write_text(labelled_row("fine", "a()") + "\n" + line + "\n", encoding="utf-8")
    output = tmp_path / "train.json"
    output.write_text("previous content", encoding="utf-8")
    code, out = invoke("from-itag", manifest, "-o", output)
    assert code == 1
    assert f"{manifest}:2:" in out and message in out, out
    assert "Traceback" not in out
    assert output.read_text(encoding="utf-8") == "previous content"


def test_every_bad_line_is_reported_at_once(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.manifest"
    manifest.write_bytes(b"{\n" + labelled_row("ok", "a()").encode() + b"\n\xff\xfe\n[]\n")
    with pytest.raises(ItagError) as caught:
        read_manifests([manifest])
    assert [(p.line, p.path) for p in caught.value.problems] == [
        (1, str(manifest)),
        (3, str(manifest)),
        (4, str(manifest)),
    ]
    assert "not valid UTF-8" in str(caught.value.problems[1])


def test_to_itag_reads_unlabelled_utterances_and_refuses_bad_input(tmp_path: Path) -> None:
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps([{"instruction": "dim the lights"}, {"instruction": "what time is it", "id": 7}]))
    code, out = invoke("to-itag", raw, "-o", tmp_path / "job.manifest")
    assert code == 0, out
    assert [json.loads(line) for line in (tmp_path / "job.manifest").read_text().splitlines()] == [
        {"data": {"instruction": "dim the lights"}},
        {"data": {"instruction": "what time is it", "id": 7}},
    ]
    code, out = invoke("to-itag", raw, "-o", raw / "under-a-file.manifest")
    assert code == 1 and "cannot write" in out
    raw.write_text(json.dumps([{"instruction": "ok"}, {"output": "a()"}]))
    code, out = invoke("to-itag", raw, "-o", tmp_path / "job.manifest")
    assert code == 1 and f"{raw}:1: record 2: field 'instruction': missing" in out


def test_through_the_installed_console_script(tmp_path: Path) -> None:
    manifest = tmp_path / "export.manifest"
    manifest.write_text(
        labelled_row("lights off please", "iot_hue_lightoff()") + "\n" + labelled_row("x", "", abandoned=1) + "\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [INTENTLM, "data", "from-itag", manifest, "-o", tmp_path / "t.json"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert "1 records written, 1 abandoned rows skipped" in done.stdout
    manifest.write_text('{"data": {"instruction": "x"}, "label-1": {"results": [{"data": "a(("}]}}\n')
    done = subprocess.run(
        [INTENTLM, "data", "from-itag", manifest, "-o", tmp_path / "t.json"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: {manifest}:1: field 'label-1.results[0].data':")
    assert "Traceback" not in done.stderr


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
row_like = st.fixed_dictionaries(
    {},
    optional={
        "data": st.fixed_dictionaries({}, optional={"instruction": json_values | st.text(), "k": json_values}),
        "abandonFlag": json_values,
        "label-1": st.fixed_dictionaries(
            {},
            optional={
                "results": st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "data": st.text(alphabet="ab(),; ") | json_values,
                            "markTitle": st.sampled_from(["output", "x"]) | json_values,
                        },
                    ),
                    max_size=2,
                )
                | json_values
            },
        )
        | json_values,
        PRELABEL_KEY: json_values,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.binary(max_size=40) | row_like.map(lambda r: json.dumps(r).encode()) | st.text(max_size=40).map(str.encode),
        max_size=5,
    )
)
def test_fuzzed_manifests_never_raise_anything_but_itag_errors(tmp_path: Path, lines: list[bytes]) -> None:
    manifest = tmp_path / "fuzz.manifest"
    manifest.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines))
    try:
        conversion = read_manifests([manifest])
    except (ItagError, DatasetError):
        return
    for record in conversion.records:
        assert isinstance(record.instruction, str) and record.instruction.strip()
        parse(record.output)


@pytest.mark.engine
def test_prelabel_with_the_base_model(tmp_path: Path, base_model: Path) -> None:
    """The base model, told the 12 smart-home intents, suggests parseable known-intent labels."""
    model = tmp_path / "model"
    model.mkdir()
    for item in base_model.iterdir():
        if item.name != "intentlm.json":
            os.symlink(item, model / item.name)
    intents = sorted({c.name for r in load_dataset(TRAIN_FILE) for c in r.calls()})
    assert len(intents) == 12
    write_card(model, ModelCard(base_model="SmolLM2-135M-Instruct", intents=intents))
    records = load_dataset(TRAIN_FILE)[:3]
    dataset = tmp_path / "three.json"
    dataset.write_text(json.dumps([{"instruction": r.instruction} for r in records]))
    manifest = tmp_path / "prelabelled.manifest"
    done = subprocess.run(
        [INTENTLM, "data", "to-itag", dataset, "-o", manifest, "--model", model],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [row["data"]["instruction"] for row in rows] == [r.instruction for r in records]
    # The untrained model may ramble until its token budget ends ("alarm_set();calendar_set();...");
    # such a row gets no suggestion rather than a broken one.
    prelabelled = [row for row in rows if PRELABEL_KEY in row]
    assert prelabelled and f"3 rows to label, {len(prelabelled)} pre-labelled" in done.stdout
    for row in prelabelled:
        (result,) = row[PRELABEL_KEY]["results"]
        assert result["markTitle"] == "output"
        assert all(call.name in intents for call in parse(result["data"]))
    # A model whose card lists no intents cannot pre-label: a clear message, nothing written.
    assert read_card(base_model).intents == []
    code, out = invoke("to-itag", dataset, "-o", tmp_path / "x.manifest", "--model", base_model)
    assert (
        code == 1 and "cannot pre-label" in out and "lists no intents" in out and not (tmp_path / "x.manifest").exists()
    )
