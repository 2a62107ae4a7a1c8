"""service.vllm_lora's LoRA products against vLLM's own reference ops (vllm.lora.ops.torch_ops), which they replace
on the CPU: the same sums for every token with an adapter, no delta for a token without one."""

from __future__ import annotations

import pytest
import torch
from vllm.lora.ops.torch_ops import lora_ops as reference

from service import vllm_lora

SLOTS, RANK, WIDTH, OUT = 4, 16, 64, 96


def weights(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(SLOTS, 1, RANK, WIDTH, generator=generator).to(dtype)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=generator).to(dtype)
    return a, b


def close(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 2e-2, "atol": 2e-1} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 7, 64])
def test_the_products_are_the_reference_ops(dtype: torch.dtype, tokens: int) -> None:
    a, b = weights(dtype)
    x = torch.randn(tokens, WIDTH).to(dtype)
    indices = torch.randint(0, SLOTS, (tokens,))
    shrunk = {}
    for name, module in (("ours", vllm_lora), ("vllm", reference)):
        out = torch.zeros(tokens, RANK, dtype=torch.float32)
        module.bgmv_shrink(x, a, out, indices, 0.5)
        shrunk[name] = out
    torch.testing.assert_close(shrunk["ours"], shrunk["vllm"], **close(dtype))
    h = shrunk["vllm"].to(dtype)
    for add in (True, False):
        expanded = {}
        sliced = {}
        for name, module in (("ours", vllm_lora), ("vllm", reference)):
            out = torch.ones(tokens, OUT + 8, dtype=dtype)  # wider than the weights: vLLM's padding rule
            module.bgmv_expand(h, b, out, indices, add)
            expanded[name] = out
            wide = torch.ones(tokens, 3 * OUT, dtype=dtype)
            module.bgmv_expand_slice(h, b, wide, indices, OUT, OUT, add)
            sliced[name] = wide
        torch.testing.assert_close(expanded["ours"], expanded["vllm"], **close(dtype))
        torch.testing.assert_close(sliced["ours"], sliced["vllm"], **close(dtype))


def test_prefill_goes_through_them_and_a_token_without_adapter_gets_no_delta() -> None:
    """vLLM's prefill ops (sgmv_*) explode each sequence's index to its tokens and call bgmv_*, which
    ``register`` replaces; a sequence without an adapter (-1) keeps its output as it was."""
    vllm_lora.register()
    a, b = weights(torch.float32)
    x = torch.randn(5, WIDTH)
    seq_lens, starts, seq_indices = torch.tensor([3, 2]), torch.tensor([0, 3]), torch.tensor([2, -1])
    shrunk = torch.zeros(5, RANK)
    reference.sgmv_shrink(x, a, shrunk, starts, seq_lens, seq_indices, 2, 3, 5, 1.0)
    out = torch.ones(5, OUT)
    reference.sgmv_expand(shrunk, b, out, starts, seq_lens, seq_indices, 2, 3, 5, add_inputs=True)
    expected = 1 + x[:3] @ a[2, 0].t() @ b[2, 0].t()
    torch.testing.assert_close(out[:3], expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(out[3:], torch.ones(2, OUT)) and torch.equal(shrunk[3:], torch.zeros(2, RANK))
