"""Fine-tuning: records -> answer-only-loss examples -> transformers ``Trainer`` (+PEFT) -> merged model.

What makes it fast on a CPU (each measured, see BENCHMARKS.md "Training"):

* no padding to ``seq_length``: batches are padded to their own longest record, and records of
  similar length are batched together (``group_by_length``);
* the loss covers the answer only, and the vocabulary projection (``lm_head``, 49k outputs per
  token for SmolLM2) is computed only for the answer positions: batches are padded on the LEFT so
  that every answer ends at the last position, and ``logits_to_keep`` keeps only the last
  ``longest answer + 1`` positions. Prompt tokens still go through the transformer (the answer
  attends to them) but never through the vocabulary projection or the softmax.

Position ids are counted from each row's first real token, so a left-padded row sees exactly the
positions it gets at inference time.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from service.dataset import Record, file_sha256, load_dataset
from service.errors import IntentlmError
from service.hardware import choose_dtype
from service.intents import args_are_spans
from service.modelcard import (
    ADAPTER_DIR,
    ARGS_FROM_TEXT_SHARE,
    TENSORBOARD_DIR,
    DataInfo,
    ModelCard,
    atomic_directory,
    is_model_dir,
    read_card,
    write_card,
)
from service.prompt import END_OF_TURN, build_target, prompt_token_ids
from service.scope import DEFAULT_OOS_LABEL
from service.typicality import IntentStatistics
from training.config import AUTO_THRESHOLD_FOLDS, FEW_RECORDS_PER_INTENT, TrainConfig, fit_batch_to_data
from training.data.check import check_records
from training.data.compose import compose_multi_intent

log = logging.getLogger("intentlm.train")


IGNORE_INDEX = -100


class TrainError(IntentlmError, RuntimeError):
    """Training cannot start or finish; the message says why and what to do."""


@dataclass
class Example:
    """One tokenized record: the prompt ids then the answer ids (the answer is the last ``answer_len``)."""

    input_ids: list[int]
    answer_len: int
    line: int | None = None


@dataclass
class TrainPlan:
    """Everything decided before any compute: checked inputs, resolved config, tokenized data."""

    config: TrainConfig
    data_file: Path
    records: list[Record]
    examples: list[Example]
    skipped: list[tuple[int | None, int]]  # (line, tokens) of records longer than seq_length
    base_model: Path
    output: Path
    batch_note: str | None
    intents: list[str]
    composed: int = 0  # synthetic two-call records among the examples (``compose_multi_intent``)
    folds_note: str | None = None  # how ``threshold_folds: auto`` was resolved

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.global_batch)

    @property
    def global_batch(self) -> int:
        return self.config.per_device_train_batch_size * self.config.gradient_accumulation_steps * world_size()

    @property
    def total_steps(self) -> int:
        return math.ceil(self.steps_per_epoch * self.config.num_train_epochs)

    def token_stats(self) -> dict[str, Any]:
        lengths = sorted(len(e.input_ids) for e in self.examples)
        answers = [e.answer_len for e in self.examples]
        return {
            "records": len(self.records),
            "records_composed": self.composed,
            "records_used": len(self.examples),
            "records_too_long": len(self.skipped),
            "tokens_per_epoch": sum(lengths),
            "answer_tokens_per_epoch": sum(answers),
            "length_min": lengths[0],
            "length_median": statistics.median(lengths),
            "length_p95": lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))],
            "length_max": lengths[-1],
            "answer_mean": round(statistics.fmean(answers), 1),
            "padded_tokens_per_epoch_at_seq_length": len(lengths) * self.config.seq_length,
        }


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def checkpoints_dir(output: Path) -> Path:
    """Checkpoints live beside the output (``DIR.checkpoints``): the output itself only ever holds a finished model."""
    return output.with_name(output.name + ".checkpoints")


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def end_of_turn(tokenizer: Any, config: TrainConfig) -> str:
    """ChatML's ``<|im_end|>`` with a chat template; the tokenizer's EOS on raw text (service.prompt's rule)."""
    return END_OF_TURN if config.apply_chat_template else tokenizer.eos_token


def tokenize(
    records: list[Record], tokenizer: Any, config: TrainConfig
) -> tuple[list[Example], list[tuple[int | None, int]]]:
    """Prompt and answer are tokenized separately, exactly as the server tokenizes the prompt alone."""
    eot = end_of_turn(tokenizer, config)
    prompt_ids = prompt_token_ids(
        [r.instruction for r in records],
        tokenizer,
        system_prompt=config.system_prompt,
        apply_chat_template=config.apply_chat_template,
    )
    answer_ids = tokenizer([build_target(r.output, end_of_turn=eot) for r in records], add_special_tokens=False)[
        "input_ids"
    ]
    examples, skipped = [], []
    for record, p, a in zip(records, prompt_ids, answer_ids):
        if len(p) + len(a) > config.seq_length:
            skipped.append((record.line, len(p) + len(a)))
        else:
            examples.append(Example(p + a, len(a), record.line))
    return examples, skipped


def plan_training(
    data: Path, output: Path, config: TrainConfig, explicit: set[str], base_model: Path, *, resume: bool = False
) -> TrainPlan:
    """Check every input and tokenize the data; raises TrainError/DatasetError before any training."""
    if output.exists() and not output.is_dir():
        raise TrainError(f"--output {output} exists and is a file; give a directory path")
    if not is_model_dir(base_model):
        raise TrainError(
            f"base model {base_model} not found (no config.json): run `intentlm model prepare` or pass --base-model DIR"
        )
    if resume and last_checkpoint(checkpoints_dir(output)) is None:
        raise TrainError(f"--resume: no complete checkpoint in {checkpoints_dir(output)}")
    config = continued_prompt(config, explicit, base_model)
    if config.quantization:
        check_quantization_backend()
    records = load_dataset(data)
    lint_errors = [issue for issue in check_records(records, file=str(data)).issues if issue.severity == "error"]
    if lint_errors:
        raise TrainError(
            f"{data}: the data check found {len(lint_errors)} error(s) (see `intentlm data check`): "
            + "; ".join(issue.message for issue in lint_errors[:5])
        )
    folds_note = resolve_threshold_folds(config, records)
    if config.threshold_folds:
        check_threshold_folds(records, config.threshold_folds)
    examples, skipped, composed = make_examples(records, load_tokenizer(base_model), config)
    if not examples:
        shortest = min(n for _, n in skipped)
        raise TrainError(
            f"seq_length {config.seq_length} is below the shortest record ({shortest} tokens "
            f"with the prompt); use --seq_length {2 ** math.ceil(math.log2(shortest))} or more"
        )
    batch_note = fit_batch_to_data(config, len(examples), explicit, world_size())
    intents = sorted({call.name for r in records for call in r.calls()})
    return TrainPlan(
        config, data, records, examples, skipped, base_model, output, batch_note, intents, composed, folds_note
    )


def make_examples(
    records: list[Record], tokenizer: Any, config: TrainConfig
) -> tuple[list[Example], list[tuple[int | None, int]], int]:
    """The examples of ``records`` plus the two-call records composed from them (``compose_multi_intent``), the
    records left out as too long, and how many were composed."""
    composed = compose_multi_intent(records, round(config.compose_multi_intent * len(records)), seed=config.seed)
    examples, skipped = tokenize(records + composed, tokenizer, config)
    return examples, skipped, len(composed)


def resolve_threshold_folds(config: TrainConfig, records: list[Record]) -> str | None:
    """Resolve ``threshold_folds: auto`` in ``config``: ``AUTO_THRESHOLD_FOLDS`` where the data sets a threshold
    (99 in-scope records or more: eval.calibration.choose_threshold) from under ``FEW_RECORDS_PER_INTENT`` records
    per intent, in one process; else 0. Returns what auto chose and why, for the log; None for a value given."""
    if config.threshold_folds != "auto":
        return None
    kept = in_scope(records)
    intents = {c.name for r in kept for c in r.calls() if c.name != DEFAULT_OOS_LABEL}
    per_intent = len(kept) / max(1, len(intents))
    few = len(kept) >= 99 and per_intent < FEW_RECORDS_PER_INTENT and world_size() == 1
    config.threshold_folds = AUTO_THRESHOLD_FOLDS if few else 0
    return f"auto: {per_intent:.0f} in-scope records per intent, {len(kept)} in all"


def check_threshold_folds(records: list[Record], folds: int) -> None:
    """``threshold_folds`` needs every fold's model to have in-scope records to fit its statistics on, and one
    process: the folds' models are trained and scored one after the other in it."""
    if world_size() > 1:
        raise TrainError("threshold_folds runs in one process: train without torchrun/accelerate, or set it to 0")
    kept = len(in_scope(records))
    if kept < 2 * folds:
        raise TrainError(f"threshold_folds {folds} needs at least {2 * folds} in-scope records (got {kept})")


def continued_prompt(config: TrainConfig, explicit: set[str], base_model: Path) -> TrainConfig:
    """Continuing from a trained model (``--base-model`` with an ``intentlm.json``) keeps the prompt it was trained
    and is served with: its card's system prompt and chat-template choice, unless the run sets them itself (a model
    trained with a custom prompt would otherwise silently continue, and then be served, with the default one)."""
    card = read_card(base_model)
    if card is None:
        return config
    inherited = {"system_prompt": card.system_prompt, "apply_chat_template": card.apply_chat_template}
    return config.model_copy(update={k: v for k, v in inherited.items() if k not in explicit})


def check_quantization_backend() -> None:
    """4/8-bit loading needs bitsandbytes; its CPU backend works (measured here), so only its absence is an error."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainError(
            "load_in_4bit/load_in_8bit need bitsandbytes (pip install bitsandbytes); "
            "or train without quantization: --load_in_4bit false"
        )


def last_checkpoint(directory: Path) -> str | None:
    """The newest complete checkpoint in ``directory``, to resume from.

    transformers writes a checkpoint's ``trainer_state.json`` last, so a checkpoint without a readable one
    was cut off mid-save (a kill during the write) and cannot be resumed from; the one before it can.
    (transformers' own ``get_last_checkpoint`` takes the newest directory, complete or not.)"""
    complete = [
        path
        for path in directory.glob("checkpoint-*")
        if path.name.removeprefix("checkpoint-").isdigit() and _readable_json(path / "trainer_state.json")
    ]
    return str(max(complete, key=lambda path: int(path.name.removeprefix("checkpoint-")))) if complete else None


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


def compute_dtype(config: TrainConfig) -> Any:
    """The torch dtype of service.hardware's rule (``dtype: auto``: bfloat16 where the hardware computes it
    natively, else float32), the one the server and the evaluator use too."""
    import torch

    return getattr(torch, choose_dtype(config.dtype).dtype)


def load_model(plan: TrainPlan) -> Any:
    """The base model ready to train: LoRA adapters (fp32) over a frozen bf16/fp32/4-bit/8-bit base, or the full model.

    Full fine-tuning keeps fp32 master weights and computes under bf16 autocast (see ``training_args``):
    bf16 weights would round away AdamW's small updates.
    """
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = plan.config
    dtype = compute_dtype(config)
    kwargs: dict[str, Any] = {"dtype": dtype if config.is_lora else torch.float32}
    if config.quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    elif config.quantization == "8bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(plan.base_model, **kwargs)
    model.config.use_cache = False
    if not config.is_lora:
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.quantization:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets: str | list[str] = config.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    lora = LoraConfig(
        r=config.lora_dim,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


class AnswerOnlyCollator:
    """Left-pads a batch to its own longest record; labels and logits cover only the answer window."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        keep = max(b["answer_len"] for b in batch) + 1  # the last prompt position predicts the first answer token
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), keep), IGNORE_INDEX, dtype=torch.long)
        for row, b in enumerate(batch):
            ids = torch.tensor(b["input_ids"], dtype=torch.long)
            input_ids[row, width - len(ids) :] = ids
            attention[row, width - len(ids) :] = 1
            labels[row, keep - b["answer_len"] :] = ids[len(ids) - b["answer_len"] :]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        # The model's loss shifts labels by one: logits[:, j] is scored against labels[:, j + 1].
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "position_ids": positions,
            "labels": labels,
            "logits_to_keep": keep,
        }


def training_args(plan: TrainPlan, run_dir: Path) -> Any:
    import torch
    from transformers import TrainingArguments

    config = plan.config
    full_bf16 = not config.is_lora and compute_dtype(config) == torch.bfloat16
    return TrainingArguments(
        output_dir=str(run_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        label_smoothing_factor=config.label_smoothing,
        seed=config.seed,
        data_seed=config.seed,
        bf16=full_bf16,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=1,
        report_to="none",
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )


def make_trainer_class() -> type:
    """The ``Trainer`` subclass is built lazily so that importing this module does not import torch."""
    from transformers import Trainer

    class IntentTrainer(Trainer):
        """Adds tokens/s and ETA to every log record (progress bar, TensorBoard, log history)."""

        _last_log: tuple[float, int] | None = None

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            now, tokens = time.monotonic(), self.state.num_input_tokens_seen
            if self._last_log is not None and now > self._last_log[0] and "loss" in logs:
                logs["tokens_per_second"] = round((tokens - self._last_log[1]) / (now - self._last_log[0]), 1)
            if start_time is not None and self.state.global_step:
                per_step = (time.time() - start_time) / max(1, self.state.global_step - self._initial_global_step)
                logs["eta_seconds"] = round(per_step * (self.state.max_steps - self.state.global_step), 1)
            self._last_log = (now, tokens)
            super().log(logs, start_time)

    return IntentTrainer


def make_progress_callback() -> Any:
    from transformers.trainer_callback import ProgressCallback

    class Progress(ProgressCallback):
        """tqdm's bar already shows the ETA; this adds loss and tokens/s beside it."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if self.training_bar is not None and logs and "loss" in logs:
                postfix = {"loss": f"{logs['loss']:.4f}"}
                if "tokens_per_second" in logs:
                    postfix["tok/s"] = f"{logs['tokens_per_second']:.0f}"
                self.training_bar.set_postfix(postfix, refresh=False)
            super().on_log(args, state, control, logs=logs, **kwargs)

    return Progress


def train(
    plan: TrainPlan,
    *,
    resume: bool = False,
    tensorboard_dir: Path | None = None,
    eval_data: Path | None = None,
    adapter: bool = False,
) -> ModelCard:
    """Train, merge and write the model directory atomically; returns its card. ``adapter`` (a LoRA run): write an
    adapter directory instead (the adapter, its card and statistics; served over the base, see
    ``service.modelcard.is_adapter_dir``); its statistics come from a merged copy that is not kept."""
    if adapter and not plan.config.is_lora:
        raise TrainError("--adapter needs a LoRA run (lora or qlora): a full fine-tune has no adapter to keep")
    import torch
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback
    from transformers.trainer_callback import ProgressCallback

    config = plan.config
    run_dir = checkpoints_dir(plan.output)
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "train_config.json").write_text(config.model_dump_json(indent=2))
    # before the model loads: the folds' models then never share the memory with it
    held_out = out_of_fold_typicality(plan, run_dir / "threshold_folds") if config.threshold_folds else None
    tb_dir = tensorboard_dir or run_dir / TENSORBOARD_DIR
    torch.manual_seed(config.seed)
    model = load_model(plan)
    tokenizer = load_tokenizer(plan.base_model)
    dataset = [{"input_ids": e.input_ids, "answer_len": e.answer_len} for e in plan.examples]
    trainer = make_trainer_class()(
        model=model,
        args=training_args(plan, run_dir),
        train_dataset=dataset,
        data_collator=AnswerOnlyCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        callbacks=[TensorBoardCallback(SummaryWriter(str(tb_dir)))],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(make_progress_callback())
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=last_checkpoint(run_dir) if resume else None)
    runtime = time.monotonic() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics: dict[str, Any] = {
        "train_loss": round(result.training_loss, 4),
        "final_loss": round(losses[-1], 4) if losses else None,
        "train_runtime_s": round(runtime, 1),
        "train_tokens": trainer.state.num_input_tokens_seen,
        # this session's tokens over this session's training time (a resumed run counts its own part)
        "tokens_per_second": round(
            (trainer.state.num_input_tokens_seen - trainer._initial_num_input_tokens_seen)
            / result.metrics["train_runtime"],
            1,
        ),
        "optimizer_steps": trainer.state.global_step,
        "records_too_long": len(plan.skipped),
    }
    if not trainer.is_world_process_zero():
        return ModelCard()
    adapter_dir = run_dir / ADAPTER_DIR
    if config.is_lora:
        trainer.model.save_pretrained(adapter_dir)
    card = ModelCard(
        base_model=base_model_name(plan.base_model),
        system_prompt=config.system_prompt,
        apply_chat_template=config.apply_chat_template,
        intents=plan.intents,
        args_from_text=args_from_text(plan.records),
        train_config={**config.model_dump(), "mode": config.mode, "global_batch": plan.global_batch},
        data=DataInfo(
            file=str(plan.data_file.resolve()), sha256=file_sha256(plan.data_file), records=len(plan.records)
        ),
        metrics=metrics,
    )
    from training.merge import merge_adapter, save_model_dir

    merged = merge_adapter(plan.base_model, adapter_dir) if config.is_lora else trainer.model
    with atomic_directory(plan.output) as tmp:
        weights = run_dir / "merged" if adapter else tmp
        save_model_dir(merged, plan.base_model, weights)
        statistics = typicality_statistics(weights, plan.records, card, held_out=held_out)
        if statistics is not None:
            statistics.save(tmp)
            card.typicality_threshold = typicality_threshold(statistics)
        if adapter:  # PEFT's files at the top: the directory is the adapter, naming its base
            shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
        elif config.is_lora:  # the adapter too: small, and what `intentlm model prepare` bundles for the demo
            shutil.copytree(adapter_dir, tmp / ADAPTER_DIR)
        write_card(tmp, card)
        if eval_data is not None:  # answered as served: the card's prompt, grammar and out-of-scope rule
            card.metrics["eval"] = evaluate_model(tmp, eval_data)
            write_card(tmp, card)
        if tensorboard_dir is None and tb_dir.is_dir():
            shutil.copytree(tb_dir, tmp / TENSORBOARD_DIR)
    shutil.rmtree(run_dir, ignore_errors=True)
    return card


def args_from_text(records: list[Record]) -> bool:
    """Whether the data's arguments are copied from the instructions (then decoding may only copy)."""
    return args_are_spans((r.instruction, r.calls()) for r in records) >= ARGS_FROM_TEXT_SHARE


def in_scope(records: list[Record]) -> list[Record]:
    """The records the out-of-scope scores learn "in scope" from: the user's records answered with the
    out-of-scope label teach the model what is *not* in scope."""
    return [r for r in records if any(c.name != DEFAULT_OOS_LABEL for c in r.calls())]


def typicality_statistics(
    model_dir: Path, records: list[Record], card: ModelCard, held_out: np.ndarray | None = None
) -> IntentStatistics | None:
    """The typicality statistics (service.typicality) of the trained model in ``model_dir``: its states of the
    in-scope records' prompts (as the server renders them), labelled with their first in-scope intent. None
    (no typicality score) for data with fewer than two in-scope records, which cannot estimate a spread.
    ``held_out``: the in-scope records' scores for the threshold (``out_of_fold_typicality``) instead of the
    cross-fitted ones."""
    from service.typicality import HiddenStates

    kept = in_scope(records)
    if len(kept) < 2:
        log.warning("fewer than two in-scope records: the model gets no typicality statistics")
        return None
    prompts = prompt_token_ids(
        [r.instruction for r in kept],
        load_tokenizer(model_dir),
        system_prompt=card.system_prompt,
        apply_chat_template=card.apply_chat_template,
    )
    states = HiddenStates(model_dir)(prompts, progress=True)
    labels = [next(c.name for c in r.calls() if c.name != DEFAULT_OOS_LABEL) for r in kept]
    if held_out is None:
        return IntentStatistics.fit(states, labels)
    return replace(IntentStatistics.fit(states, labels, folds=0), held_out=held_out)


def out_of_fold_typicality(plan: TrainPlan, work_dir: Path) -> np.ndarray:
    """Each in-scope record's typicality under a model fine-tuned by the same recipe without it, in the order of
    ``in_scope(plan.records)``: ``threshold_folds`` more fine-tunes, each on the records outside one fold (every
    ``threshold_folds``-th in-scope record; the records labelled out of scope train every fold's model), each
    scoring its fold with its own statistics.

    Why: the cross-fitted scores (``IntentStatistics.held_out``) leave one fold out of the statistics but not of the
    model, and a model fine-tuned on a few records per intent finds those records more typical than new ones; its
    threshold then rejects more than 1 % of new in-scope requests (CLINC150: 2.2-2.5 %, docs/decisions.md). The
    records a model never saw score as new requests do."""
    from service.typicality import HiddenStates

    folds = plan.config.threshold_folds
    kept = in_scope(plan.records)
    fold_of = {id(r): j % folds for j, r in enumerate(kept)}
    scores = np.empty(len(kept), dtype=np.float32)
    tokenizer = load_tokenizer(plan.base_model)
    config = plan.config.model_copy(update={"threshold_folds": 0})
    for fold in range(folds):
        records = [r for r in plan.records if fold_of.get(id(r)) != fold]
        examples, skipped, composed = make_examples(records, tokenizer, config)
        output = work_dir / f"fold{fold}"
        log.info(
            "threshold fold %d/%d: fine-tuning on %d of %d records, then scoring the rest",
            fold + 1,
            folds,
            len(records),
            len(plan.records),
        )
        fold_plan = replace(
            plan,
            config=config,
            records=records,
            examples=examples,
            skipped=skipped,
            output=output,
            batch_note=None,
            composed=composed,
        )
        card = train(fold_plan)
        statistics = IntentStatistics.load(output)
        if statistics is None:  # check_threshold_folds leaves every fold's model two in-scope records or more
            raise TrainError(f"threshold fold {fold + 1}: its model has no typicality statistics")
        index = [j for j, r in enumerate(kept) if fold_of[id(r)] == fold]
        prompts = prompt_token_ids(
            [kept[j].instruction for j in index],
            tokenizer,
            system_prompt=card.system_prompt,
            apply_chat_template=card.apply_chat_template,
        )
        scores[index] = statistics.typicality(HiddenStates(output)(prompts, progress=True))
        shutil.rmtree(output)
    return scores


def typicality_threshold(statistics: IntentStatistics) -> float | None:
    """The out-of-scope threshold the training data alone supports, so that a trained model knows what it
    does not know before any calibration: the split-conformal threshold (eval.calibration.choose_threshold)
    over the cross-fitted scores of the training requests, which rejects at most 1 % of new in-scope requests
    scored like them. None (off) when there are too few of them (under 99) to bound that."""
    from eval.calibration import choose_threshold

    held_out = statistics.held_out.tolist()
    return (choose_threshold(held_out, [True] * len(held_out)) or None) if held_out else None


def base_model_name(base_model: Path) -> str:
    base_card = read_card(base_model)
    return (base_card.base_model if base_card and base_card.base_model else None) or str(base_model.resolve())


def evaluate_model(model_dir: Path, data: Path) -> dict[str, Any]:
    """The answers of the model in ``model_dir`` to ``data``, as the server gives them (``intentlm eval --model``'s
    predictor, eval.runner), scored with the evaluation metrics (eval.metrics): the reference script's two figures
    first, then exact match, macro F1 and the malformed rate."""
    from eval.metrics import compute_metrics
    from eval.runner import predict_with_model

    records = load_dataset(data)
    predictions = predict_with_model(model_dir, [r.instruction for r in records])
    metrics = compute_metrics([r.output for r in records], [p.text for p in predictions])
    return {
        "file": str(data.resolve()),
        "records": len(records),
        "intent_accuracy": metrics.reference.intent_accuracy,
        "param_accuracy": metrics.reference.parameter_accuracy,
        "exact_match": metrics.exact_match,
        "macro_f1": metrics.macro_f1,
        "malformed_rate": metrics.malformed_rate,
    }


def dry_run_report(plan: TrainPlan) -> dict[str, Any]:
    """What ``--dry-run`` prints: the resolved config, token statistics and the estimated steps and time."""
    stats = plan.token_stats()
    seconds = estimate_seconds(plan)
    return {
        "config": plan.config.model_dump(),
        "mode": plan.config.mode,
        "global_batch": plan.global_batch,
        "batch_note": plan.batch_note,
        "data": str(plan.data_file),
        "intents": plan.intents,
        "tokens": stats,
        "records_too_long": [{"line": line, "tokens": n} for line, n in plan.skipped[:20]],
        "optimizer_steps_per_epoch": plan.steps_per_epoch,
        "optimizer_steps": plan.total_steps,
        "estimated_seconds": round(seconds * max(1, plan.config.threshold_folds)),  # K folds of (K-1)/K, then 1
    }


def estimate_seconds(plan: TrainPlan, trials: int = 2) -> float:
    """Time a few real training micro-steps on a median-length batch and scale to the run."""
    import torch

    model = load_model(plan)
    model.train()
    tokenizer = load_tokenizer(plan.base_model)
    collator = AnswerOnlyCollator(tokenizer.pad_token_id)
    by_length = sorted(plan.examples, key=lambda e: len(e.input_ids))
    middle = len(by_length) // 2
    size = min(plan.config.per_device_train_batch_size, len(by_length))
    batch = collator(
        [{"input_ids": e.input_ids, "answer_len": e.answer_len} for e in by_length[max(0, middle - size // 2) :][:size]]
    )
    params = [p for p in model.parameters() if p.requires_grad]
    timings = []
    for _ in range(trials + 1):
        started = time.monotonic()
        with torch.autocast(
            "cpu",
            dtype=torch.bfloat16,
            enabled=not plan.config.is_lora
            and compute_dtype(plan.config) == torch.bfloat16
            and not torch.cuda.is_available(),
        ):
            loss = model(**batch).loss
        loss.backward()
        for p in params:
            p.grad = None
        timings.append(time.monotonic() - started)
    per_micro_batch = statistics.median(timings[1:])
    micro_batches = math.ceil(len(plan.examples) / size) * plan.config.num_train_epochs
    return per_micro_batch * micro_batches


def describe(plan: TrainPlan) -> list[str]:
    """The lines logged before training starts."""
    stats = plan.token_stats()
    lines = [
        f"{plan.config.mode} fine-tuning of {plan.base_model} on {plan.data_file}: "
        f"{stats['records_used']} records ({plan.composed} composed), {stats['tokens_per_epoch']} tokens/epoch "
        f"({stats['answer_tokens_per_epoch']} answer tokens scored), {len(plan.intents)} intents"
    ]
    lines.append(str(choose_dtype(plan.config.dtype)))
    if plan.batch_note:
        lines.append(plan.batch_note)
    if plan.skipped:
        shown = ", ".join(f"line {line} ({n} tokens)" for line, n in plan.skipped[:10])
        lines.append(
            f"WARNING: {len(plan.skipped)} record(s) longer than seq_length {plan.config.seq_length} "
            f"left out: {shown}{' ...' if len(plan.skipped) > 10 else ''}"
        )
    lines.append(
        f"global batch {plan.global_batch}, {plan.steps_per_epoch} steps/epoch, {plan.total_steps} optimizer steps"
    )
    note = f" ({plan.folds_note})" if plan.folds_note else ""
    if plan.config.threshold_folds:
        lines.append(
            f"threshold_folds {plan.config.threshold_folds}{note}: as many more fine-tunes first, each without one "
            "fold of the records, for the out-of-scope threshold (about that many times the training time)"
        )
    elif note:
        lines.append(f"threshold_folds 0{note}: the out-of-scope threshold from the model's cross-fitted scores")
    return lines
