"""Serving benchmark: latency (p50/p99) and throughput at concurrency 1, 8, 32, all in one run.

    (a) intentlm  POST /v1/intents   constrained to the model's intents, logprobs for confidence
    (b) intentlm  POST /             EAS free-form answer (max_new_tokens 16)
    (c) vLLM's own OpenAI server     /v1/completions, same prompt text, same grammar, greedy
    (d) transformers generate        FastAPI + model.generate one at a time (bench/serve_transformers_baseline.py)

Servers run one after another (never two at once), each on the same model: the prepared base model
with a smart-home card (the 12 HWU64 intents, CC BY 4.0, Liu et al. 2019). Utterances are the
smart-home test set's instructions, cycled. Prints a Markdown table for BENCHMARKS.md.

    .venv/bin/python bench/serve_bench.py [--requests-per-level 2] [--out runs/serve_bench.json]
    .venv/bin/python bench/serve_bench.py --model ~/.cache/intentlm/models/smarthome-demo   # the demo, as served
    .venv/bin/python bench/serve_bench.py --only intentlm --levels 1 --min-requests 2   # a smoke run

``--model DIR`` serves that model directory as it is (its card's prompt, intents, thresholds and typicality), and
vLLM's server gets the same prompt and the same per-request grammar; ``--serve-arg`` passes a flag to `intentlm
serve` (repeatable: ``--serve-arg=--dtype=float32``). A request refused with 503 (the admission deadline) is
counted and sent again after its Retry-After; its latency is that of the attempt that was answered.

The data is the repository's data/smarthome/ (INTENTLM_DATA_DIR points at another copy).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.config import Settings  # noqa: E402
from service.hardware import cpu_flags  # noqa: E402
from service.intents import decoding_grammar, parse  # noqa: E402
from service.modelcard import ModelCard, base_model_dir, read_card, write_card  # noqa: E402
from service.prompt import build_prompt  # noqa: E402

DATA = Path(os.environ.get("INTENTLM_DATA_DIR", Path(__file__).resolve().parents[1] / "data" / "smarthome"))
SYSTEM_PROMPT = (
    "You are an intent recognition expert for a smart home assistant. Answer with the intent calls "
    "of the user's request, such as iot_hue_lightoff() or alarm_set(7 am)."
)
LEVELS = (1, 8, 32)
TOKEN = "bench-token"


def smarthome_model(work: Path) -> tuple[Path, list[str]]:
    """The base model's files with a smart-home card (what tests/conftest.py's fixture builds too)."""
    base = base_model_dir()
    model = work / "smarthome"
    model.mkdir()
    for item in base.iterdir():
        if item.name != "intentlm.json":
            (model / item.name).symlink_to(item)
    records = json.loads((DATA / "smarthome_train.json").read_text())
    intents = sorted({call.name for r in records for call in parse(r["output"])})
    write_card(model, ModelCard(base_model=base.name, system_prompt=SYSTEM_PROMPT, intents=intents))
    return model, intents


def vllm_flags(model: Path) -> list[str]:
    """vLLM's server flags for the engine arguments `intentlm serve` gives its engine by default (service.config),
    without intentlm's own extensions (typicality in the pass, answer drafts), so (a) and (c) compare alike. Also sets
    the vLLM variables intentlm sets, in this process's environment, which the servers inherit."""
    args = Settings(typicality=False, jump_forward="off").engine_args(model)
    flags: list[str] = []
    for name, value in args.items():
        if value is True:
            flags.append(f"--{name.replace('_', '-')}")
        elif value is not False:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], health_url: str, log: Path, env: dict[str, str], cwd: Path = REPO) -> subprocess.Popen:
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=cwd, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[:3]} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(health_url, timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{command[:3]} not ready:\n{log.read_text()[-3000:]}")


def tree_rss_mib(process: subprocess.Popen) -> float:
    root = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / 2**20


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def load(
    send: Callable[[httpx.AsyncClient, str], object], texts: list[str], concurrency: int, total: int
) -> dict:
    """``total`` requests from ``concurrency`` workers; latency of each, overall throughput."""
    latencies: list[float] = []
    outputs: list[object] = []
    refused = 0
    counter = iter(range(total))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal refused
        for i in counter:
            start = time.perf_counter()
            output = await send(client, texts[i % len(texts)])
            while isinstance(output, Refused):  # as the project's clients do: wait as told, ask again
                refused += 1
                await asyncio.sleep(output.retry_after)
                start = time.perf_counter()
                output = await send(client, texts[i % len(texts)])
            outputs.append(output)
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        await asyncio.gather(*(send(client, t) for t in texts[:2]))  # warm-up
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return {
        "concurrency": concurrency,
        "requests": total,
        "refused": refused,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000,
        "req_per_s": len(ordered) / elapsed,
        "sample_output": outputs[0],
    }


@dataclass(frozen=True)
class Refused:
    """What a send returns for a 503: the request is sent again after ``retry_after`` seconds."""

    retry_after: float


def refused_or(reply: httpx.Response) -> Refused | None:
    return Refused(float(reply.headers.get("Retry-After", 1))) if reply.status_code == 503 else None


def checked(reply: httpx.Response) -> dict:
    reply.raise_for_status()
    return reply.json()


def intents_sender(url: str, auth: dict[str, str]) -> Callable[[httpx.AsyncClient, str], object]:
    """A send of ``POST /v1/intents`` to the server at ``url``: its raw answer, or ``Refused``."""

    async def send(client: httpx.AsyncClient, text: str) -> object:
        reply = await client.post(f"{url}/v1/intents", json={"text": text}, headers=auth)
        return refused_or(reply) or checked(reply)["raw"]

    return send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--requests-per-level", type=int, default=2, help="requests = max(--min-requests, this × concurrency)"
    )
    parser.add_argument("--min-requests", type=int, default=16, help="the fewest requests per level")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="comma-separated concurrencies")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "serve_bench.json")
    parser.add_argument("--only", nargs="*", default=["intentlm", "vllm", "transformers"])
    parser.add_argument("--model", type=Path, help="a model directory to serve as it is (default: see above)")
    parser.add_argument("--serve-arg", action="append", default=[], help="a flag for intentlm serve (repeatable)")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of the repository (git worktree) whose `intentlm serve` is measured too, as "
        "(e) before, with this checkout's .venv",
    )
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    if not all(level >= 1 for level in levels) or args.min_requests < 1:
        parser.error("--levels must be positive concurrencies and --min-requests at least 1")

    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CPU_NUM_OF_RESERVED_CPU": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0"),
    }
    env.setdefault("INTENTLM_HOME", str(REPO / ".cache" / "intentlm"))
    os.environ["INTENTLM_HOME"] = env["INTENTLM_HOME"]
    texts = [r["instruction"] for r in json.loads((DATA / "smarthome_test.json").read_text())]
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    if args.model is not None:
        model = args.model.expanduser()
        card = read_card(model) or ModelCard()
    else:
        model, intents = smarthome_model(work)
        card = ModelCard(system_prompt=SYSTEM_PROMPT, intents=intents)
    python = str(REPO / ".venv" / "bin" / "python")
    auth = {"Authorization": TOKEN}
    results: dict[str, list[dict]] = {}
    rss: dict[str, float] = {}

    def run(name: str, command: list[str], health: str, sends: dict[str, Callable], cwd: Path = REPO) -> None:
        process = start(command, health, work / f"{name}.log", env, cwd)
        try:
            for label, send in sends.items():
                results[label] = [
                    asyncio.run(load(send, texts, c, max(args.min_requests, args.requests_per_level * c)))
                    for c in levels
                ]
                print(label, json.dumps(results[label], default=str), flush=True)
            rss[name] = tree_rss_mib(process)
        finally:
            stop(process)

    if "intentlm" in args.only:
        port = free_port()
        url = f"http://127.0.0.1:{port}"

        async def eas_send(client: httpx.AsyncClient, text: str) -> object:
            body = {"prompt": text, "max_new_tokens": 16}
            reply = await client.post(f"{url}/", json=body, headers=auth)
            return refused_or(reply) or checked(reply)["response"]

        command = [
            str(REPO / ".venv" / "bin" / "intentlm"),
            "serve",
            "--model",
            str(model),
            "--port",
            str(port),
            "--api-token",
            TOKEN,
            *args.serve_arg,
        ]
        run(
            "intentlm",
            command,
            f"{url}/health/ready",
            {"(a) intentlm /v1/intents": intents_sender(url, auth), "(b) intentlm POST / (EAS)": eas_send},
        )

    if args.baseline is not None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"

        command = [python, "-m", "intentlm", "serve", "--model", str(model), "--port", str(port), "--api-token", TOKEN]
        run(
            "baseline",
            command,
            f"{url}/health/ready",
            {f"(e) {args.baseline.name} /v1/intents (before)": intents_sender(url, auth)},
            cwd=args.baseline.resolve(),
        )

    if "vllm" in args.only:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model)
        port = free_port()
        url = f"http://127.0.0.1:{port}"

        async def vllm_send(client: httpx.AsyncClient, text: str) -> object:
            prompt = build_prompt(text, system_prompt=card.system_prompt, tokenizer=tokenizer)
            grammar = decoding_grammar(card.intents, text if card.args_from_text else None)
            body = {
                "model": "m",
                "prompt": prompt,
                "max_tokens": 64,
                "temperature": 0,
                "logprobs": 0,
                "structured_outputs": {"grammar": grammar},
            }
            return checked(await client.post(f"{url}/v1/completions", json=body))["choices"][0]["text"]

        command = [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            *vllm_flags(model),
            "--served-model-name",
            "m",
            "--port",
            str(port),
            "--disable-uvicorn-access-log",
        ]
        run("vllm", command, f"{url}/health", {"(c) vLLM OpenAI server": vllm_send})

    if "transformers" in args.only:
        port = free_port()
        url = f"http://127.0.0.1:{port}"

        async def hf_send(client: httpx.AsyncClient, text: str) -> object:
            return checked(await client.post(f"{url}/predict", json={"text": text}))["raw"]

        command = [
            python,
            str(REPO / "bench" / "serve_transformers_baseline.py"),
            "--model",
            str(model),
            "--port",
            str(port),
        ]
        run("transformers", command, f"{url}/health", {"(d) transformers generate": hf_send})

    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "cpu_flags": " ".join(sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))),
        "command": " ".join(sys.argv),
        "results": results,
        "rss_mib": rss,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        f"{report['machine']}; CPU flags: {report['cpu_flags']}",
        "",
        "| server | concurrency | requests | refused | p50 ms | p99 ms | req/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, levels in report["results"].items():
        for level in levels:
            lines.append(
                f"| {name} | {level['concurrency']} | {level['requests']} | {level['refused']} | "
                f"{level['p50_ms']:.0f} | {level['p99_ms']:.0f} | {level['req_per_s']:.2f} |"
            )
    lines.append("")
    lines.append("RSS (MiB, process tree): " + ", ".join(f"{k} {v:.0f}" for k, v in report["rss_mib"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
