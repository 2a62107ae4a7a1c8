"""The data-preparation strategy as a linter (``intentlm data check``, DESIGN §2).

The reference's strategy, and what each finding is:

* 50–100 records per intent in single-intent records: fewer than 50 is a warning (more than 100
  is fine: the reference says to add data when accuracy falls short).
* Balanced intents: the largest single-intent count over the smallest above 1.5 is a warning.
  1.5 lets a 100-record intent sit beside a 67-record one, the spread inside the recommended
  50–100 range, and flags the 2× imbalances that visibly bias a small model.
* Multi-intent records at least 20 % of the single-intent count: a warning when there are some
  but too few. A dataset with none is a single-intent scenario, where the rule does not apply (an
  info). Multi-round chats are stored folded into one instruction (DESIGN §2), so they cannot be
  told apart from single-round records and count by their calls like any other.
* Every intent of a multi-intent record also seen alone: an error, because the reference says
  "must" (the model cannot learn an intent it only meets in combinations).
* Same instruction with different outputs: an error (the model is taught two answers).
  Same instruction and output twice: a warning (it only weights that example).
  Instructions are compared ignoring case and runs of whitespace, outputs in canonical form.
* Malformed outputs and empty fields: errors, every one of them with its record and line.
* Outputs not in canonical form (``weather_search (Hangzhou)``): a warning, since constrained
  decoding emits canonical text and the model should be trained on what it will be asked to write.
* Token lengths of prompt + answer (the prompt the model is trained and served with, DESIGN §3):
  records longer than ``seq_length`` are left out of training (a warning); the recommended
  ``seq_length`` is the next power of two above the longest record, as the reference advises.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from service.dataset import Record, same_text_key
from service.intents import IntentParseError, format_calls, parse

Severity = Literal["error", "warning", "info"]

MIN_PER_INTENT = 50
MAX_PER_INTENT = 100
MAX_BALANCE_RATIO = 1.5
MIN_MULTI_SHARE = 0.2
# The training default (DESIGN §6, the reference's default).
DEFAULT_SEQ_LENGTH = 128


@dataclass
class Issue:
    """One finding; ``records`` are ``(record number, line)`` pairs, 1-based, in file order."""

    severity: Severity
    code: str
    message: str
    records: list[tuple[int, int | None]] = field(default_factory=list)


@dataclass
class TokenStats:
    """Prompt + answer token lengths, measured with ``tokenizer``."""

    tokenizer: str
    seq_length: int
    min: int
    p50: int
    p95: int
    max: int
    over_seq_length: int
    recommended_seq_length: int


@dataclass
class Report:
    file: str
    records: int
    single_intent: dict[str, int]
    multi_intent_records: int
    multi_intent_use: dict[str, int]
    tokens: TokenStats | None = None
    issues: list[Issue] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(issue.severity == "error" for issue in self.issues)

    @property
    def warnings(self) -> int:
        return sum(issue.severity == "warning" for issue in self.issues)

    @property
    def single_intent_records(self) -> int:
        return sum(self.single_intent.values())

    @property
    def balance_ratio(self) -> float | None:
        counts = list(self.single_intent.values())
        return max(counts) / min(counts) if len(counts) > 1 else None

    @property
    def multi_intent_share(self) -> float | None:
        single = self.single_intent_records
        return self.multi_intent_records / single if single else None

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "records": self.records,
            "single_intent": self.single_intent,
            "single_intent_records": self.single_intent_records,
            "balance_ratio": self.balance_ratio,
            "multi_intent_records": self.multi_intent_records,
            "multi_intent_share": self.multi_intent_share,
            "multi_intent_use": self.multi_intent_use,
            "tokens": asdict(self.tokens) if self.tokens else None,
            "errors": self.errors,
            "warnings": self.warnings,
            "issues": [
                {**asdict(issue), "records": [{"record": r, "line": line} for r, line in issue.records]}
                for issue in self.issues
            ],
        }


def check_records(records: list[Record], *, file: str = "") -> Report:
    """Lint records read with ``load_dataset(check_outputs=False)`` (content unchecked)."""
    single: Counter[str] = Counter()
    multi_use: Counter[str] = Counter()
    multi_records = 0
    empty: dict[str, list[tuple[int, int | None]]] = {"instruction": [], "output": []}
    malformed: list[Issue] = []
    non_canonical: list[tuple[int, int | None]] = []
    example = ""
    seen: dict[str, dict[str, list[tuple[int, int | None]]]] = {}  # instruction -> output -> refs

    for number, record in enumerate(records, start=1):
        ref = (number, record.line)
        for name in empty:
            if not getattr(record, name).strip():
                empty[name].append(ref)
        if not record.output.strip():
            continue
        try:
            calls = parse(record.output)
        except IntentParseError as exc:
            malformed.append(Issue("error", "malformed-output", f"output: {exc}", [ref]))
            continue
        output = format_calls(calls)
        if output != record.output:
            non_canonical.append(ref)
            example = example or f"{record.output!r} → {output!r}"
        if len(calls) == 1:
            single[calls[0].name] += 1
        else:
            multi_records += 1
            multi_use.update({call.name for call in calls})
        if record.instruction.strip():
            key = same_text_key(record.instruction)
            seen.setdefault(key, {}).setdefault(output, []).append(ref)

    report = Report(file, len(records), dict(sorted(single.items())), multi_records, dict(sorted(multi_use.items())))
    issues = report.issues
    if not records:
        issues.append(Issue("error", "no-records", "the dataset has no records"))
    for name, refs in empty.items():
        if refs:
            issues.append(Issue("error", "empty-field", f"{_plural(len(refs), 'record')} with an empty {name!r}", refs))
    issues += malformed
    for instruction, outputs in seen.items():
        if len(outputs) > 1:
            said = "; ".join(f"{out!r} ({_refs_text(refs, with_lines=False)})" for out, refs in outputs.items())
            refs = sorted(ref for group in outputs.values() for ref in group)
            issues.append(
                Issue("error", "conflicting-outputs", f"{instruction!r} is labelled differently: {said}", refs)
            )
    never_alone = sorted(set(multi_use) - set(single))
    if never_alone:
        issues.append(
            Issue(
                "error",
                "intent-never-alone",
                f"intents used in multi-intent records but never alone: {', '.join(never_alone)}"
                " (the strategy requires every one to occur in single-intent records too)",
            )
        )
    for instruction, outputs in seen.items():
        for output, refs in outputs.items():
            if len(refs) > 1:
                issues.append(
                    Issue("warning", "duplicate", f"{instruction!r} → {output!r} occurs {len(refs)} times", refs)
                )
    few = {name: count for name, count in single.items() if count < MIN_PER_INTENT}
    if few:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(few.items()))
        issues.append(Issue("warning", "few-records", f"fewer than {MIN_PER_INTENT} single-intent records: {listed}"))
    ratio = report.balance_ratio
    if ratio is not None and ratio > MAX_BALANCE_RATIO:
        most = max(single, key=lambda n: (single[n], n))
        least = min(single, key=lambda n: (single[n], n))
        issues.append(
            Issue(
                "warning",
                "imbalance",
                f"unbalanced intents: {most} has {single[most]} single-intent records, {least} {single[least]}"
                f" (ratio {ratio:.2f} > {MAX_BALANCE_RATIO})",
            )
        )
    share = report.multi_intent_share
    if multi_records == 0:
        issues.append(Issue("info", "no-multi-intent", "no multi-intent records: the model learns single intents only"))
    elif share is not None and share < MIN_MULTI_SHARE:
        issues.append(
            Issue(
                "warning",
                "few-multi-intent",
                f"multi-intent records are {share:.0%} of the single-intent count; the strategy asks for at least"
                f" {MIN_MULTI_SHARE:.0%} ({math.ceil(MIN_MULTI_SHARE * report.single_intent_records)})",
            )
        )
    if non_canonical:
        issues.append(
            Issue(
                "warning",
                "non-canonical-output",
                f"outputs not in canonical form: {len(non_canonical)} (e.g. {example}); constrained decoding"
                " writes canonical text, so train on it",
                non_canonical,
            )
        )
    return report


def measure_tokens(records: list[Record], model_dir: str | os.PathLike[str], seq_length: int) -> TokenStats:
    """Token lengths of prompt + answer with the model's own tokenizer and prompt (system prompt, chat template),
    as training builds them.

    Imports transformers, so only runs when asked or when a tokenizer is available.
    """
    from transformers import AutoTokenizer

    from service.modelcard import read_card
    from service.prompt import (
        DEFAULT_SYSTEM_PROMPT,
        END_OF_TURN,
        build_target,
        prompt_token_ids,
    )

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    card = read_card(model_dir)
    system_prompt = card.system_prompt if card else DEFAULT_SYSTEM_PROMPT
    chat = card.apply_chat_template if card else True
    end_of_turn = END_OF_TURN if chat else tokenizer.eos_token or ""
    targets = [build_target(r.output, end_of_turn=end_of_turn) for r in records]
    # Prompt and answer are tokenized apart, as a trainer that masks the prompt's loss does.
    prompt_ids = prompt_token_ids(
        [r.instruction for r in records], tokenizer, system_prompt=system_prompt, apply_chat_template=chat
    )
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    lengths = sorted(len(p) + len(t) for p, t in zip(prompt_ids, target_ids))
    return TokenStats(
        tokenizer=str(model_dir),
        seq_length=seq_length,
        min=lengths[0],
        p50=_percentile(lengths, 0.5),
        p95=_percentile(lengths, 0.95),
        max=lengths[-1],
        over_seq_length=sum(length > seq_length for length in lengths),
        recommended_seq_length=1 << (lengths[-1] - 1).bit_length(),
    )


def token_issues(stats: TokenStats) -> list[Issue]:
    """What the token lengths mean for ``seq_length``."""
    if stats.over_seq_length:
        return [
            Issue(
                "warning",
                "over-seq-length",
                f"{stats.over_seq_length} records are longer than seq_length {stats.seq_length} (longest"
                f" {stats.max} tokens) and would be left out of training;"
                f" use seq_length {stats.recommended_seq_length}",
            )
        ]
    if stats.recommended_seq_length < stats.seq_length:
        return [
            Issue(
                "info",
                "seq-length",
                f"seq_length {stats.recommended_seq_length} covers every record (longest {stats.max} tokens);"
                f" {stats.seq_length} only costs memory",
            )
        ]
    return []


def format_report(report: Report, *, max_refs: int = 8, max_issues_per_code: int = 10) -> str:
    """The human-readable report: per-intent table, balance, multi-intent share, tokens, issues."""
    lines = [f"{report.file}: {report.records} records, {len(report.single_intent)} intents"]
    if report.single_intent:
        width = max(len(name) for name in report.single_intent)
        lines += ["", f"single-intent records per intent (strategy: {MIN_PER_INTENT}-{MAX_PER_INTENT} each)"]
        for name, count in report.single_intent.items():
            mark = f"  < {MIN_PER_INTENT}" if count < MIN_PER_INTENT else ""
            lines.append(f"  {name:<{width}}  {count:>6}{mark}")
        lines.append(f"  {'total':<{width}}  {report.single_intent_records:>6}")
    lines.append("")
    ratio = report.balance_ratio
    if ratio is not None:
        lines.append(f"balance: max/min {ratio:.2f} (strategy: at most {MAX_BALANCE_RATIO})")
    share = report.multi_intent_share
    share_text = f" = {share:.1%} of single-intent records" if share is not None else ""
    lines.append(
        f"multi-intent records: {report.multi_intent_records}{share_text} (strategy: at least {MIN_MULTI_SHARE:.0%})"
    )
    if report.tokens:
        t = report.tokens
        lines.append(
            f"tokens (prompt + answer, {Path(t.tokenizer).name}): min {t.min}, p50 {t.p50}, p95 {t.p95},"
            f" max {t.max}; {t.over_seq_length} over seq_length {t.seq_length};"
            f" recommended seq_length {t.recommended_seq_length}"
        )
    if report.issues:
        lines += ["", "issues:"]
        shown: Counter[str] = Counter()
        for issue in report.issues:
            shown[issue.code] += 1
            if shown[issue.code] > max_issues_per_code:
                continue
            lines.append(f"  {issue.severity:<7}  {issue.message}")
            if issue.records:
                lines.append(f"           {_refs_text(issue.records, max_refs)}")
        for code, count in shown.items():
            if count > max_issues_per_code:
                lines.append(f"  ... and {count - max_issues_per_code} more {code} issues (see --json)")
    lines += ["", f"{_plural(report.errors, 'error')}, {_plural(report.warnings, 'warning')}"]
    return "\n".join(lines)


def _refs_text(refs: list[tuple[int, int | None]], limit: int = 8, *, with_lines: bool = True) -> str:
    shown = ", ".join(
        f"{number} (line {line})" if line and with_lines else str(number) for number, line in refs[:limit]
    )
    more = f" and {len(refs) - limit} more" if len(refs) > limit else ""
    return f"record{'s' if len(refs) > 1 else ''} {shown}{more}"


def _percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile: a value that occurs in the data."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
