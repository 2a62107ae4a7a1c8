"""intentlm.json and atomic directory writes: a failed or killed write leaves the previous model intact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from service.modelcard import (
    ModelCard,
    ModelCardError,
    atomic_directory,
    read_card,
    recover_directory,
    write_card,
)


def test_card_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    card = ModelCard(base_model="b", intents=["a", "b"], metrics={"intent_accuracy": 0.9}, future_key=[1])
    write_card(tmp_path, card)
    again = read_card(tmp_path)
    assert again == card
    assert json.loads((tmp_path / "intentlm.json").read_text())["future_key"] == [1]


def test_missing_card_is_none_and_bad_card_names_the_field(tmp_path: Path) -> None:
    assert read_card(tmp_path) is None
    (tmp_path / "intentlm.json").write_text('{"format": 1, "intents": "play_music"}')
    with pytest.raises(ModelCardError, match="intents"):
        read_card(tmp_path)
    (tmp_path / "intentlm.json").write_text('{"format": 99}')
    with pytest.raises(ModelCardError, match="newer"):
        read_card(tmp_path)


def test_atomic_directory_replaces_on_success_and_keeps_old_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    assert oct(target.stat().st_mode & 0o777) != oct(0o700)

    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v2-partial")
        raise RuntimeError("training crashed")
    assert (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]

    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_refuses_a_file_as_target(tmp_path: Path) -> None:
    (tmp_path / "model").write_text("not a dir")
    with pytest.raises(NotADirectoryError), atomic_directory(tmp_path / "model"):
        pass


def test_recover_puts_back_a_directory_lost_between_the_two_renames(tmp_path: Path) -> None:
    old = tmp_path / ".model.old-abc"
    old.mkdir()
    (old / "weights").write_text("v1")
    recover_directory(tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "v1"


def test_sigkill_during_the_write_leaves_the_previous_directory(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    script = f"""
import time
from service.modelcard import atomic_directory
with atomic_directory({str(target)!r}) as tmp:
    (tmp / "weights").write_text("v2-partial")
    print("writing", flush=True)
    time.sleep(60)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent
    )
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (target / "weights").read_text() == "v1"
    with atomic_directory(target) as tmp:  # the leftover temporary sibling does not get in the way
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2"
