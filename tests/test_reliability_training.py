"""`intentlm train` killed with SIGKILL at random points, several times over the same output directory:
the previous model stays complete and loadable every time (or, once the final rename happened, the new
one is). test_train.py kills once mid-training and resumes; this repeats kills across all phases,
including the final write of the model directory.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors import safe_open
from test_train import INTENTLM, TINY

from service.modelcard import read_card, recover_directory
from tests.conftest import REPO, TRAIN_FILE

# Where to kill: a random moment after start-up, during training, and during the final write.
PHASES = ["start", "training", "writing"]


def assert_loadable(model_dir: Path) -> None:
    """What a server needs: a config, readable weights, a tokenizer and a card with the intents."""
    json.loads((model_dir / "config.json").read_text())
    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        assert list(weights.keys())
    assert (model_dir / "tokenizer.json").is_file()
    card = read_card(model_dir)
    assert card is not None and card.intents


def wait_for(condition, process: subprocess.Popen, timeout: float = 120) -> bool:
    """Poll until ``condition``; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.engine
def test_sigkill_at_random_points_never_breaks_the_previous_model(smarthome_model: Path, tmp_path: Path) -> None:
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps([r for r in json.loads(TRAIN_FILE.read_text()) if ";" not in r["output"]][:16]))
    output = tmp_path / "model"
    shutil.copytree(smarthome_model, output, symlinks=False)  # the "previous model": real files
    rng = random.Random(int(os.environ.get("INTENTLM_KILL_SEED", "6")))
    outcomes = []
    for phase in PHASES:
        card_before = (output / "intentlm.json").read_bytes()
        process = subprocess.Popen(
            [
                INTENTLM,
                "train",
                "--data",
                str(data),
                "--output",
                str(output),
                "--base-model",
                str(smarthome_model),
                *TINY,
                "--num_train_epochs",
                "1",
                "--save_steps",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO,
        )
        if phase == "start":
            reached = wait_for(lambda: False, process, timeout=rng.uniform(0.5, 4.0)) or process.poll() is None
        elif phase == "training":
            reached = wait_for(lambda: list(tmp_path.glob("model.checkpoints/checkpoint-*")), process)
            time.sleep(rng.uniform(0, 0.5))
        else:
            reached = wait_for(lambda: list(tmp_path.glob(".model.tmp-*")), process)
            time.sleep(rng.uniform(0, 0.4))
        process.send_signal(signal.SIGKILL)
        process.wait()
        stderr = process.stderr.read().decode(errors="replace")
        process.stderr.close()
        assert reached or process.returncode == 0, stderr[-3000:]
        recover_directory(output)  # what the next write does first, should the kill fall between two renames
        assert_loadable(output)
        replaced = (output / "intentlm.json").read_bytes() != card_before
        outcomes.append((phase, process.returncode, "replaced" if replaced else "kept"))
        if not replaced:  # untouched: not a file of the old model changed
            assert (output / "intentlm.json").read_bytes() == card_before
        for leftover in [tmp_path / "model.checkpoints", *tmp_path.glob(".model.tmp-*")]:  # harmless; cleared so
            shutil.rmtree(leftover, ignore_errors=True)  # that the next round's phase markers are its own
    print("\nkill outcomes:", outcomes)


def test_resume_skips_a_checkpoint_cut_off_mid_save(tmp_path: Path) -> None:
    """A kill while transformers writes a checkpoint leaves it without its trainer state (written last), or with
    a torn one: --resume takes the newest complete checkpoint before it (a flake of test_train.py's kill test
    found that transformers' own choice, the newest directory, cannot be resumed from)."""
    from training.trainer import last_checkpoint

    assert last_checkpoint(tmp_path / "missing") is None
    for step, state in ((2, '{"global_step": 2}'), (4, None), (6, '{"global_st'), (10, '{"global_step": 10}')):
        checkpoint = tmp_path / f"checkpoint-{step}"
        checkpoint.mkdir()
        (checkpoint / "model.safetensors").write_bytes(b"")
        if state is not None:
            (checkpoint / "trainer_state.json").write_text(state)
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-10")  # numeric order, not "10" < "2"
    shutil.rmtree(tmp_path / "checkpoint-10")
    (tmp_path / "checkpoint-final").mkdir()
    assert last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
