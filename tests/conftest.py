"""Shared fixtures: where the data and the cache are, and the base model prepared once per session.

Tests that need a running engine or server share one per session (a start costs ~30 s); those
fixtures live here so every test module uses the same instance.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The development data (HWU64 smart-home subset, CC BY 4.0, Liu et al. 2019) lives in ../shared/data
# beside the checkout, in CI as here.
DATA_DIR = Path(os.environ.get("INTENTLM_DATA_DIR", REPO.parent / "shared" / "data"))
TRAIN_FILE = DATA_DIR / "smarthome_train.json"
TEST_FILE = DATA_DIR / "smarthome_test.json"
MULTI_TEST_FILE = DATA_DIR / "smarthome_test_multi.json"
OOS_TEST_FILE = DATA_DIR / "smarthome_oos_test.json"

# Prepared models are cached in the (git-ignored) checkout unless the caller chose a cache.
os.environ.setdefault("INTENTLM_HOME", str(REPO / ".cache" / "intentlm"))
# vLLM on CPU: a small KV cache is plenty for the 135M model and keeps parallel engines affordable.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def base_model() -> Path:
    """The default base model, converted from its GGUF once (idempotent across sessions too)."""
    from training.basemodel import prepare_base_model

    return prepare_base_model()
