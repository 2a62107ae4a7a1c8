"""Load and soak driver for a running `intentlm serve` (loopback only, bounded, stops by itself).

A realistic mix at a fixed concurrency: single and batched ``/v1/intents`` (constrained), free-form
``/v1/intents``, and EAS ``POST /`` with and without streaming. It reports requests/s, latency
percentiles of the answered requests, replies by status (a 503 is waited out for its Retry-After, as the
project's clients do, and timed apart), malformed replies (every ``/v1/intents`` answer must parse with
``service.intents.parse`` and name only the model's intents; every stream must be NUL-terminated
JSON objects) and the server's resident memory over time (VmRSS summed over its process tree).

    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --token T --model DIR \
        --concurrency 1,8,32,64 --duration 30          # a sweep: one level after another
    .venv/bin/python bench/load.py ... --concurrency 32 --duration 600 --rss-every 30   # a soak
    .venv/bin/python bench/load.py ... --concurrency 1 --duration 2 --max-requests 4    # a smoke run

Utterances are the smart-home test set's instructions (HWU64 subset, CC BY 4.0, Liu et al. 2019), from the
repository's data/smarthome/ (``--data`` reads another file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.intents import IntentParseError, parse  # noqa: E402
from service.modelcard import read_card  # noqa: E402

DATA_DIR = Path(os.environ.get("INTENTLM_DATA_DIR", Path(__file__).resolve().parents[1] / "data" / "smarthome"))
DATA = DATA_DIR / "smarthome_test.json"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# The mix, by weight: what a voice-assistant backend sends, mostly single utterances.
MIX = {"single": 50, "batch": 10, "free_form": 10, "eas": 20, "eas_stream": 10}
BATCH_SIZE = 8


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    refusals: list[float] = field(default_factory=list)  # seconds to each 503
    statuses: Counter[str] = field(default_factory=Counter)
    malformed: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


def check_intents(answer: Any, known: set[str]) -> str | None:
    """Why a ``/v1/intents`` answer is malformed, or None when it is sound."""
    if not isinstance(answer, dict) or not {"intents", "raw", "confidence", "latency_ms"} <= set(answer):
        return f"bad shape: {str(answer)[:200]}"
    names = [call["name"] for call in answer["intents"]]
    if any(name not in known for name in names):
        return f"unknown intent in {names}"
    if names and names != ["oos"]:
        try:
            parsed = parse(answer["raw"])
        except IntentParseError as exc:
            return f"raw does not parse: {exc}"
        if [c.name for c in parsed] != names:
            return f"raw {answer['raw']!r} disagrees with intents {names}"
    return None


async def one_request(
    client: httpx.AsyncClient, kind: str, texts: list[str], known: set[str], rng: random.Random
) -> tuple[str, float, str | None, float]:
    """Send one request of ``kind``; returns (status, seconds, malformation, Retry-After seconds or 0)."""
    text = rng.choice(texts)
    start = time.perf_counter()
    problem = None
    if kind == "eas_stream":
        async with client.stream(
            "POST", "/", json={"prompt": text, "max_new_tokens": 16, "use_stream_chat": True}
        ) as r:
            body = await r.aread()
        if r.status_code == 200:
            parts = body.split(b"\0")
            try:
                objects = [json.loads(p) for p in parts if p]
                if parts[-1] != b"" or not objects or any(set(o) != {"response", "history"} for o in objects):
                    problem = "stream not NUL-terminated EAS objects"
            except ValueError:
                problem = "stream part is not JSON"
        return str(r.status_code), time.perf_counter() - start, problem, retry_after(r)
    if kind == "eas":
        r = await client.post("/", json={"prompt": text, "max_new_tokens": 16})
        if r.status_code == 200 and set(r.json()) != {"response", "history"}:
            problem = "bad EAS reply"
        return str(r.status_code), time.perf_counter() - start, problem, retry_after(r)
    if kind == "batch":
        body: dict[str, Any] = {"texts": [rng.choice(texts) for _ in range(BATCH_SIZE)]}
    else:
        body = {"text": text, "constrained": kind != "free_form"}
    r = await client.post("/v1/intents", json=body)
    if r.status_code == 200 and kind != "free_form":  # free-form answers may name anything, by design
        answers = r.json() if kind == "batch" else [r.json()]
        problem = next((p for p in (check_intents(a, known) for a in answers) if p), None)
    return str(r.status_code), time.perf_counter() - start, problem, retry_after(r)


def retry_after(reply: httpx.Response) -> float:
    """The seconds a 503 asks the client to wait (0 for any other reply)."""
    return float(reply.headers.get("Retry-After", 1)) if reply.status_code == 503 else 0.0


async def drive(
    url: str,
    token: str | None,
    concurrency: int,
    duration_s: float,
    max_requests: int,
    texts: list[str],
    known: set[str],
    seed: int,
) -> tuple[Results, float]:
    """``concurrency`` workers send back-to-back until the time or request budget is spent."""
    results = Results()
    deadline = time.monotonic() + duration_s
    budget = iter(range(max_requests))
    kinds, weights = list(MIX), list(MIX.values())
    headers = {"Authorization": token} if token else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        while time.monotonic() < deadline and next(budget, None) is not None:
            kind = rng.choices(kinds, weights)[0]
            try:
                status, seconds, problem, wait = await one_request(client, kind, texts, known, rng)
            except httpx.HTTPError as exc:
                status, seconds, problem, wait = type(exc).__name__, 0.0, None, 0.0
            results.statuses[status] += 1
            results.kinds[kind] += 1
            if status == "200":
                results.latencies.append(seconds)
            elif status == "503":  # refused: wait as told, as the project's clients do
                results.refusals.append(seconds)
                await asyncio.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            if problem:
                results.malformed.append(f"{kind}: {problem}")

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60, limits=limits) as client:
        start = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return results, time.monotonic() - start


def server_pid(url: str, given: int | None) -> int | None:
    """The server's pid: given, or the process listening on the URL's port."""
    if given:
        return given
    port = urlparse(url).port
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def tree_rss_mib(pid: int) -> float:
    """VmRSS of the process and all its children (the engine core runs in one), in MiB."""
    root = psutil.Process(pid)
    total = 0
    for process in (root, *root.children(recursive=True)):
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1024


async def sample_rss(pid: int, every_s: float, samples: list[tuple[float, float]], stop: asyncio.Event) -> None:
    start = time.monotonic()
    while not stop.is_set():
        samples.append((round(time.monotonic() - start, 1), round(tree_rss_mib(pid), 1)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
    samples.append((round(time.monotonic() - start, 1), round(tree_rss_mib(pid), 1)))


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def run_level(
    args: argparse.Namespace, concurrency: int, texts: list[str], known: set[str], pid: int | None
) -> dict[str, Any]:
    samples: list[tuple[float, float]] = []
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(sample_rss(pid, args.rss_every, samples, stop)) if pid else None
    results, elapsed = await drive(
        args.url, args.token, concurrency, args.duration, args.max_requests, texts, known, args.seed
    )
    stop.set()
    if sampler:
        await sampler
    total = sum(results.statuses.values())
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 1),
        "requests": total,
        "req_per_s": round(total / elapsed, 2),
        "p50_ms": round(percentile(results.latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(results.latencies, 95) * 1000, 1),
        "p99_ms": round(percentile(results.latencies, 99) * 1000, 1),
        "refused_p99_ms": round(percentile(results.refusals, 99) * 1000, 1) if results.refusals else None,
        "statuses": dict(results.statuses),
        "errors_5xx": sum(n for s, n in results.statuses.items() if s.startswith("5")),
        "transport_errors": sum(n for s, n in results.statuses.items() if not s.isdigit()),
        "malformed": len(results.malformed),
        "malformed_examples": results.malformed[:5],
        "mix": dict(results.kinds),
        "rss_mib": samples,
        "rss_growth_mib": round(samples[-1][1] - samples[0][1], 1) if samples else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", default=os.environ.get("INTENTLM_API_TOKEN"))
    parser.add_argument("--model", type=Path, required=True, help="The served model directory (for its intents).")
    parser.add_argument("--concurrency", default="1,8,32,64", help="Comma-separated levels, 1 to 64.")
    parser.add_argument("--duration", type=float, default=30, help="Seconds per level (at most 3600).")
    parser.add_argument("--max-requests", type=int, default=100_000, help="Request budget per level.")
    parser.add_argument("--pid", type=int, help="Server pid for RSS (default: the process listening on the port).")
    parser.add_argument("--rss-every", type=float, default=5.0, help="Seconds between RSS samples.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="Also write the results as JSON here.")
    parser.add_argument("--data", type=Path, default=DATA, help="Records whose instructions are sent.")
    args = parser.parse_args()

    if urlparse(args.url).hostname not in LOOPBACK:
        parser.error("--url must be a loopback address: this tool only loads a local server")
    levels = [int(level) for level in args.concurrency.split(",")]
    if not all(1 <= level <= 64 for level in levels) or not 0 < args.duration <= 3600:
        parser.error("concurrency must be 1..64 and --duration 0..3600 s")
    card = read_card(args.model)
    if card is None or not card.intents:
        parser.error(f"{args.model} has no intentlm.json with intents")
    known = {*card.intents, "oos"}
    texts = [record["instruction"] for record in json.loads(args.data.read_text())]
    pid = server_pid(args.url, args.pid)
    if pid is None:
        print("warning: server pid not found; RSS is not sampled (pass --pid)", file=sys.stderr)

    report = []
    for level in levels:
        result = asyncio.run(run_level(args, level, texts, known, pid))
        report.append(result)
        summary = {k: v for k, v in result.items() if k not in ("rss_mib", "malformed_examples")}
        print(json.dumps(summary), flush=True)
        for example in result["malformed_examples"]:
            print(f"  malformed: {example}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    print(
        "\n| concurrency | req/s | p50 ms | p95 ms | p99 ms | requests | 503 (p99 ms) | other 5xx | malformed "
        "| RSS start→end MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in report:
        rss = f"{r['rss_mib'][0][1]:.0f} → {r['rss_mib'][-1][1]:.0f}" if r["rss_mib"] else "n/a"
        print(
            f"| {r['concurrency']} | {r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | "
            f"{r['requests']} | {r['statuses'].get('503', 0)} ({r['refused_p99_ms']}) | "
            f"{r['errors_5xx'] - r['statuses'].get('503', 0)} | {r['malformed']} | {rss} |"
        )


if __name__ == "__main__":
    main()
