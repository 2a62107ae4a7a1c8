"""service.hardware: the one dtype rule of the server, the evaluator, training and the typicality pass."""

from __future__ import annotations

import pytest

from service import hardware
from service.hardware import choose_dtype


@pytest.mark.parametrize(
    ("flags", "dtype"),
    [
        ({"avx", "avx2"}, "float32"),  # AVX2 only: torch would emulate bf16
        ({"avx2", "avx512f", "avx512_bf16"}, "bfloat16"),
        ({"avx2", "amx_bf16", "amx_tile"}, "bfloat16"),
        (set(), "float32"),  # no /proc/cpuinfo: the safe choice
    ],
)
def test_cpu_dtype_follows_native_bf16(monkeypatch: pytest.MonkeyPatch, flags: set[str], dtype: str) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    choice = choose_dtype("auto", cuda=False)
    assert choice.dtype == dtype and choice.reason


def test_cuda_is_bf16_and_a_request_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})
    assert choose_dtype("auto", cuda=True).dtype == "bfloat16"
    assert choose_dtype("float32", cuda=True) == hardware.DtypeChoice("float32", "as requested")
    assert str(choose_dtype("bfloat16")) == "dtype bfloat16 (as requested)"


def test_this_machines_flags_are_read() -> None:
    """The real /proc/cpuinfo: x86 Linux lists its flags (the rule above then decides)."""
    flags = hardware.cpu_flags()
    assert not flags or "fpu" in flags or "sse2" in flags or "fp" in flags


def test_every_path_uses_the_rule() -> None:
    """The server's settings, eval and training take the same dtype names the rule does."""
    from typing import get_args

    from service.config import Settings
    from training.config import TrainConfig

    assert Settings.model_fields["dtype"].annotation is hardware.Dtype
    assert set(get_args(TrainConfig.model_fields["dtype"].annotation)) <= set(get_args(hardware.Dtype))
