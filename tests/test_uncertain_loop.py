"""Live traffic back to labels, the whole loop on real files with the real server and the installed console script:
`intentlm serve --record-uncertain` → `data to-itag --from-log` → labelling → `data from-itag` → `data check` with
the old training file → `train --base-model <the served model> --dry-run`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
from conftest import OOS_TEST_FILE, REPO, TEST_FILE, TRAIN_FILE, start_server
from test_data_itag import label

from service.intents import canonical
from service.modelcard import read_card
from training.data.itag import PRELABEL_KEY

INTENTLM = Path(sys.executable).parent / "intentlm"
OOS_THRESHOLD = 0.5  # rejects some of the untrained base model's answers
RECORD_BELOW = 0.9  # and records the unsure in-scope ones too


def intentlm(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([INTENTLM, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.engine
def test_uncertain_traffic_back_to_labels_and_training(smarthome_model: Path, tmp_path: Path) -> None:
    truth = {r["instruction"]: r["output"] for r in json.loads(TEST_FILE.read_text())[::40]}  # 12 in scope
    truth |= {r["instruction"]: "oos()" for r in json.loads(OOS_TEST_FILE.read_text())[:6]}
    asked = [*truth, next(iter(truth)).upper()]  # asked twice (up to case): labelled once
    log = tmp_path / "traffic" / "uncertain.jsonl"

    server = start_server(
        smarthome_model,
        tmp_path,
        "--record-uncertain",
        str(log),
        "--record-uncertain-confidence",
        str(RECORD_BELOW),
        "--oos-threshold",
        str(OOS_THRESHOLD),
    )
    try:
        headers = {"Authorization": server.token or ""}
        replies = [
            httpx.post(f"{server.url}/v1/intents", json={"text": text}, headers=headers, timeout=60).json()
            for text in asked
        ]
        batch = httpx.post(f"{server.url}/v1/intents", json={"texts": asked[:2]}, headers=headers, timeout=60)
        assert batch.status_code == 200
        replies += batch.json()
    finally:
        server.stop()

    # What was recorded: exactly the uncertain answers (the batch's too), as the server gave them; not the warm-up.
    uncertain = [
        (
            text,
            ";".join(f"{c['name']}({','.join(c['args'])})" for c in reply["intents"]),
            reply["raw"],
            reply["oos_reason"],
        )
        for text, reply in zip([*asked, *asked[:2]], replies)
        if reply["oos_reason"] is not None or reply["confidence"] < RECORD_BELOW
    ]
    logged = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert uncertain, "no answer was uncertain: the thresholds no longer fit the test model"
    assert sorted((e["text"], e["intents"], e["raw"], e["oos_reason"]) for e in logged) == sorted(uncertain)
    assert {e["model"] for e in logged} == {smarthome_model.name}

    manifest = tmp_path / "tolabel.manifest"
    result = intentlm("data", "to-itag", "--from-log", log, "-o", manifest)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines()]
    instructions = [row["data"]["instruction"] for row in rows]
    assert sorted(map(str.casefold, instructions)) == sorted({e["text"].casefold() for e in logged})
    rejected_texts = {e["text"].casefold() for e in logged if e["oos_reason"] is not None}
    rejected = [i.casefold() in rejected_texts for i in instructions]
    assert rejected == sorted(rejected, reverse=True)  # the rejected ones first
    assert all(PRELABEL_KEY in row for row in rows)

    # The labellers correct the pre-labels: each row gets its true answer (a job's key beside label-intentlm).
    labelled = tmp_path / "export.manifest"
    answers = {text.casefold(): output for text, output in truth.items()}
    label(manifest, [answers[i.casefold()] for i in instructions], labelled)
    new = tmp_path / "new.json"
    result = intentlm("data", "from-itag", labelled, "-o", new)
    assert result.returncode == 0, result.stderr
    records = json.loads(new.read_text(encoding="utf-8"))
    assert [r["instruction"] for r in records] == instructions
    assert all(canonical(r["output"]) == r["output"] for r in records)

    combined = tmp_path / "train_v2.json"
    combined.write_text(json.dumps(json.loads(TRAIN_FILE.read_text()) + records, ensure_ascii=False))
    result = intentlm("data", "check", combined, "--json", "--model", smarthome_model)
    assert result.returncode == 0, result.stdout[-3000:]
    assert not [i for i in json.loads(result.stdout)["issues"] if i["severity"] == "error"]

    # The next model continues from the served one on old + new data (a dry run: the plan, no training).
    output = tmp_path / "model-v2"
    result = intentlm(
        "train", "--data", combined, "--output", output, "--base-model", smarthome_model,
        "--preset", "lora", "--load_in_4bit", "false", "--seq_length", "64", "--dry-run",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert set(read_card(smarthome_model).intents) <= set(report["intents"])
    assert report["data"] == str(combined) and not output.exists()
