"""What the typicality score costs a served request: `intentlm serve` with and without it, same model, same run.

    .venv/bin/python bench/typicality_bench.py [--model DIR] [--requests 64] [--levels 1,16]

The model (default: the prepared demo, which has typicality statistics) is served twice, one server at
a time: once as is, once with `--no-typicality`. Each serves the smart-home test instructions (HWU64,
CC BY 4.0, Liu et al. 2019; data/smarthome/) on `POST /v1/intents` at concurrency 1 and 16 (``--levels``);
p50/p99 latency, throughput and the server's memory (process tree RSS) are printed as a Markdown table for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import httpx
from serve_bench import DATA, REPO, checked, free_port, load, start, stop, tree_rss_mib

sys.path.insert(0, str(REPO))
from service.modelcard import demo_model_dir

LEVELS = (1, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=demo_model_dir())
    parser.add_argument("--requests", type=int, default=64, help="requests per level (at least the concurrency)")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="comma-separated concurrencies")
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    if not all(level >= 1 for level in levels) or args.requests < 1:
        parser.error("--levels must be positive concurrencies and --requests at least 1")
    texts = [r["instruction"] for r in json.loads((DATA / "smarthome_test.json").read_text())]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    rows = []
    for name, flags in (("typicality on", []), ("--no-typicality", ["--no-typicality"])):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = REPO / "runs" / f"typicality_bench_{port}.log"
        log.parent.mkdir(exist_ok=True)
        server = start(
            [
                str(REPO / ".venv" / "bin" / "intentlm"),
                "serve",
                "--model",
                str(args.model),
                "--port",
                str(port),
                *flags,
            ],
            f"{url}/health/ready",
            log,
            env,
        )
        try:

            async def send(client: httpx.AsyncClient, text: str, url: str = url) -> object:
                return checked(await client.post(f"{url}/v1/intents", json={"text": text})).get("typicality")

            for concurrency in levels:
                result = asyncio.run(load(send, texts, concurrency, max(args.requests, concurrency)))
                rows.append((name, result, tree_rss_mib(server)))
        finally:
            stop(server)
    print("| server | concurrency | requests | p50 ms | p99 ms | req/s | RSS MiB | typicality of the first reply |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r, rss in rows:
        print(
            f"| {name} | {r['concurrency']} | {r['requests']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['req_per_s']:.2f} | {rss:.0f} | {r['sample_output']} |"
        )


if __name__ == "__main__":
    main()
