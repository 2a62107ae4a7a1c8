"""The benchmarks of bench/ run: each script on a tiny input, so that what BENCHMARKS.md cites keeps working.

Every script answers ``--help``. The offline ones run here on a few records: the split figures of a report, the
classic pipeline (when the ``bench`` extra is installed), the demo export, scope and adopt steps, the typicality
pass and its cross-fitting (the base model's states, a few seconds), the training step benchmark. The ones that
start servers or a vLLM engine are ``engine`` tests with their smallest settings: the serving benchmark (each
server alone), the typicality serving benchmark, the load driver and the client benchmark against the session's
live server, and one recipe run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO, TRAIN_FILE, LiveServer, link_model

BENCH = REPO / "bench"
PYTHON = sys.executable
# What BENCHMARKS.md and training/demo/README.md cite; a new script in bench/ gets a smoke test here too.
SCRIPTS = (
    "classic_baseline.py",
    "client.py",
    "eval_bench.py",
    "load.py",
    "many_models.py",
    "predictor_cost.py",
    "serve_bench.py",
    "serve_transformers_baseline.py",
    "split_figures.py",
    "threshold_promise.py",
    "train_bench.py",
    "train_demo.py",
    "typicality_bench.py",
    "typicality_crossfit.py",
    "typicality_pass.py",
)
SHELL_SCRIPTS = ("recipe_run.sh",)
NEEDS_BENCH_EXTRA = {"classic_baseline.py"}


def run_script(
    *args: str | Path, timeout: float = 300, env: dict[str, str] | None = None, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["bash" if str(args[0]).endswith(".sh") else PYTHON, *map(str, args)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    if ok:
        assert done.returncode == 0, f"{command}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    return done


def records(n_per_intent: int, *, single: bool = True) -> list[dict]:
    """The first ``n_per_intent`` records of each intent of the training file (single-call ones by default)."""
    seen: dict[str, int] = {}
    out = []
    for record in json.loads(TRAIN_FILE.read_text()):
        if single and ";" in record["output"]:
            continue
        intent = record["output"].split("(", 1)[0]
        if seen.get(intent, 0) < n_per_intent:
            seen[intent] = seen.get(intent, 0) + 1
            out.append(record)
    return out


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


# ----------------------------------------------------------------------------------------- no model


def test_bench_holds_only_the_benchmarks_tested_here() -> None:
    """bench/ keeps the cited benchmarks; a study's script goes, its decision into docs/decisions.md."""
    present = {p.name for p in BENCH.iterdir() if p.is_file()}
    assert present == set(SCRIPTS) | set(SHELL_SCRIPTS)


def test_no_bench_file_cites_the_retired_notebook() -> None:
    for path in (p for p in BENCH.iterdir() if p.is_file()):
        text = path.read_text()
        assert "accuracy.md" not in text, f"{path.name} cites bench/accuracy.md; docs/decisions.md replaced it"


@pytest.mark.parametrize("script", SCRIPTS + SHELL_SCRIPTS)
def test_every_script_answers_help(script: str) -> None:
    if script in NEEDS_BENCH_EXTRA:
        pytest.importorskip("sklearn")
        pytest.importorskip("pycrfsuite")
    done = run_script(BENCH / script, "--help", timeout=120)
    assert "usage" in done.stdout.lower()


def test_recipe_run_without_a_name_is_a_usage_error() -> None:
    done = run_script(BENCH / "recipe_run.sh", ok=False)
    assert done.returncode == 2 and "NAME" in done.stdout


def report_dir(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    """A minimal `intentlm eval` report folder: ``predictions.jsonl`` rows with a gold and a raw answer."""
    report = tmp_path / "report"
    report.mkdir()
    lines = [
        json.dumps({"instruction": f"request {i}", "gold": gold, "raw": raw, "prediction": raw})
        for i, (gold, raw) in enumerate(rows)
    ]
    (report / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return report


def test_split_figures_of_a_report(tmp_path: Path) -> None:
    report = report_dir(
        tmp_path,
        [
            ("alarm_set(seven am)", "alarm_set(seven am)"),
            ("iot_hue_lightoff()", "iot_hue_lightup()"),
            ("alarm_set(seven am);play_music(jazz)", "alarm_set(seven am);play_music(jazz)"),
        ],
    )
    done = run_script(BENCH / "split_figures.py", report)
    path, figures = done.stdout.strip().split(" ", 1)
    assert Path(path) == report
    figures = json.loads(figures)
    assert figures["single"]["records"] == 2 and figures["single"]["intent"] == 50.0
    assert figures["multi"] == {**figures["multi"], "records": 1, "exact": 100.0}


def test_classic_baseline_on_a_few_records(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("pycrfsuite")
    train = records(12) + [r for r in json.loads(TRAIN_FILE.read_text()) if ";" in r["output"]][:20]
    evaluate = [*records(14)[-24:], {"instruction": "what is the capital of peru", "output": "oos()"}]
    train_file, eval_file = write_json(tmp_path / "train.json", train), write_json(tmp_path / "eval.json", evaluate)
    done = run_script(
        BENCH / "classic_baseline.py",
        train_file,
        eval_file,
        "--work",
        tmp_path / "work",
        "--report",
        tmp_path / "report",
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["single"]["records"] == len(evaluate) - 1 and "oos" in result
    assert len((tmp_path / "report" / "eval" / "predictions.jsonl").read_text().splitlines()) == len(evaluate)


def fake_run(directory: Path) -> Path:
    """What the demo export reads from an `intentlm train --lora_dim N` output: its card and its adapter."""
    import torch
    from safetensors.torch import save_file

    from service.modelcard import ModelCard, write_card

    (directory / "adapter").mkdir(parents=True)
    save_file(
        {"base_model.model.layers.0.q_proj.lora_A.weight": torch.ones(4, 8)},
        directory / "adapter" / "adapter_model.safetensors",
    )
    (directory / "adapter" / "adapter_config.json").write_text(json.dumps({"r": 4, "base_model_name_or_path": "x"}))
    write_card(directory, ModelCard(base_model="SmolLM2-135M-Instruct", intents=["alarm_set", "alarm_query"]))
    return directory


def test_train_demo_exports_a_run_and_adopts_the_prepared_demo(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from service.modelcard import STATS_FILE, ModelCard, read_card, write_card

    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / STATS_FILE).write_bytes(b"the previous adapter's")
    run_script(BENCH / "train_demo.py", fake_run(tmp_path / "run"), "--demo-dir", demo)
    tensors = load_file(demo / "adapter_model.safetensors")
    assert {str(t.dtype) for t in tensors.values()} == {"torch.bfloat16"}
    assert json.loads((demo / "adapter_config.json").read_text())["base_model_name_or_path"] == "SmolLM2-135M-Instruct"
    assert read_card(demo).intents == ["alarm_set", "alarm_query"] and not (demo / STATS_FILE).exists()

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    write_card(
        prepared,
        ModelCard(
            base_model="SmolLM2-135M-Instruct",
            intents=["alarm_set", "alarm_query"],
            typicality_threshold=0.25,
            confidence_temperature=1.5,
        ),
    )
    missing = run_script(BENCH / "train_demo.py", "--adopt", "--prepared", prepared, "--demo-dir", demo, ok=False)
    assert missing.returncode != 0 and STATS_FILE in missing.stderr
    (prepared / STATS_FILE).write_bytes(b"statistics")
    run_script(BENCH / "train_demo.py", "--adopt", "--prepared", prepared, "--demo-dir", demo)
    card = read_card(demo)
    assert card.typicality_threshold == 0.25 and card.confidence_temperature == 1.5
    assert (demo / STATS_FILE).read_bytes() == b"statistics"


def test_train_demo_takes_one_step_at_a_time(tmp_path: Path) -> None:
    done = run_script(BENCH / "train_demo.py", tmp_path, "--adopt", ok=False)
    assert done.returncode == 2 and "one of" in done.stderr


# ------------------------------------------------------------------- the base model, no engine


def test_train_demo_scope_writes_statistics_and_threshold(base_model: Path, tmp_path: Path) -> None:
    """Step 2 of the demo rebuild: what `intentlm train` writes for typicality, on the prepared model."""
    from service.modelcard import STATS_FILE, ModelCard, read_card, write_card
    from service.typicality import IntentStatistics

    prepared = link_model(base_model, tmp_path / "prepared")
    write_card(prepared, ModelCard(base_model=base_model.name, intents=["placeholder"]))
    data = write_json(tmp_path / "train.json", records(10))  # 120 records: enough to cross-fit and threshold
    done = run_script(BENCH / "train_demo.py", "--scope", data, "--prepared", prepared)
    statistics = IntentStatistics.load(prepared)
    assert statistics is not None and len(statistics.intents) == 12 and statistics.held_out.size == 120
    threshold = read_card(prepared).typicality_threshold
    assert threshold is not None and 0 < threshold < 1 and str(threshold) in done.stdout
    assert (prepared / STATS_FILE).is_file()


def test_typicality_pass_on_a_few_prompts(smarthome_model: Path, tmp_path: Path) -> None:
    data = write_json(tmp_path / "few.json", records(2)[:20])
    done = run_script(BENCH / "typicality_pass.py", "--model", smarthome_model, "--data", data, "--repeat", "1")
    assert "shared prefix once per batch" in done.stdout and "whole prompts" in done.stdout
    assert "largest typicality difference" in done.stdout


def test_predictor_cost_on_a_few_calls(smarthome_model: Path) -> None:
    done = run_script(BENCH / "predictor_cost.py", "--model", smarthome_model, "--calls", "5")
    assert "ranking:" in done.stdout and "answer:" in done.stdout


def test_typicality_crossfit_on_a_few_records(smarthome_model: Path, tmp_path: Path) -> None:
    train = write_json(tmp_path / "train.json", records(4))  # 48 states: 20 folds still cross-fit
    validation = [*records(5)[-12:], {"instruction": "what is the capital of peru", "output": "oos()"}]
    report = tmp_path / "report"  # which answers were right, as an `intentlm eval` report says
    report.mkdir()
    rows = [{"instruction": r["instruction"], "intent_correct": i % 2 == 0} for i, r in enumerate(validation)]
    (report / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = run_script(
        BENCH / "typicality_crossfit.py", smarthome_model, train, write_json(tmp_path / "val.json", validation), report
    )
    assert "training, cross-fitted (20 folds)" in done.stdout and "validation alone: threshold" in done.stdout
    assert "fit of the 48 training states without cross-fitting" in done.stdout
    for folds in (" 5", "10", "20"):
        assert f"{folds} folds (" in done.stdout
    assert "correct validation answers below" in done.stdout and "out-of-scope recall" in done.stdout


def threshold_promise() -> ModuleType:
    """bench/threshold_promise.py as a module (bench/ is no package)."""
    spec = importlib.util.spec_from_file_location("threshold_promise", BENCH / "threshold_promise.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_snips(root: Path, rows: int) -> Path:
    """sonos/nlu-benchmark's 2017-06 folder in miniature: ``rows`` training and test rows for each intent."""
    for intent in threshold_promise().SNIPS_INTENTS:
        folder = root / "2017-06-custom-intent-engines" / intent
        folder.mkdir(parents=True)
        for name in (f"train_{intent}_full.json", f"validate_{intent}.json"):
            data = [
                {"data": [{"text": f"Please {intent} "}, {"text": f"Item, {i}", "entity": "object"}, {"text": " now"}]}
                for i in range(rows)
            ]
            write_json(folder / name, {intent: data})
    return root


def fake_clinc(root: Path, rows: int) -> Path:
    """clinc/oos-eval's data in miniature: one domain of two intents, ``rows`` rows of each split."""
    (root / "data").mkdir(parents=True)
    splits = {
        split: [[f"{split} {intent} request {i}", intent] for intent in ("alarm", "timer") for i in range(rows)]
        for split in ("train", "val", "test")
    }
    splits["oos_test"] = [[f"what is the capital of country {i}", "oos"] for i in range(rows)]
    write_json(root / "data" / "data_full.json", splits)
    write_json(root / "data" / "domains.json", {"home": ["alarm", "timer"], "work": ["pto_request"]})
    return root


def test_threshold_promise_builds_the_public_data_as_the_smart_home_data(tmp_path: Path) -> None:
    """SNIPS: snake-case intents, slot values in order (a comma inside one becomes a space), validation rows the
    training did not take; CLINC150: one domain's intents, no arguments, its out-of-scope test rows."""
    bench = threshold_promise()
    bench.build_snips(fake_snips(tmp_path / "snips", rows=5), tmp_path / "s", records=21)
    train = json.loads((tmp_path / "s" / "train.json").read_text())
    validation = json.loads((tmp_path / "s" / "validation.json").read_text())
    assert len(train) == 21 and len(validation) == 14  # 3 + the other 2 of each intent's 5
    assert {r["instruction"] for r in train}.isdisjoint(r["instruction"] for r in validation)
    assert {"instruction": "please addtoplaylist item, 0 now", "output": "add_to_playlist(item 0)"} in [
        *train,
        *validation,
    ]
    assert len(json.loads((tmp_path / "s" / "test.json").read_text())) == 35
    bench.build_clinc(fake_clinc(tmp_path / "clinc", rows=4), tmp_path / "c", 6, "home")
    train = json.loads((tmp_path / "c" / "train.json").read_text())
    assert len(train) == 6 and {r["output"] for r in train} == {"alarm()", "timer()"}
    assert json.loads((tmp_path / "c" / "oos_test.json").read_text())[0]["output"] == "oos()"
    assert len(json.loads((tmp_path / "c" / "validation.json").read_text())) == 8


def test_train_bench_on_two_records(base_model: Path, tmp_path: Path) -> None:
    """The three variants' training steps on 2 records each (QLoRA, LoRA): the table prints."""
    done = run_script(BENCH / "train_bench.py", "--records", "2", timeout=600)
    assert done.stdout.count("| intentlm train") == 2 and "| naive" in done.stdout


# --------------------------------------------------------------------------------- servers, engines


@pytest.mark.engine
@pytest.mark.parametrize(
    ("only", "labels"),
    [
        ("intentlm", {"(a) intentlm /v1/intents", "(b) intentlm POST / (EAS)"}),
        ("vllm", {"(c) vLLM OpenAI server"}),
        ("transformers", {"(d) transformers generate"}),
    ],
)
def test_serve_bench_smallest(only: str, labels: set[str], base_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve_bench.json"
    run_script(
        BENCH / "serve_bench.py",
        "--only",
        only,
        "--levels",
        "1",
        "--min-requests",
        "2",
        "--requests-per-level",
        "1",
        "--out",
        out,
        timeout=400,
    )
    report = json.loads(out.read_text())
    assert set(report["results"]) == labels
    assert all(
        level["requests"] == 2 and level["req_per_s"] > 0 for levels in report["results"].values() for level in levels
    )


@pytest.mark.engine
def test_many_models_bench_smallest(demo_model: Path, tmp_path: Path) -> None:
    """Two adapters on one server against two single-model servers, two requests each: the ratios come out."""
    out = tmp_path / "many.json"
    args = ("--models", "2", "--concurrency", "2", "--requests", "2", "--out", out)
    run_script(BENCH / "many_models.py", *args, timeout=600)
    report = json.loads(out.read_text())
    assert len(report["results"]) == 2 and all(
        r["req_per_s"] > 0 and r["rss_mib"] > 0 for r in report["results"].values()
    )
    assert set(report["summary"]) == {"memory_ratio_rss", "memory_ratio_pss", "throughput_ratio"}


@pytest.mark.engine
def test_threshold_promise_smallest(base_model: Path, tmp_path: Path) -> None:
    """Train on 8 CLINC-like records, then both rules on the test split: the table and results.json come out."""
    out = tmp_path / "promise"
    args = ("--clinc", fake_clinc(tmp_path / "clinc", rows=4), "--train-records", "8", "--out", out)
    done = run_script(BENCH / "threshold_promise.py", *args, timeout=900)
    results = json.loads((out / "results.json").read_text())["clinc150 home"]
    assert set(results) == {"as trained", "calibrated on validation"}
    assert all(r["test"] == 8 and "oos_recall" in r for r in results.values())
    assert "| clinc150 home | as trained |" in done.stdout


@pytest.mark.engine
def test_typicality_bench_smallest(smarthome_model: Path) -> None:
    done = run_script(
        BENCH / "typicality_bench.py", "--model", smarthome_model, "--requests", "2", "--levels", "1", timeout=600
    )
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| typicality on |", "| --no-typicality |"))]
    assert len(rows) == 2
    assert rows[1].rstrip().endswith("| None |")  # the server without typicality replies without a score


@pytest.mark.engine
def test_load_driver_smallest(live_server: LiveServer, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    run_script(
        BENCH / "load.py",
        "--url",
        live_server.url,
        "--token",
        live_server.token,
        "--model",
        live_server.model_dir,
        "--concurrency",
        "1",
        "--duration",
        "5",
        "--max-requests",
        "4",
        "--rss-every",
        "1",
        "--pid",
        str(live_server.process.pid),
        "--out",
        out,
        timeout=120,
    )
    (level,) = json.loads(out.read_text())
    assert 1 <= level["requests"] <= 4 and level["errors_5xx"] == 0 and level["malformed"] == 0
    assert level["transport_errors"] == 0 and level["rss_mib"]


@pytest.mark.engine
def test_client_bench_smallest(live_server: LiveServer) -> None:
    done = run_script(
        BENCH / "client.py",
        "--url",
        live_server.url,
        "--token",
        live_server.token,
        "-n",
        "4",
        "--batch-size",
        "2",
        timeout=120,
    )
    assert "4 utterances" in done.stdout
    for way in ("sequential", "batched", "concurrent"):
        assert way in done.stdout


@pytest.mark.engine
def test_recipe_run_smallest(base_model: Path, tmp_path: Path) -> None:
    """One recipe run (train, then `intentlm eval` with vLLM, then the split figures) on 16 + 8 records."""
    split = tmp_path / "split"
    split.mkdir()
    train = records(2)[:16]
    write_json(split / "train.json", train)
    write_json(split / "val.json", records(3)[-8:])
    study = tmp_path / "study"
    done = run_script(
        BENCH / "recipe_run.sh",
        "tiny",
        "--per_device_train_batch_size",
        "8",
        "--gradient_accumulation_steps",
        "1",
        "--seq_length",
        "64",
        "--lora_dim",
        "4",
        "--load_in_4bit",
        "false",
        "--learning_rate",
        "1e-3",
        "--num_train_epochs",
        "1",
        "--compose_multi_intent",
        "0",
        env={"SPLIT": str(split), "STUDY": str(study)},
        timeout=600,
    )
    path, figures = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert Path(path) == study / "tiny.val" and json.loads(figures)["single"]["records"] == 8
    assert (study / "tiny" / "intentlm.json").is_file() and (study / "tiny.log").is_file()


def test_avx2_emulation_hides_avx512_and_amx_from_torch() -> None:
    """bench/avx2_emulation: a process with it on PYTHONPATH and EMULATE_AVX2=1 sees an AVX2-only CPU; without the
    variable, the machine's own."""
    check = "import torch; print(torch.cpu._is_avx512_supported(), torch.cpu._is_amx_tile_supported())"
    env = {**os.environ, "PYTHONPATH": str(BENCH / "avx2_emulation")}
    emulated = subprocess.run([sys.executable, "-c", check], env={**env, "EMULATE_AVX2": "1"}, capture_output=True)
    assert emulated.stdout.split() == [b"False", b"False"], emulated.stderr
    assert subprocess.run([sys.executable, "-c", check], env=env, check=True).returncode == 0
