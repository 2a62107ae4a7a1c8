"""Many models: N adapters on one server against N single-model servers, memory and throughput, in one run.

    (a) one `intentlm serve` with N adapter directories of one base (vLLM's LoRA, one engine)
    (b) N `intentlm serve`, each with one merged model directory (no LoRA: the fastest single-model server)

The adapters are copies of the bundled demo adapter (training/demo) under N names, and the merged models are the
prepared demo (`intentlm model prepare`) under N names: the same weights either way, so that only the serving
differs. Load: ``POST /v1/intents`` at one concurrency, request i to model i mod N (by its ``model`` field on (a),
by its server on (b)), the smart-home test set's instructions cycled; the admission deadline is off on both, so
that throughput is measured rather than refusals. Memory: the resident set (RSS) of every process of each setup
(servers and their vLLM engine processes) after its load; PSS too, which counts shared pages once. The setups run
one after the other (all N servers of (b) at once: that is what it measures).

    .venv/bin/python bench/many_models.py [--models 4] [--concurrency 16] [--requests 160] [--out runs/many.json]

The data is the repository's data/smarthome/ (INTENTLM_DATA_DIR points at another copy).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve_bench import DATA, TOKEN, checked, free_port, load, refused_or, start, stop  # noqa: E402
from service.hardware import cpu_flags  # noqa: E402
from service.modelcard import demo_model_dir  # noqa: E402

DEMO_ADAPTER = REPO / "training" / "demo"


def memory_mib(processes: list[subprocess.Popen]) -> tuple[float, float]:
    """RSS and PSS (MiB) of the processes and all their children."""
    tree = []
    for process in processes:
        root = psutil.Process(process.pid)
        tree += [root, *root.children(recursive=True)]
    infos = [p.memory_full_info() for p in tree]
    return sum(i.rss for i in infos) / 2**20, sum(i.pss for i in infos) / 2**20


def serve_command(port: int, models: list[str]) -> list[str]:
    flags = [arg for model in models for arg in ("--model", model)]
    intentlm = str(REPO / ".venv" / "bin" / "intentlm")
    return [intentlm, "serve", *flags, "--port", str(port), "--api-token", TOKEN, "--admission-deadline", "0"]


def sender(targets: list[tuple[str, str | None]]):
    """A send of ``POST /v1/intents`` to each (server URL, model name) in turn."""
    turn = itertools.cycle(targets)
    auth = {"Authorization": TOKEN}

    async def send(client: httpx.AsyncClient, text: str) -> object:
        url, model = next(turn)
        body = {"text": text} | ({"model": model} if model else {})
        reply = await client.post(f"{url}/v1/intents", json=body, headers=auth)
        return refused_or(reply) or checked(reply)["raw"]

    return send


def separate(args: argparse.Namespace, names: list[str], merged: Path, work: Path, env: dict, measure) -> None:
    """(b): N servers, one merged model each, all running at once."""
    processes, targets = [], []
    try:
        for name in names:
            copy = work / f"merged-{name}"
            copy.mkdir()
            for item in merged.iterdir():
                (copy / item.name).symlink_to(item)
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            processes.append(start(serve_command(port, [str(copy)]), f"{url}/health/ready", work / f"{name}.log", env))
            targets.append((url, None))
        measure(f"(b) {args.models} servers, one merged model each", processes, targets)
    finally:
        for process in processes:
            stop(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "many_models.json")
    parser.add_argument("--only", choices=["one", "separate"], help="run only (a) one server, or only (b)")
    args = parser.parse_args()
    env = {**os.environ}
    merged = demo_model_dir()
    if not merged.is_dir():
        sys.exit(f"{merged} is missing: run `intentlm model prepare` first")
    texts = [r["instruction"] for r in json.loads((DATA / "smarthome_test.json").read_text())]
    work = Path(tempfile.mkdtemp(prefix="many-models-"))
    names = [f"m{i}" for i in range(args.models)]
    report: dict[str, dict] = {}

    def measure(label: str, processes: list[subprocess.Popen], targets: list[tuple[str, str | None]]) -> None:
        result = asyncio.run(load(sender(targets), texts, args.concurrency, args.requests))
        result["rss_mib"], result["pss_mib"] = memory_mib(processes)
        report[label] = result
        print(label, json.dumps(result, default=str), flush=True)

    if args.only != "separate":  # (a) one server, N adapters
        adapters = [shutil.copytree(DEMO_ADAPTER, work / name) for name in names]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start(serve_command(port, [str(a) for a in adapters]), f"{url}/health/ready", work / "one.log", env)
        try:
            measure(f"(a) one server, {args.models} adapters", [process], [(url, name) for name in names])
        finally:
            stop(process)
    if args.only != "one":
        separate(args, names, merged, work, env, measure)

    summary = {}
    if len(report) == 2:
        (a, b) = report.values()
        summary = {
            "memory_ratio_rss": a["rss_mib"] / b["rss_mib"],
            "memory_ratio_pss": a["pss_mib"] / b["pss_mib"],
            "throughput_ratio": a["req_per_s"] / b["req_per_s"],
        }
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx"))),
        "cores": os.cpu_count(),
        "args": vars(args) | {"out": str(args.out)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": report, "summary": summary}, indent=2, default=str))
    print("| setup | RSS MiB | PSS MiB | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for label, r in report.items():
        print(
            f"| {label} | {r['rss_mib']:.0f} | {r['pss_mib']:.0f} | {r['req_per_s']:.2f} | {r['p50_ms']:.0f} "
            f"| {r['p99_ms']:.0f} |"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
