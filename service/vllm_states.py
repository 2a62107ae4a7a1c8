"""Typicality from vLLM's own forward pass: the prompt's last hidden state, kept by the model, scored in the engine
and handed back with the request's output, so that no second copy of the model runs a second forward pass.

Two of vLLM's public extension points carry it:

* a model class per supported architecture (``IntentlmLlamaForCausalLM`` ...), registered with vLLM's
  ``ModelRegistry`` by the ``vllm.general_plugins`` entry point ``intentlm`` (``register``) and chosen for a served
  model with ``hf_overrides={"architectures": [...]}``: the architecture's own class, whose ``forward`` also keeps
  the final hidden state (after the last norm, as ``service.typicality.HiddenStates`` takes it) at the end of each
  prompt that the connector asks for;
* a KV connector (``StatesConnector``, vLLM's ``kv_transfer_config``) that moves no KV cache: on the scheduler side it
  tells the model, step by step, which scheduled chunks end a prompt (its metadata), and when a request finishes it
  scores the kept state against the model's ``typicality.npz`` and returns the score in the request's
  ``kv_transfer_params`` (``TYPICALITY_KEY``), which vLLM passes through to the ``RequestOutput``.

The model hands its states to the worker side of the connector in a dict of this module (both run in the worker
process); the worker side scores them and sends the scores to the scheduler side (the engine-core process) in its
worker metadata, vLLM's channel from workers to the scheduler. A chunk is found by its first position and its token ids among
the chunks of the step (the attention metadata's ``query_start_loc``). The model's Python ``forward`` must run at
every step: in an eager engine, and on the CPU, where vLLM compiles the inner model but captures no graphs; with CUDA
graphs the server keeps the second pass (``service.typicality.HiddenStates``). ``single_pass_overrides`` says which
applies.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorWorkerMetadata,
)

from service.modelcard import CONFIG_FILE, STATS_FILE, is_adapter_dir, weights_dir

if TYPE_CHECKING:
    from service.typicality import IntentStatistics

TYPICALITY_KEY = "intentlm_typicality"
# The architectures whose vLLM class keeps prompt states here: those of the base models the docs name.
ARCHITECTURES = {
    "LlamaForCausalLM": "vllm.model_executor.models.llama",
    "Qwen2ForCausalLM": "vllm.model_executor.models.qwen2",
    "Qwen3ForCausalLM": "vllm.model_executor.models.qwen3",
}
CONNECTOR = "StatesConnector"
STATISTICS_KEY = "intentlm_statistics"  # the connector's extra config: the base model's statistics directory, or ""

Chunk = tuple[int, tuple[int, ...]]  # (position of its first token, its token ids)

# chunk -> the requests whose prompt it ends (set by the worker side of the connector before each step)
_wanted: dict[Chunk, list[str]] = {}
# request id -> the prompt's last hidden state (set by the model, taken by the worker side after the step)
_states: dict[str, torch.Tensor] = {}
# request id -> the directory of the statistics its state is scored against (set with ``_wanted``)
_models: dict[str, str] = {}
# request id -> its prompt's key (``prompt_key``), for ``_rankings`` (set with ``_wanted``)
_keys: dict[str, int] = {}
# prompt key -> the intents ordered by the distance of its state to their means, nearest first (``intent_ranking``)
_rankings: OrderedDict[int, tuple[str, ...]] = OrderedDict()
RANKINGS = 1024  # prompts whose ranking is kept: more than a batch can hold while their answers are drafted


def prompt_key(prompt_ids: Sequence[int]) -> int:
    """A prompt's key in ``_rankings`` (a tuple of ints hashes alike in every process)."""
    return hash(tuple(prompt_ids))


def intent_ranking(prompt_ids: Sequence[int]) -> tuple[str, ...]:
    """The intents ordered by how close the prompt's last hidden state lies to each intent's training states, nearest
    first (the typicality statistics' own classification of the request), or () where this process scored no such
    state. Read in vLLM's worker by the answer drafts (``service.vllm_drafts``) to guess the intent name the model is
    about to write: the same ordering as the model's own choice on 533 of the 540 test answers."""
    return _rankings.get(prompt_key(prompt_ids), ())


def register() -> None:
    """The ``vllm.general_plugins`` entry point: register the state-keeping classes (by name: nothing is imported
    until a served model asks for one)."""
    from vllm import ModelRegistry

    for architecture in ARCHITECTURES:
        ModelRegistry.register_model(f"Intentlm{architecture}", f"service.vllm_states:Intentlm{architecture}")


def single_pass_overrides(
    model_dirs: Sequence[Path], *, python_forward: bool, tensor_parallel_size: int
) -> dict[str, Any]:
    """The engine arguments that make vLLM score typicality itself, for the models of one engine (one base, maybe
    adapters over it), or {} where it cannot (no model has statistics, the base's architecture has no state-keeping
    class, the engine replays captured graphs instead of running the model's Python ``forward``, or several
    workers)."""
    import json

    with_statistics = [d for d in model_dirs if (d / STATS_FILE).is_file()]
    if not with_statistics or not python_forward or tensor_parallel_size != 1:
        return {}
    weights = weights_dir(model_dirs[0])
    architectures = json.loads((weights / CONFIG_FILE).read_text()).get("architectures") or []
    if len(architectures) != 1 or architectures[0] not in ARCHITECTURES:
        return {}
    from vllm.config import KVTransferConfig

    base = next((str(d) for d in with_statistics if not is_adapter_dir(d)), "")
    return {
        "hf_overrides": {"architectures": [f"Intentlm{architectures[0]}"]},
        "kv_transfer_config": KVTransferConfig(
            kv_connector=CONNECTOR,
            kv_connector_module_path=__name__,
            kv_role="kv_both",
            # an adapter's statistics lie in its directory, which each of its requests names (its LoRA path)
            kv_connector_extra_config={STATISTICS_KEY: base},
        ),
    }


def keep_states(input_ids: torch.Tensor | None, positions: torch.Tensor, hidden: torch.Tensor) -> None:
    """Keep the last state of each chunk of this step that ends a wanted prompt (called after the forward)."""
    if not _wanted or input_ids is None:
        return
    from vllm.forward_context import get_forward_context

    metadata = get_forward_context().attn_metadata
    if isinstance(metadata, list):  # micro-batches: not used by a single-worker engine without CUDA graphs
        return
    if not metadata:
        return
    starts = next(iter(metadata.values())).query_start_loc.tolist()
    lengths = {len(tokens) for _, tokens in _wanted}
    for start, end in zip(starts, starts[1:]):
        if end - start not in lengths:
            continue
        chunk = (int(positions[start]), tuple(input_ids[start:end].tolist()))
        for request_id in _wanted.pop(chunk, ()):
            _states[request_id] = hidden[end - 1].float().cpu()
        if not _wanted:
            return


def _keeping(base: type) -> type:
    """``base`` (a vLLM causal-LM class) whose forward also keeps prompt states."""

    class Keeping(base):  # type: ignore[misc, valid-type]
        def forward(
            self,
            input_ids: torch.Tensor | None,
            positions: torch.Tensor,
            intermediate_tensors: Any = None,
            inputs_embeds: torch.Tensor | None = None,
            **kwargs: Any,
        ) -> Any:
            hidden = super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)
            keep_states(input_ids, positions, hidden)
            return hidden

    Keeping.__name__ = Keeping.__qualname__ = f"Intentlm{base.__name__}"
    return Keeping


def __getattr__(name: str) -> type:
    """``Intentlm<Architecture>``: built on first use from vLLM's class (what ``ModelRegistry`` imports)."""
    architecture = name.removeprefix("Intentlm")
    if not name.startswith("Intentlm") or architecture not in ARCHITECTURES:
        raise AttributeError(name)
    import importlib

    cls = _keeping(getattr(importlib.import_module(ARCHITECTURES[architecture]), architecture))
    globals()[name] = cls
    return cls


# ------------------------------------------------------------------------------------------------ the connector


@dataclass
class StatesMetadata(KVConnectorMetadata):
    wanted: dict[Chunk, list[str]] = field(default_factory=dict)
    statistics: dict[str, str] = field(default_factory=dict)  # request id -> the directory of its model's statistics
    keys: dict[str, int] = field(default_factory=dict)  # request id -> its prompt's key (``prompt_key``)


@dataclass
class StatesWorkerMetadata(KVConnectorWorkerMetadata):
    scores: dict[str, float] = field(default_factory=dict)  # request id -> its prompt's typicality

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        assert isinstance(other, StatesWorkerMetadata)
        return StatesWorkerMetadata({**self.scores, **other.scores})


class StatesConnector(KVConnectorBase_V1):
    """A KV connector that transfers no KV cache: it asks the model for prompt states and returns their
    typicality with each finished request (module docstring)."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        self._base = vllm_config.kv_transfer_config.kv_connector_extra_config[STATISTICS_KEY]
        self._statistics: dict[str, IntentStatistics | None] = {}  # by directory, loaded on first use (worker side)
        self._models: dict[str, str] = {}  # request id -> its statistics directory, while its prompt runs
        self._prompts: dict[str, Sequence[int]] = {}  # requests whose prompt has not ended yet
        self._computed: dict[str, int] = {}
        self._scores: dict[str, float] = {}  # what the worker scored, until the request finishes

    # scheduler side
    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        return 0, False

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        pass

    def build_connector_meta(self, scheduler_output: Any) -> Any:
        for new in scheduler_output.scheduled_new_reqs:
            if new.prompt_token_ids is not None:
                self._prompts[new.req_id] = new.prompt_token_ids
                self._computed[new.req_id] = new.num_computed_tokens
                self._models[new.req_id] = new.lora_request.lora_path if new.lora_request else self._base
        cached = scheduler_output.scheduled_cached_reqs
        for request_id, computed in zip(cached.req_ids, cached.num_computed_tokens):
            if request_id in self._prompts:
                self._computed[request_id] = computed
        wanted: dict[Chunk, list[str]] = {}
        statistics: dict[str, str] = {}
        keys: dict[str, int] = {}
        for request_id, scheduled in scheduler_output.num_scheduled_tokens.items():
            prompt = self._prompts.get(request_id)
            if prompt is None:
                continue
            start = self._computed[request_id]
            if start + scheduled >= len(prompt):  # this step ends the prompt
                wanted.setdefault((start, tuple(prompt[start:])), []).append(request_id)
                statistics[request_id] = self._models.pop(request_id)
                keys[request_id] = prompt_key(prompt)
                del self._prompts[request_id], self._computed[request_id]
        return StatesMetadata(wanted=wanted, statistics=statistics, keys=keys)

    def update_connector_output(self, connector_output: Any) -> None:
        if isinstance(connector_output.kv_connector_worker_meta, StatesWorkerMetadata):
            self._scores.update(connector_output.kv_connector_worker_meta.scores)

    def request_finished(self, request: Any, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """The prompt's typicality goes out with the request's output. A request that finishes in the step that
        ended its prompt (its first token stopped it) goes without: the worker's score arrives after it."""
        self._prompts.pop(request.request_id, None)
        self._computed.pop(request.request_id, None)
        self._models.pop(request.request_id, None)
        score = self._scores.pop(request.request_id, None)
        return False, None if score is None else {TYPICALITY_KEY: score}

    # worker side
    def bind_connector_metadata(self, connector_metadata: Any) -> None:
        """Before the step's forward (``start_load_kv`` may run after it): what the model is to keep."""
        super().bind_connector_metadata(connector_metadata)
        _wanted.clear()
        _wanted.update(connector_metadata.wanted)
        _models.clear()
        _models.update(connector_metadata.statistics)
        _keys.clear()
        _keys.update(connector_metadata.keys)

    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        pass

    def wait_for_layer_load(self, layer_name: str) -> None:
        pass

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        pass

    def wait_for_save(self) -> None:
        pass

    def build_connector_worker_meta(self) -> StatesWorkerMetadata | None:
        """After the step: the typicality of the prompt states the model kept, for the scheduler side (which may
        run in another process)."""
        if not _states:
            return None
        scores: dict[str, float] = {}
        by_model: dict[str, list[str]] = {}
        for request_id in list(_states):
            by_model.setdefault(_models.pop(request_id, ""), []).append(request_id)
        for where, ids in by_model.items():
            states = torch.stack([_states.pop(i) for i in ids]).numpy()
            statistics = self._loaded(where)
            if statistics is None:
                continue
            squared = statistics.squared_distances(states)
            scores.update(zip(ids, map(float, statistics.typicality_of(squared))))
            for request_id, order in zip(ids, squared.argsort(1)):
                if request_id in _keys:
                    _rankings[_keys[request_id]] = tuple(statistics.intents[k] for k in order)
            while len(_rankings) > RANKINGS:
                _rankings.popitem(last=False)
        return StatesWorkerMetadata(scores) if scores else None

    def _loaded(self, where: str) -> IntentStatistics | None:
        """The statistics in ``where`` (None for a model without them), loaded once."""
        from service.typicality import IntentStatistics

        if where not in self._statistics:
            self._statistics[where] = IntentStatistics.load(where) if where else None
        return self._statistics[where]
