"""service.typicality: the statistics, the hidden states of the real model, the server's batching scorer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from service.modelcard import STATS_FILE, ModelCard, write_card
from service.scope import OutOfScopeRule
from service.typicality import HiddenStates, IntentStatistics, TypicalityScorer, _shared_prefix
from training.cli import model


def clusters(rng: np.random.Generator, n: int = 200, dim: int = 16) -> tuple[np.ndarray, list[str]]:
    centres = {"a": np.zeros(dim), "b": np.full(dim, 6.0)}
    labels = [("a", "b")[i % 2] for i in range(n)]
    return np.stack([centres[label] + rng.normal(size=dim) for label in labels]), labels


def test_states_near_an_intent_are_typical_and_far_ones_are_not() -> None:
    rng = np.random.default_rng(0)
    states, labels = clusters(rng)
    statistics = IntentStatistics.fit(states, labels)
    assert statistics.intents == ("a", "b") and statistics.means.shape == (2, 16)
    near = statistics.typicality(np.stack([rng.normal(size=16), np.full(16, 6.0) + rng.normal(size=16)]))
    far = statistics.typicality(np.stack([np.full(16, 3.0), np.full(16, -6.0)]))
    assert near.min() > 0.3 and far.max() < 0.01  # a training-like state scores ~exp(-1/2)
    assert ((far > 0) & (near <= 1)).all()


def test_cross_fitted_scores_are_distributed_like_new_states() -> None:
    """``held_out`` scores each training state under statistics fitted without it: like a fresh state, not like
    the training states themselves (which the fit pulls closer: a 32x32 covariance from 200 states)."""
    rng = np.random.default_rng(2)
    states, labels = clusters(rng, dim=32)
    statistics = IntentStatistics.fit(states, labels)
    assert statistics.held_out.shape == (200,) and statistics.held_out.dtype == np.float32
    fresh = np.median(statistics.typicality(clusters(rng, n=2000, dim=32)[0]))  # 0.564
    in_sample = np.median(statistics.typicality(states))  # 0.620
    assert abs(np.median(statistics.held_out) - fresh) < 0.01 and in_sample - fresh > 0.04  # held out: 0.565
    assert IntentStatistics.fit(states[:39], labels[:39]).held_out.size == 0  # too few to cross-fit in 20 folds
    assert IntentStatistics.fit(states, labels, folds=0).held_out.size == 0  # the caller brings its own


def test_statistics_round_trip_through_the_model_directory(tmp_path: Path) -> None:
    states, labels = clusters(np.random.default_rng(1))
    statistics = IntentStatistics.fit(states, labels)
    path = statistics.save(tmp_path)
    assert path == tmp_path / STATS_FILE and not path.name.endswith(".safetensors")  # vLLM would load it as weights
    again = IntentStatistics.load(tmp_path)
    assert again is not None and again.intents == ("a", "b")
    assert np.array_equal(again.precision, statistics.precision) and np.array_equal(again.means, statistics.means)
    assert np.array_equal(again.held_out, statistics.held_out)
    assert IntentStatistics.load(tmp_path / "missing") is None
    with pytest.raises(ValueError, match="at least two states"):
        IntentStatistics.fit(states[:1], labels[:1])


def test_the_rule_rejects_on_typicality_and_ignores_a_missing_score() -> None:
    rule = OutOfScopeRule(0.5, 0.2)
    assert rule.rejection(0.9, 0.1) == "typicality"
    assert rule.rejection(0.4, 0.1) == "confidence"  # the first score under its threshold names it
    assert not rule.rejects(0.9, None) and not rule.rejects(0.9, 0.2)
    card = ModelCard(typicality_threshold=0.3)
    assert card.oos_rule().typicality_threshold == 0.3 and card.oos_rule(None, 0.0).typicality_threshold == 0.0


class FakeStates:
    """Counts the forward passes and the prompts in each (the real one: tests below)."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[int] = []
        self.fail = fail

    def __call__(self, prompts: list[list[int]], *, progress: bool = False) -> np.ndarray:
        self.batches.append(len(prompts))
        if self.fail:
            raise RuntimeError("out of memory")
        return np.stack([np.full(2, float(len(p))) for p in prompts])


def test_the_scorer_batches_requests_that_wait_and_passes_errors_on() -> None:
    statistics = IntentStatistics(("a",), np.zeros((1, 2), np.float32), np.eye(2, dtype=np.float32))

    async def score(states: FakeStates, prompts: list[list[int]]) -> list[float]:
        scorer = TypicalityScorer(states, statistics)  # type: ignore[arg-type]
        try:
            return list(await asyncio.gather(*(scorer.score(p) for p in prompts)))
        finally:
            scorer.shutdown()

    states = FakeStates()
    values = asyncio.run(score(states, [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]]))
    assert values == pytest.approx([np.exp(-n * n * 2 / 4) for n in (1, 2, 3, 4)])  # in order
    assert sum(states.batches) == 4 and len(states.batches) < 4  # the ones that waited went together
    with pytest.raises(RuntimeError, match="out of memory"):
        asyncio.run(score(FakeStates(fail=True), [[1], [2]]))


def test_a_failed_pass_costs_the_reply_its_typicality_not_its_answer(caplog: pytest.LogCaptureFixture) -> None:
    from service.engine import _typicality_of

    statistics = IntentStatistics(("a",), np.zeros((1, 2), np.float32), np.eye(2, dtype=np.float32))

    async def one(states: FakeStates) -> float | None:
        scorer = TypicalityScorer(states, statistics)  # type: ignore[arg-type]
        try:
            return await _typicality_of(scorer, [1, 2])
        finally:
            scorer.shutdown()

    assert asyncio.run(one(FakeStates())) == pytest.approx(np.exp(-8 / 4))
    assert asyncio.run(one(FakeStates(fail=True))) is None
    assert "the typicality pass failed" in caplog.text
    assert asyncio.run(_typicality_of(None, [1])) is None


def test_batched_states_of_the_real_model_equal_each_prompt_alone(base_model: Path) -> None:
    """The shared system-prompt turn run once, right padding under causal attention: a prompt's state does not
    depend on its batch (to bf16 rounding), nor does its typicality."""
    from transformers import AutoTokenizer

    from service.prompt import build_prompt

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    texts = ("turn off the lights", "wake me up at seven am tomorrow please", "volume", "order a pizza")
    prompts = [tokenizer.encode(build_prompt(t, tokenizer=tokenizer), add_special_tokens=False) for t in texts]
    assert _shared_prefix(prompts) >= 10 and _shared_prefix([[1, 2], [1, 2, 3]]) == 1  # each keeps a token
    states = HiddenStates(base_model)
    together = states(prompts)
    alone = np.stack([states([p])[0] for p in prompts])
    assert together.shape == (4, 576) and together.dtype == np.float32
    assert np.allclose(together, alone, atol=0.05 * np.abs(alone).max())
    from conftest import TRAIN_FILE

    records = [r for r in json.loads(TRAIN_FILE.read_text()) if ";" not in r["output"]][:48]
    statistics = IntentStatistics.fit(
        states(
            [
                tokenizer.encode(build_prompt(r["instruction"], tokenizer=tokenizer), add_special_tokens=False)
                for r in records
            ]
        ),
        [r["output"].split("(")[0] for r in records],
    )
    # bf16: within 0.02 here (untrained model, 48 records); the demo model's agree within 1.4 % (32 validation prompts)
    assert statistics.typicality(together) == pytest.approx(statistics.typicality(alone), abs=0.02)


def test_statistics_of_a_real_model_leave_out_oos_records_and_show_in_model_info(
    base_model: Path, tmp_path: Path
) -> None:
    """What `intentlm train` writes, on the real base model's states: statistics of the in-scope intents only
    (oos() records teach what is *not* in scope), shown by `intentlm model info`."""
    from conftest import link_model

    from service.dataset import Record
    from training.trainer import typicality_statistics

    model_dir = link_model(base_model, tmp_path / "model")
    records = [
        Record("wake me at seven", "alarm_set(seven)"),
        Record("wake me up at six am", "alarm_set(six am)"),
        Record("lights off", "iot_hue_lightoff()"),
        Record("tell me a joke", "oos()"),
    ]
    card = ModelCard(intents=["alarm_set", "iot_hue_lightoff"])
    write_card(model_dir, card)
    statistics = typicality_statistics(model_dir, records, card)
    assert statistics is not None and statistics.intents == ("alarm_set", "iot_hue_lightoff")
    statistics.save(model_dir)
    info = CliRunner().invoke(model, ["info", "--model", str(model_dir)])
    assert info.exit_code == 0, info.output
    assert "statistics of 2 intents, 576 dimensions" in info.output


def test_real_statistics_support_the_threshold_training_sets(base_model: Path, tmp_path: Path) -> None:
    """120 in-scope records (the real model's states): 120 cross-fitted scores, and the threshold training writes
    into the card is their lowest (120 scores may let none go at 1 %)."""
    from conftest import TRAIN_FILE

    from service.dataset import load_dataset
    from training.trainer import typicality_statistics, typicality_threshold

    records = [r for r in load_dataset(TRAIN_FILE) if len(r.calls()) == 1][:120]
    statistics = typicality_statistics(base_model, records, ModelCard())
    assert statistics is not None and statistics.held_out.shape == (120,)
    assert typicality_threshold(statistics) == pytest.approx(float(statistics.held_out.min()))


def test_data_with_one_in_scope_record_gets_no_statistics(tmp_path: Path) -> None:
    """Training finishes without the score rather than failing at the end."""
    from service.dataset import Record
    from training.trainer import typicality_statistics

    records = [Record("wake me at seven", "alarm_set(seven)"), Record("tell me a joke", "oos()")]
    assert typicality_statistics(tmp_path, records, ModelCard()) is None


def test_training_sets_the_threshold_its_cross_fitted_scores_support() -> None:
    """200 scores may let one go (split-conformal at 1 %): the threshold is the second lowest; none without them."""
    from training.trainer import typicality_threshold

    states, labels = clusters(np.random.default_rng(3))
    statistics = IntentStatistics.fit(states, labels)
    assert typicality_threshold(statistics) == pytest.approx(float(np.sort(statistics.held_out)[1]))
    assert typicality_threshold(IntentStatistics.fit(states[:30], labels[:30])) is None


@pytest.mark.engine
def test_vllm_scores_typicality_in_its_own_pass_as_the_second_pass_does(demo_model: Path) -> None:
    """service.vllm_states: the state vLLM's forward pass keeps and the connector scores equals the state of the
    transformers pass (float32, both), on 100 test prompts decoded together."""
    from conftest import TEST_FILE

    from eval.runner import predict_with_model
    from service.config import EngineSettings
    from service.modelcard import read_card
    from service.predictor import Predictor
    from service.typicality import typicality_scorer

    assert EngineSettings().single_pass_typicality(demo_model)  # the demo is served so
    texts = [r["instruction"] for r in json.loads(TEST_FILE.read_text())[:100]]
    single = [p.typicality for p in predict_with_model(demo_model, texts, dtype="float32", progress=False)]
    scorer = typicality_scorer(demo_model, "float32")
    assert scorer is not None
    from transformers import AutoTokenizer

    predictor = Predictor(read_card(demo_model), AutoTokenizer.from_pretrained(demo_model), max_model_len=2048)
    prompts = [predictor.prompt_ids(t) for t in texts]
    two = scorer.score_all(prompts)
    assert None not in single
    assert single == pytest.approx(two.tolist(), abs=1e-4)
    # the same pass ranks the intents for the answer drafts (service.vllm_drafts), kept in the worker (this process:
    # the offline engine runs in-process); nearest first, as the statistics rank the second pass's states
    from service.vllm_states import intent_ranking

    states = scorer.states(prompts)
    for prompt, distances in zip(prompts, scorer.statistics.squared_distances(states)):
        assert intent_ranking(prompt)[0] == scorer.statistics.intents[int(distances.argmin())]
