"""The command line answers --help fast: no torch, vLLM or FastAPI at start-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from intentlm.cli import COMMANDS

INTENTLM = Path(sys.executable).parent / "intentlm"


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from intentlm.cli import main, COMMANDS\n"
        "r = CliRunner()\n"
        "assert r.invoke(main, ['--help']).exit_code == 0\n"
        "for name in COMMANDS: assert r.invoke(main, [name, '--help']).exit_code == 0, name\n"
        "heavy = [m for m in ('torch', 'vllm', 'fastapi', 'transformers', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parent.parent)


@pytest.mark.parametrize("command", [[], *([name] for name in COMMANDS)])
def test_every_help_answers_through_the_console_script(command: list[str]) -> None:
    result = subprocess.run([INTENTLM, *command, "--help"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = subprocess.run([INTENTLM, "frobnicate"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "No such command" in result.stderr
