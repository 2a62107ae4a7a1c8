"""`intentlm train` through the real command: tiny LoRA and full runs, bad input, a SIGKILL, --resume.

The runs are tiny (16 records, a few optimizer steps, seq_length 64) so the file stays fast; the model directories they produce are loaded by vLLM
through `intentlm eval` (the real engine), and the LoRA one by `intentlm serve`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_server import metric

from service.intents import parse
from service.modelcard import read_card
from service.prompt import build_prompt
from service.typicality import IntentStatistics
from tests.conftest import REPO, TRAIN_FILE, link_model, start_server

INTENTLM = str(REPO / ".venv" / "bin" / "intentlm")
TINY = [
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
    "--logging_steps",
    "1",
    "--num_train_epochs",
    "1",
]


def run_intentlm(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [INTENTLM, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 single-intent smart-home records (multi-intent ones would fail the strategy check alone)."""
    records = [r for r in json.loads(TRAIN_FILE.read_text()) if ";" not in r["output"]][:16]
    path = tmp_path_factory.mktemp("data") / "tiny.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def lora_run(tiny_data: Path, base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    output = tmp_path_factory.mktemp("lora") / "model"
    result = run_intentlm("train", "--data", tiny_data, "--output", output, "--eval-data", tiny_data, *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return output, result.stderr


@pytest.fixture(scope="module")
def full_run(tiny_data: Path, base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("full") / "model"
    result = run_intentlm(
        "train",
        "--data",
        tiny_data,
        "--output",
        output,
        *TINY,
        "--lora_dim",
        "0",
        "--learning_rate",
        "1e-5",
        "--num_train_epochs",
        "0.5",
        "--label_smoothing",
        "0.1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def assert_complete_model_dir(output: Path, data: Path, mode: str, seq_length: int = 64) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "intentlm.json"):
        assert (output / name).is_file(), name
    config = json.loads((output / "config.json").read_text())
    assert "quantization_config" not in config
    card = read_card(output)
    assert card is not None
    records = json.loads(data.read_text())
    assert card.intents == sorted({c.name for r in records for c in parse(r["output"])})
    assert card.base_model and card.system_prompt == "You are a helpful assistant" and card.apply_chat_template
    assert card.data is not None and card.data.records == len(records) and len(card.data.sha256) == 64
    assert card.data.file == str(data.resolve())
    assert card.train_config["mode"] == mode and card.train_config["seq_length"] == seq_length
    assert card.metrics["train_loss"] > 0 and card.metrics["final_loss"] > 0
    assert card.metrics["tokens_per_second"] > 0 and card.created_at
    # the typicality statistics: the trained model's states, by in-scope intent
    statistics = IntentStatistics.load(output)
    assert statistics is not None and statistics.means.shape[1] == 576
    assert set(statistics.intents) == {parse(r["output"])[0].name for r in records}
    # 16 records are too few to cross-fit (service.typicality.FOLDS), so training sets no typicality threshold
    assert statistics.held_out.size == 0 and card.typicality_threshold is None
    assert not output.with_name(output.name + ".checkpoints").exists()  # cleaned up after success
    assert list((output / "tensorboard").iterdir())  # TensorBoard events default inside the output


def test_lora_run_writes_a_complete_model_dir(lora_run: tuple[Path, str], tiny_data: Path) -> None:
    output, log = lora_run
    assert_complete_model_dir(output, tiny_data, "lora")
    assert (output / "adapter" / "adapter_model.safetensors").is_file()
    card = read_card(output)
    assert 0 <= card.metrics["eval"]["intent_accuracy"] <= 1 and card.metrics["eval"]["records"] == 16
    assert "tok/s" in log and "tokens/epoch" in log  # eta: tqdm's bar, and TensorBoard (below)


def test_full_run_writes_a_complete_model_dir(full_run: Path, tiny_data: Path) -> None:
    assert_complete_model_dir(full_run, tiny_data, "full")
    assert read_card(full_run).train_config["label_smoothing"] == 0.1  # through transformers' LabelSmoother
    assert not (full_run / "adapter").exists()


def test_tensorboard_has_tokens_per_second_and_eta(lora_run: tuple[Path, str]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(lora_run[0] / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/tokens_per_second", "train/eta_seconds"} <= tags


@pytest.mark.engine
@pytest.mark.parametrize("which", ["lora", "full"])
def test_vllm_loads_the_trained_model(
    which: str, lora_run: tuple[Path, str], full_run: Path, tiny_data: Path, tmp_path: Path
) -> None:
    model = lora_run[0] if which == "lora" else full_run
    result = run_intentlm("eval", "--model", model, "--data", tiny_data, "--report", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 16


@pytest.mark.engine
def test_the_server_prompts_as_training_did(lora_run: tuple[Path, str], tmp_path: Path) -> None:
    """The served prompt is the training prompt: the card's system prompt and the tokenizer's chat template
    (counted by vLLM's prompt-token metric against the prompt rendered here)."""
    import httpx
    from transformers import AutoTokenizer

    model = lora_run[0]
    text = "wake me up at seven tomorrow morning"
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompt = build_prompt(text, system_prompt=read_card(model).system_prompt, tokenizer=tokenizer)
    assert prompt.count("<|im_start|>") == 3  # system, user, and the assistant turn it continues
    expected = len(tokenizer.encode(prompt, add_special_tokens=False))
    server = start_server(model, tmp_path, token=None)
    try:
        before = prompt_tokens(httpx.get(f"{server.url}/metrics", timeout=10).text)
        reply = httpx.post(f"{server.url}/v1/intents", json={"text": text}, timeout=60)
        after = prompt_tokens(httpx.get(f"{server.url}/metrics", timeout=10).text)
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    assert after - before == expected


def prompt_tokens(exposition: str) -> float:
    """vLLM's count of prompt tokens in a /metrics scrape."""
    return metric(exposition, "vllm:prompt_tokens_total")


def test_dry_run_reports_without_training(tiny_data: Path, base_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "model"
    result = run_intentlm(
        "train",
        "--data",
        tiny_data,
        "--output",
        output,
        "--preset",
        "lora",
        "--seq_length",
        "64",
        "--load_in_4bit",
        "false",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["config"]["learning_rate"] == 3e-4 and report["config"]["seq_length"] == 64
    assert report["tokens"]["records_used"] == 16 and report["tokens"]["length_max"] <= 64
    assert report["optimizer_steps"] == 5 * report["optimizer_steps_per_epoch"]
    assert report["estimated_seconds"] > 0
    assert "global batch 256 -> 1" in result.stderr  # said in the log
    assert not output.exists() and not output.with_name("model.checkpoints").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bogus_knob", "1"], "unknown knob --bogus_knob; valid knobs: learning_rate"),
        (["--seq_length", "16"], "seq_length 16 is below the shortest record"),
        (["--base-model", "/nonexistent"], "intentlm model prepare"),
        (["--resume"], "no complete checkpoint"),
        (["--config", "/nonexistent.yaml"], "no such config file"),
        (["--threshold_folds", "1"], "0 (off) or at least 2"),
        (["--threshold_folds", "9"], "threshold_folds 9 needs at least 18 in-scope records (got 16)"),
    ],
)
def test_bad_input_fails_before_compute(
    extra: list[str], message: str, tiny_data: Path, base_model: Path, tmp_path: Path
) -> None:
    result = run_intentlm("train", "--data", tiny_data, "--output", tmp_path / "model", *extra)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "model").exists()


def test_bad_data_and_output_fail_before_compute(tiny_data: Path, base_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instruction": "hi", "output": "greet("}]')
    result = run_intentlm("train", "--data", broken, "--output", tmp_path / "model")
    assert result.returncode != 0 and f"{broken}:1: record 1: field 'output'" in result.stderr
    conflicting = tmp_path / "conflicting.json"
    conflicting.write_text(
        json.dumps(
            [
                {"instruction": "lights off", "output": "iot_hue_lightoff()"},
                {"instruction": "lights off", "output": "iot_hue_lighton()"},
            ]
        )
    )
    result = run_intentlm("train", "--data", conflicting, "--output", tmp_path / "model")
    assert result.returncode != 0 and "data check found" in result.stderr
    a_file = tmp_path / "file"
    a_file.write_text("")
    result = run_intentlm("train", "--data", tiny_data, "--output", a_file)
    assert result.returncode != 0 and "is a file" in result.stderr and "Traceback" not in result.stderr


def test_sigkill_leaves_the_previous_model_and_resume_finishes(
    tiny_data: Path, base_model: Path, lora_run: tuple[Path, str], tmp_path: Path
) -> None:
    """A real `intentlm train` killed with SIGKILL mid-training: the old model is untouched; --resume completes."""
    import shutil

    output = tmp_path / "model"
    shutil.copytree(lora_run[0], output)
    before = {p.name: p.stat().st_mtime_ns for p in output.iterdir()}
    old_card = (output / "intentlm.json").read_bytes()
    checkpoints = tmp_path / "model.checkpoints"
    args = [
        "train",
        "--data",
        tiny_data,
        "--output",
        output,
        *TINY,
        "--per_device_train_batch_size",
        "2",
        "--num_train_epochs",
        "2",
        "--save_steps",
        "2",
    ]
    process = subprocess.Popen([INTENTLM, *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("checkpoint-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "training ended before it could be killed"
    time.sleep(1.0)  # let the checkpoint's files land; the kill may still hit mid-write of the next one
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert {p.name: p.stat().st_mtime_ns for p in output.iterdir()} == before
    assert (output / "intentlm.json").read_bytes() == old_card
    assert not list(tmp_path.glob(".model.tmp-*"))  # the kill came before the final write began

    result = run_intentlm(*args, "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    card = read_card(output)
    assert card is not None and card.train_config["num_train_epochs"] == 2
    assert card.metrics["optimizer_steps"] == 16 and (output / "intentlm.json").read_bytes() != old_card


def test_continuing_from_a_trained_model_keeps_its_prompt(tiny_data: Path, base_model: Path, tmp_path: Path) -> None:
    """``--base-model`` on a trained model: its card's system prompt carries over unless the run sets one."""
    from service.modelcard import ModelCard, write_card
    from training.config import resolve_config
    from training.trainer import plan_training

    trained = link_model(base_model, tmp_path / "trained")
    write_card(trained, ModelCard(base_model=base_model.name, system_prompt="Answer with intents, please."))
    config, explicit = resolve_config("lora", None, {"seq_length": "64", "load_in_4bit": "false"})
    plan = plan_training(tiny_data, tmp_path / "out", config, explicit, trained)
    assert plan.config.system_prompt == "Answer with intents, please."
    config, explicit = resolve_config("lora", None, {"seq_length": "64", "system_prompt": "Mine."})
    assert plan_training(tiny_data, tmp_path / "out", config, explicit, trained).config.system_prompt == "Mine."


@pytest.mark.engine
def test_adapter_run_writes_an_adapter_directory_that_eval_serves(
    tiny_data: Path, base_model: Path, tmp_path: Path
) -> None:
    from service.modelcard import is_adapter_dir, weights_dir

    output = tmp_path / "adapter"
    result = run_intentlm("train", "--data", tiny_data, "--output", output, "--adapter", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert is_adapter_dir(output) and weights_dir(output).resolve() == base_model.resolve()
    for name in ("adapter_model.safetensors", "intentlm.json", "typicality.npz"):
        assert (output / name).is_file(), name
    assert not (output / "model.safetensors").exists()  # no merged copy
    card = read_card(output)
    assert card is not None and card.intents  # (no typicality threshold: 16 records are under its 99)
    result = run_intentlm("eval", "--model", output, "--data", tiny_data, "--report", tmp_path / "report")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len((tmp_path / "report" / "predictions.jsonl").read_text().splitlines()) == 16


def test_threshold_folds_score_every_record_with_a_model_that_never_saw_it(
    tiny_data: Path, base_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folds split the in-scope records; the records labelled out of scope train every fold's model. The
    fine-tunes and the forward passes are fakes here (the real ones: the next test)."""
    import numpy as np

    import service.typicality
    import training.trainer as trainer
    from service.modelcard import ModelCard
    from training.config import resolve_config

    records = json.loads(tiny_data.read_text())[:6] + [{"instruction": "order a pizza", "output": "oos()"}]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    config, explicit = resolve_config("lora", None, {"seq_length": "64", "threshold_folds": "3"})
    plan = trainer.plan_training(data, tmp_path / "out", config, explicit, base_model)
    trained_on: list[list[str]] = []

    def fake_train(fold_plan: trainer.TrainPlan) -> ModelCard:
        assert fold_plan.config.threshold_folds == 0 and fold_plan.output.parent == tmp_path / "folds"
        trained_on.append([r.instruction for r in fold_plan.records])
        fold_plan.output.mkdir(parents=True)
        IntentStatistics(("x",), np.zeros((1, 2), np.float32), np.eye(2, dtype=np.float32)).save(fold_plan.output)
        return ModelCard(system_prompt=fold_plan.config.system_prompt)

    class FakeStates:  # the fold's number as the state of each prompt it scores: typicality exp(-fold**2 / 4)
        def __init__(self, model_dir: Path) -> None:
            self.fold = int(Path(model_dir).name.removeprefix("fold"))

        def __call__(self, prompts: list, progress: bool = False) -> np.ndarray:
            return np.full((len(prompts), 2), [self.fold, 0], dtype=np.float32)

    monkeypatch.setattr(trainer, "train", fake_train)
    monkeypatch.setattr(service.typicality, "HiddenStates", FakeStates)
    scores = trainer.out_of_fold_typicality(plan, tmp_path / "folds")
    in_scope = [r["instruction"] for r in records[:6]]
    assert trained_on == [[i for j, i in enumerate(in_scope) if j % 3 != k] + ["order a pizza"] for k in range(3)]
    assert np.allclose(scores, [np.exp(-((j % 3) ** 2) / 4) for j in range(6)])
    assert not list((tmp_path / "folds").iterdir())  # each fold's model is removed once it has scored


def test_threshold_folds_through_the_real_command(tiny_data: Path, base_model: Path, tmp_path: Path) -> None:
    output = tmp_path / "model"
    result = run_intentlm("train", "--data", tiny_data, "--output", output, *TINY, "--threshold_folds", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "threshold fold 1/2: fine-tuning on 8 of 16 records" in result.stderr and "threshold fold 2/2" in result.stderr
    )
    statistics = IntentStatistics.load(output)
    card = read_card(output)
    assert statistics is not None and card is not None and card.train_config["threshold_folds"] == 2
    # one score per record (the cross-fitted statistics give none for 16), each from a model that never saw it
    assert statistics.held_out.shape == (16,) and ((statistics.held_out > 0) & (statistics.held_out <= 1)).all()
    assert card.typicality_threshold is None  # 16 scores are under the 99 the 1 % bound needs
    assert not output.with_name("model.checkpoints").exists()


@pytest.mark.parametrize(
    ("per_intent", "intents", "world", "expected"),
    [(32, 4, 1, 5), (49, 3, 1, 5), (50, 3, 1, 0), (20, 4, 1, 0), (32, 4, 2, 0)],
)
def test_threshold_folds_auto_folds_few_records_per_intent_that_set_a_threshold(
    per_intent: int, intents: int, world: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auto: fold models for under 50 records per intent, where a threshold is set at all (99 in-scope records or
    more: 20 x 4 sets none) and in one process; the out-of-scope records count for neither."""
    from service.dataset import Record
    from training.config import TrainConfig
    from training.trainer import resolve_threshold_folds

    monkeypatch.setenv("WORLD_SIZE", str(world))
    records = [Record(f"utterance {i}", f"intent_{i % intents}()") for i in range(per_intent * intents)]
    records += [Record(f"other {i}", "oos()") for i in range(100)]
    config = TrainConfig()
    assert config.threshold_folds == "auto"
    assert f"auto: {per_intent} in-scope records per intent" in (resolve_threshold_folds(config, records) or "")
    assert config.threshold_folds == expected
    given = TrainConfig(threshold_folds=3)
    assert resolve_threshold_folds(given, records) is None and given.threshold_folds == 3
