"""Shared fixtures: where the data and the cache are, and the base model prepared once per session.

Tests that need a running engine or server share one per session (a start costs ~30 s); those
fixtures live here so every test module uses the same instance.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The development data (HWU64 smart-home subset, CC BY 4.0, Liu et al. 2019) ships in the repository,
# so a clone tests on its own; INTENTLM_DATA_DIR points the tests at another copy.
DATA_DIR = Path(os.environ.get("INTENTLM_DATA_DIR", REPO / "data" / "smarthome"))
TRAIN_FILE = DATA_DIR / "smarthome_train.json"
TEST_FILE = DATA_DIR / "smarthome_test.json"
MULTI_TEST_FILE = DATA_DIR / "smarthome_test_multi.json"
OOS_TEST_FILE = DATA_DIR / "smarthome_oos_test.json"

# Prepared models are cached in the (git-ignored) checkout unless the caller chose a cache.
os.environ.setdefault("INTENTLM_HOME", str(REPO / ".cache" / "intentlm"))
# vLLM on CPU: a small KV cache is plenty for the 135M model and keeps parallel engines affordable.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@functools.lru_cache(maxsize=64)
def _compiled_grammar(grammar: str):
    import xgrammar as xgr

    # the characters themselves are what a grammar accepts: a vocabulary of single bytes spells any text
    info = xgr.TokenizerInfo([bytes([b]).decode("latin-1") for b in range(256)])
    return xgr.GrammarCompiler(info).compile_grammar(grammar)


def grammar_accepts(grammar: str, text: str) -> bool:
    """Whether xgrammar (vLLM's grammar engine) accepts ``text`` as a whole under ``grammar`` (EBNF)."""
    import xgrammar as xgr

    matcher = xgr.GrammarMatcher(_compiled_grammar(grammar))
    return matcher.accept_string(text) and matcher.is_completed()


@pytest.fixture(scope="session")
def base_model() -> Path:
    """The default base model, converted from its GGUF once (idempotent across sessions too)."""
    from training.basemodel import prepare_base_model

    return prepare_base_model()


# ------------------------------------------------------------------------------- live servers
# `live_server` is the one shared `intentlm serve` of the session (a real subprocess on a free
# port, serving the base model with a smart-home card and token `test-token`). Tests that kill,
# overload or reconfigure a server start their own with `start_server` instead.

TYPICALITY_RECORDS = 10  # per intent, for the smart-home test model's typicality statistics
SMARTHOME_SYSTEM_PROMPT = (
    "You are an intent recognition expert for a smart home assistant. Answer with the intent calls "
    "of the user's request, such as iot_hue_lightoff() or alarm_set(7 am)."
)
SERVER_READY_TIMEOUT_S = 180.0


@dataclass
class LiveServer:
    """A running `intentlm serve` subprocess."""

    url: str
    token: str | None
    model_dir: Path
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(server: LiveServer, timeout: float = SERVER_READY_TIMEOUT_S) -> None:
    """Poll /health/ready until 200; fail with the server's log if it exits or takes too long."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"intentlm serve exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"intentlm serve not ready after {timeout:.0f} s:\n{server.log()[-4000:]}")


def start_server(
    model_dir: Path, log_dir: Path, *args: str, token: str | None = "test-token", wait: bool = True
) -> LiveServer:
    """Start `intentlm serve --model DIR` on a free port (plus ``args``); by default wait until ready."""
    port = free_port()
    command = [str(REPO / ".venv" / "bin" / "intentlm"), "serve", "--model", str(model_dir), "--port", str(port)]
    if token is not None:
        command += ["--api-token", token]
    log_path = log_dir / f"serve-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([*command, *args], stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO)
    server = LiveServer(f"http://127.0.0.1:{port}", token, model_dir, process, log_path)
    if wait:
        wait_ready(server)
    return server


def link_model(source: Path, target: Path) -> Path:
    """``target``: ``source``'s files symlinked (no 260 MB copy), all but ``intentlm.json``, for the caller to write."""
    target.mkdir(exist_ok=True)
    for item in source.iterdir():
        if item.name != "intentlm.json":
            (target / item.name).symlink_to(item)
    return target


@pytest.fixture(scope="session")
def smarthome_model(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base model's files (symlinked) with a card listing the 12 smart-home intents of TRAIN_FILE (no
    thresholds), and typicality statistics of the base model's states of the first
    TYPICALITY_RECORDS single-call records per intent (a few seconds; the served figures are the base model's)."""
    from service.dataset import load_dataset
    from service.intents import parse
    from service.modelcard import ModelCard, write_card
    from training.trainer import typicality_statistics

    model_dir = link_model(base_model, tmp_path_factory.mktemp("smarthome-model"))
    records = json.loads(TRAIN_FILE.read_text())
    intents = sorted({call.name for record in records for call in parse(record["output"])})
    card = ModelCard(base_model=base_model.name, system_prompt=SMARTHOME_SYSTEM_PROMPT, intents=intents)
    write_card(model_dir, card)
    single = [r for r in load_dataset(TRAIN_FILE) if len(r.calls()) == 1]
    sample = [r for intent in intents for r in [r for r in single if r.calls()[0].name == intent][:TYPICALITY_RECORDS]]
    typicality_statistics(model_dir, sample, card).save(model_dir)
    return model_dir


@pytest.fixture(scope="session")
def demo_model(base_model: Path) -> Path:
    """The bundled demo model (training/demo's adapter merged into the base model), as `intentlm model prepare`
    leaves it: the trained model a user serves by default."""
    from training.basemodel import prepare_demo_model

    return prepare_demo_model(base_model)


@pytest.fixture(scope="session")
def live_server(smarthome_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The session's shared server (token `test-token`). Do not kill or overload it."""
    server = start_server(smarthome_model, tmp_path_factory.mktemp("live-server"))
    yield server
    server.stop()
