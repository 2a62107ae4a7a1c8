"""Typicality: how close a request's hidden state is to the training requests of its nearest intent.

The model's last hidden state at the end of the prompt (the state its answer starts from) is where a
fine-tuned model separates the intents it was taught. Training requests of one intent gather around
their mean; an out-of-scope request lands away from every mean even when the intent grammar makes
the model answer it confidently. The distance is Mahalanobis's, with one covariance shared by the
intents (Lee et al. 2018; Podolskiy et al. 2021 for out-of-domain intents), shrunk towards its
average variance (``SHRINKAGE``) because a few hundred records estimate a 576x576 covariance poorly.

``typicality = exp(-d² / (2 * dim))`` maps the squared distance ``d²`` to the nearest mean into (0, 1],
higher in scope like the other two scores (a training-like request, d² ≈ dim, scores about 0.6).

On intents held out of training (docs/decisions.md) it finds most of them at the threshold of the
lowest correct in-scope validation answer (83 %), where the intent confidence finds 19 %.

The threshold needs in-scope scores of requests the statistics were not fitted on. A validation split
of a hundred records is too few to bound the rejection of new in-scope requests at 1 % with any
margin (the bound then sits at its lowest correct score). So the statistics also keep each training
state's score under statistics fitted without it (``held_out``: ``FOLDS``-fold cross-fitting, about a
thousand scores), which on the validation splits of docs/decisions.md are distributed like new
in-scope requests' (the same median, a slightly longer low tail); training chooses its threshold
from them, and calibration pools them with the validation answers.

The statistics (intent means, precision matrix) are written by training into the model directory
(``typicality.npz``); the states come from the model through transformers, one forward pass
of the prompt (vLLM does not return hidden states with a generation), the same tokens vLLM gets.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from service.errors import IntentlmError
from service.hardware import Dtype, choose_dtype
from service.modelcard import STATS_FILE, atomic_write_bytes, is_adapter_dir

SHRINKAGE = 0.1  # chosen on the held-out intents of docs/decisions.md (0.01-0.5 all within 3 points)
FOLDS = 20  # for ``held_out``; fewer folds fit on less data and score lower (docs/decisions.md)
BATCH = 16


@dataclass(frozen=True)
class IntentStatistics:
    """Per-intent means of the training states and the inverse of their shared, shrunk covariance."""

    intents: tuple[str, ...]
    means: np.ndarray  # (intents, dim)
    precision: np.ndarray  # (dim, dim)
    # The typicality of each training state under statistics fitted without its fold (or, with training's
    # ``threshold_folds``, under a model fine-tuned without it): what new in-scope requests score, for choosing
    # the threshold. Empty for data too small to cross-fit (< 2 * FOLDS).
    held_out: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))

    @classmethod
    def fit(
        cls, states: np.ndarray, labels: Sequence[str], shrinkage: float = SHRINKAGE, folds: int = FOLDS
    ) -> IntentStatistics:
        """Fit on the training states and their intents (the first call's, for a multi-intent record),
        and score each state under statistics fitted on the other ``folds - 1`` folds (``held_out``); ``folds``
        0: no cross-fitting (for a caller with held-out scores of its own, training.trainer's threshold folds)."""
        statistics = cls._fit(states, labels, shrinkage)
        if folds < 2 or len(states) < 2 * folds:
            return statistics
        fold = np.arange(len(states)) % folds  # interleaved: data grouped by intent spreads over every fold
        held_out = np.empty(len(states), dtype=np.float32)
        for k in range(folds):
            rest = cls._fit(states[fold != k], [label for label, f in zip(labels, fold) if f != k], shrinkage)
            held_out[fold == k] = rest.typicality(states[fold == k])
        return replace(statistics, held_out=held_out)

    @classmethod
    def _fit(cls, states: np.ndarray, labels: Sequence[str], shrinkage: float) -> IntentStatistics:
        if len(states) != len(labels) or len(states) < 2:
            raise ValueError(f"need at least two states with one label each (got {len(states)} and {len(labels)})")
        intents = tuple(sorted(set(labels)))
        index = np.array([intents.index(label) for label in labels])
        x = states.astype(np.float64)
        means = np.stack([x[index == k].mean(0) for k in range(len(intents))])
        centred = x - means[index]
        covariance = centred.T @ centred / len(x)
        dim = covariance.shape[0]
        covariance = (1 - shrinkage) * covariance + shrinkage * np.trace(covariance) / dim * np.eye(dim)
        return cls(intents, means.astype(np.float32), np.linalg.inv(covariance).astype(np.float32))

    def typicality(self, states: np.ndarray) -> np.ndarray:
        """exp(-d²/(2 dim)) of each state's squared Mahalanobis distance d² to the nearest intent mean."""
        return self.typicality_of(self.squared_distances(states))

    def typicality_of(self, squared: np.ndarray) -> np.ndarray:
        """``typicality`` from ``squared_distances``' output (for a caller that also ranks the intents by it)."""
        return np.exp(-np.maximum(squared.min(1), 0) / (2 * self.means.shape[1]))

    def squared_distances(self, states: np.ndarray) -> np.ndarray:
        """Each state's squared Mahalanobis distance to each intent mean, (states, intents).

        Computed with torch, whose thread pool is the one the model runs on: numpy's BLAS keeps a pool of its own
        that spins beside vLLM's threads, which cost 90 ms per request inside vLLM's worker on the 2-core CPU
        (against nothing measurable with torch)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32))
        diff = x[:, None, :] - torch.from_numpy(self.means)[None]  # (n, intents, dim)
        # a matmul: 20x a three-operand einsum
        return ((diff @ torch.from_numpy(self.precision)) * diff).sum(-1).numpy()

    def save(self, model_dir: str | os.PathLike[str]) -> Path:
        """Write ``typicality.npz`` atomically into ``model_dir``."""

        path = Path(model_dir) / STATS_FILE
        buffer = io.BytesIO()
        np.savez(
            buffer, intents=np.array(self.intents), means=self.means, precision=self.precision, held_out=self.held_out
        )
        atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, model_dir: str | os.PathLike[str]) -> IntentStatistics | None:
        """The statistics of a model directory; None when it has none (no typicality score)."""
        path = Path(model_dir) / STATS_FILE
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as f:
            return cls(tuple(str(i) for i in f["intents"]), f["means"], f["precision"], f["held_out"])


class HiddenStates:
    """The model's final hidden state (after its last norm) at each prompt's last token, via transformers.

    The prompts are token ids exactly as vLLM gets them. The tokens that all prompts of a batch begin
    with (the system prompt's turn, about half of a short request's prompt) run once, and the rest
    of each prompt continues from their keys and values, right-padded: under causal attention padding
    after a prompt changes nothing before it, so a batched state equals the state of the prompt alone
    (to bf16 rounding). Runs on the GPU when there is one, in the dtype of service.hardware's rule, the
    engine's (``dtype``: the server's setting; auto on every other path). ``cpu_threads`` sets torch's threads (process-wide) when it runs on the
    CPU: the server passes 1, so that a pass takes one core from the vLLM engine beside it, not all of
    them (on the 2-core machine 1.7-1.9x the throughput of the default at concurrency 16, BENCHMARKS.md).
    """

    def __init__(
        self, model_dir: str | os.PathLike[str], cpu_threads: int | None = None, dtype: Dtype = "auto"
    ) -> None:
        import torch
        from transformers import AutoModel

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.dtype = choose_dtype(dtype).dtype
        if self.device == "cpu" and cpu_threads is not None:
            torch.set_num_threads(cpu_threads)
        # AutoModel: the decoder without its vocabulary projection, which this never needs.
        self.model = AutoModel.from_pretrained(str(model_dir), dtype=getattr(torch, self.dtype)).to(self.device).eval()

    def __call__(self, prompts: Sequence[Sequence[int]], *, progress: bool = False) -> np.ndarray:
        """The states of ``prompts`` (token id lists), in order, as float32 (n, dim); ``progress`` shows a bar
        (a pass over a whole data set takes minutes on a small CPU)."""
        from tqdm import tqdm

        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch together
        states: list[np.ndarray] = [np.empty(0)] * len(prompts)
        with tqdm(total=len(prompts), desc="typicality", unit="prompt", disable=not progress) as bar:
            for start in range(0, len(order), BATCH):
                chunk = order[start : start + BATCH]
                for i, state in zip(chunk, self._batch([prompts[i] for i in chunk])):
                    states[i] = state
                bar.update(len(chunk))
        return np.stack(states) if states else np.empty((0, 0), dtype=np.float32)

    def _batch(self, batch: list[Sequence[int]]) -> np.ndarray:
        import torch

        shared = _shared_prefix(batch) if len(batch) > 1 else 0
        cache = None
        with torch.inference_mode():
            if shared:
                prefix = torch.tensor([list(batch[0][:shared])], device=self.device)
                cache = self.model(input_ids=prefix, use_cache=True).past_key_values
                cache.batch_repeat_interleave(len(batch))
            rest = [p[shared:] for p in batch]
            ids = torch.zeros((len(batch), max(map(len, rest))), dtype=torch.long)
            mask = torch.zeros((len(batch), shared + ids.shape[1]), dtype=torch.long)
            for row, tokens in enumerate(rest):
                ids[row, : len(tokens)] = torch.tensor(list(tokens))
                mask[row, : shared + len(tokens)] = 1
            hidden = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                past_key_values=cache,
                use_cache=cache is not None,
            ).last_hidden_state
            last = torch.tensor([len(tokens) - 1 for tokens in rest], device=self.device)
            return hidden[torch.arange(len(batch), device=self.device), last].float().cpu().numpy()


def _shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``prompts`` share, leaving each at least one of its own."""
    shortest = min(len(p) for p in prompts)
    shared = 0
    while shared < shortest - 1 and all(p[shared] == prompts[0][shared] for p in prompts):
        shared += 1
    return shared


class TypicalityScorer:
    """A model's typicality: ``score_all`` for a data set, ``score`` for the server, where requests that arrive
    while a forward pass runs are scored together in the next.

    One worker thread runs the passes (torch releases the GIL, so the event loop and vLLM's output
    handling go on); batching the waiting prompts keeps the cost per request falling under load
    instead of queueing one pass per request.
    """

    def __init__(self, states: HiddenStates, statistics: IntentStatistics) -> None:
        self.states = states
        self.statistics = statistics
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="typicality")
        self._waiting: list[tuple[Sequence[int], asyncio.Future[float]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def score(self, prompt_ids: Sequence[int]) -> float:
        """The typicality of one prompt (token ids as vLLM gets them)."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append((prompt_ids, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                values = await loop.run_in_executor(self._executor, self.score_all, [ids for ids, _ in batch])
            except Exception as exc:  # every waiter gets the error; the next batch tries again
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), value in zip(batch, values):
                if not future.done():  # a cancelled request's future is done already
                    future.set_result(float(value))

    def score_all(self, prompts: Sequence[Sequence[int]], *, progress: bool = False) -> np.ndarray:
        """The typicality of each prompt, in order, in batches (``progress``: show a bar)."""
        return self.statistics.typicality(self.states(prompts, progress=progress))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def typicality_scorer(
    model_dir: str | os.PathLike[str], dtype: Dtype = "auto", *, cpu_threads: int | None = None
) -> TypicalityScorer | None:
    """The scorer of a model directory (a copy of its model for the forward pass, see ``HiddenStates``); None when
    the directory has no statistics."""
    statistics = IntentStatistics.load(model_dir)
    if statistics is None:
        return None
    if is_adapter_dir(model_dir):
        raise IntentlmError(
            f"{model_dir} is an adapter directory: typicality's second forward pass needs merged weights (it is "
            "scored in vLLM's own pass on one worker without CUDA graphs, as on the CPU)"
        )
    return TypicalityScorer(HiddenStates(model_dir, cpu_threads=cpu_threads, dtype=dtype), statistics)
