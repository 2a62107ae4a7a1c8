"""The light core installs alone and works: a fresh venv, `pip install <repo>` with no extras, the data tools.

The core (contracts, data tools, client, CLI) must not need torch, vLLM or FastAPI: pyproject.toml's
`dependencies` are all it gets. This installs the package as a user would (not editable, from a copy of the
sources so that the build writes nothing into the checkout, with deploy/constraints-cpu.txt so that the versions
are the tested ones), then runs `intentlm data check` and `intentlm data split` from that venv.

Marked `install`: it installs a few small packages from PyPI (about 20 s with a warm network; pip's cache helps).
Deselect with `-m "not install"`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, TRAIN_FILE

pytestmark = [pytest.mark.install, pytest.mark.timeout(600)]

HEAVY = ("torch", "vllm", "fastapi", "uvicorn", "transformers", "peft")


@dataclass(frozen=True)
class CoreVenv:
    path: Path
    env: dict[str, str]  # for its commands: no PYTHONPATH/VIRTUAL_ENV of ours, an empty model cache
    cwd: Path  # not the checkout, so that `python -c` cannot import the sources from there

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in args], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def intentlm(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return self.run(self.path / "bin" / "intentlm", *args)


def copy_sources(target: Path) -> Path:
    """What a source distribution holds: pyproject.toml, README.md and the packages setuptools finds."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, target / name)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = project["tool"]["setuptools"]["packages"]["find"]["include"]
    ignore = shutil.ignore_patterns("__pycache__", "*.py[co]")
    for entry in sorted(REPO.iterdir()):
        if (entry / "__init__.py").is_file() and any(fnmatch.fnmatch(entry.name, p) for p in patterns):
            shutil.copytree(entry, target / entry.name, ignore=ignore)
    return target


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> CoreVenv:
    root = tmp_path_factory.mktemp("core-install")
    source = copy_sources(root / "src")
    venv = root / "venv"
    # The interpreter running the tests: the Python the constraints were made for (3.11), not whatever python3 is.
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check"]
    constraints = REPO / "deploy" / "constraints-cpu.txt"
    install = subprocess.run(
        [*pip, "install", "--quiet", "-c", constraints, source], capture_output=True, text=True, timeout=540
    )
    assert install.returncode == 0, f"pip install (core only) failed:\n{install.stdout}\n{install.stderr}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    (root / "home").mkdir()
    # An empty model cache: with no prepared base model, `data check` measures no token lengths (that would need
    # transformers, which is not in the core).
    env["INTENTLM_HOME"] = str(root / "home")
    (root / "work").mkdir()
    return CoreVenv(venv, env, root / "work")


def test_the_core_install_has_no_heavy_dependency(core_venv: CoreVenv) -> None:
    code = (
        "import importlib.util, json, training; "
        f"print(json.dumps([[m for m in {list(HEAVY)!r} if importlib.util.find_spec(m)], training.__file__]))"
    )
    result = core_venv.run(core_venv.path / "bin" / "python", "-c", code)
    assert result.returncode == 0, result.stderr
    importable, training_file = json.loads(result.stdout)
    assert importable == [], f"the core install pulled {importable}"
    # Installed into the venv (not an editable install pointing at the checkout).
    assert Path(training_file).is_relative_to(core_venv.path), training_file
    version = core_venv.intentlm("--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout, version.stdout + version.stderr


def test_data_check_runs_on_the_core_install(core_venv: CoreVenv) -> None:
    result = core_venv.intentlm("data", "check", TRAIN_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    records = len(json.loads(TRAIN_FILE.read_text()))
    assert f"{records} records" in result.stdout and "0 errors" in result.stdout, result.stdout


def test_data_split_runs_on_the_core_install(core_venv: CoreVenv, tmp_path: Path) -> None:
    # A small file: 10 single-intent records of each of three intents.
    records = [r for r in json.loads(TRAIN_FILE.read_text()) if r["output"].count("(") == 1]
    intents = sorted({r["output"].split("(")[0] for r in records})[:3]
    small = [r for intent in intents for r in [r for r in records if r["output"].startswith(f"{intent}(")][:10]]
    source = tmp_path / "small.json"
    source.write_text(json.dumps(small))
    train, test = tmp_path / "train.json", tmp_path / "test.json"
    result = core_venv.intentlm(
        "data", "split", source, "--test-ratio", "0.2", "--seed", "7", "--train-out", train, "--test-out", test
    )
    assert result.returncode == 0, result.stdout + result.stderr
    train_records, test_records = json.loads(train.read_text()), json.loads(test.read_text())
    assert len(train_records) == 24 and len(test_records) == 6
    assert sorted(map(json.dumps, train_records + test_records)) == sorted(map(json.dumps, small))
    # Stratified: each intent gives two of its ten records to the test side.
    assert Counter(r["output"].split("(")[0] for r in test_records) == dict.fromkeys(intents, 2)
