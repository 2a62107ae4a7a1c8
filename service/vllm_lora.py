"""LoRA products for vLLM's CPU backend as one matrix product over all adapter slots, not a gather per token.

vLLM's CPU backend (``PunicaWrapperCPU``) applies adapters with its PyTorch reference ops
(``vllm.lora.ops.torch_ops``), which gather every token's adapter matrices (``weights[indices]``: tokens × out ×
rank values copied) and multiply token by token. On a prefill of 960 tokens (16 prompts) that is 44 ms per projection
and layer in bf16 on 2 cores, about 9 s a step for an adapter on the 7 projections of the 30 layers of the 135M base:
the cost that made several adapters on one server answer 3.9 requests a second (BENCHMARKS.md, "Many models").

The same sums as one product with every slot's stacked matrices (``slots × rank`` columns): shrink multiplies a
token's input by all slots' A and keeps its own slot's ``rank`` values; expand places a token's ``rank`` values in its
slot's columns (zeros elsewhere) and multiplies by all slots' B. A token without an adapter (index -1) gets no delta
(the reference ops would index the last slot with -1). ``register`` (the ``vllm.general_plugins`` entry point
``intentlm_lora``, run in every vLLM process) installs these in place of the reference ops on the CPU only; GPUs keep
vLLM's Triton kernels. ``tests/test_vllm_lora.py`` checks them against the reference ops.
"""

from __future__ import annotations

import torch


def _slots(weights: torch.Tensor) -> torch.Tensor:
    """The stacked adapter weights as (slots, rows, columns): vLLM stacks them as (slots, 1, rows, columns)."""
    return weights.squeeze(1) if weights.dim() == 4 else weights


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """``output[t, :rank] = scaling · A[index[t]] · inputs[t]``, as ``vllm.lora.ops.torch_ops.bgmv_shrink``."""
    a = _slots(lora_a_weights).to(output_tensor.dtype)
    slots, rank, width = a.shape
    tokens = inputs.shape[0]
    every = inputs.to(output_tensor.dtype) @ a.reshape(slots * rank, width).t()
    valid = (lora_indices_tensor >= 0).unsqueeze(1)
    own = every.view(tokens, slots, rank)[torch.arange(tokens), lora_indices_tensor.clamp(min=0)]
    output_tensor[:, :rank] = scaling * own * valid


def _expanded(
    inputs: torch.Tensor, lora_b_weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``B[index[t]] · inputs[t]`` for every token: its rank values in its slot's columns, times every slot's B."""
    b = _slots(lora_b_weights).to(dtype)
    slots, out, rank = b.shape
    tokens = inputs.shape[0]
    placed = inputs.new_zeros(tokens, slots, rank, dtype=dtype)
    valid = (indices >= 0).unsqueeze(1)
    placed[torch.arange(tokens), indices.clamp(min=0)] = inputs.to(dtype)[:, :rank] * valid
    return placed.view(tokens, slots * rank) @ b.transpose(1, 2).reshape(slots * rank, out)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """``output[t] (+)= B[index[t]] · inputs[t]``, as ``vllm.lora.ops.torch_ops.bgmv_expand`` (its padding rules)."""
    outputs = _expanded(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """``bgmv_expand`` into the columns ``slice_offset : slice_offset + slice_size`` (one of a merged projection's
    slices, such as q, k and v), as ``vllm.lora.ops.torch_ops.bgmv_expand_slice``."""
    outputs = _expanded(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


def register() -> None:
    """The ``vllm.general_plugins`` entry point: on the CPU, these ops in place of the reference ops, where vLLM's CPU
    wrapper calls them (its decode path) and where the reference prefill ops call them (``sgmv_*`` explode the
    sequences' indices to tokens, then call ``bgmv_*``)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        module.bgmv_shrink = bgmv_shrink
        module.bgmv_expand = bgmv_expand
        module.bgmv_expand_slice = bgmv_expand_slice
