"""What retrieved examples cost a request: the same model served with and without its examples.json.

    .venv/bin/python bench/examples_latency.py MODEL_DIR [--requests 100]

MODEL_DIR is a model trained with `--retrieved_examples`. The script serves it twice, one server after the
other, on the same weights: as it is, and through a directory of links without `examples.json` (plain
prompts; its answers are not what it was trained for, only its latency is the point). Each server gets the
same sequential `POST /v1/intents` requests (the instructions of smarthome_test.json, HWU64, CC BY 4.0), after
a few warm-up requests. Also times the retrieval alone (ExampleIndex.neighbours) in this process. Prints a
Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from service.examples import EXAMPLES_FILE, ExampleIndex  # noqa: E402
from tests.conftest import start_server  # noqa: E402

DATA = Path(os.environ.get("INTENTLM_DATA_DIR", REPO.parent / "shared" / "data"))
WARMUP = 5


def serve_and_time(model: Path, texts: list[str], log_dir: Path) -> tuple[list[float], float]:
    """Latencies (ms) of sequential requests, and the mean prompt length the server counted."""
    server = start_server(model, log_dir, token=None)  # the tests' launcher: a free port, waits until ready
    try:
        with httpx.Client(timeout=60) as client:
            for text in texts[:WARMUP]:
                client.post(f"{server.url}/v1/intents", json={"text": text}).raise_for_status()
            latencies = []
            for text in texts:
                started = time.perf_counter()
                client.post(f"{server.url}/v1/intents", json={"text": text}).raise_for_status()
                latencies.append((time.perf_counter() - started) * 1000)
            scraped = client.get(f"{server.url}/metrics").text
    finally:
        server.stop()
    prompt_tokens = next(float(line.split()[-1]) for line in scraped.splitlines()
                         if line.startswith('intentlm_prompt_tokens_total{route="/v1/intents"}'))
    return latencies, prompt_tokens / (len(texts) + WARMUP)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--retrieval-only", action="store_true", help="time the retrieval alone, start no server")
    args = parser.parse_args()
    index = ExampleIndex.load(args.model)
    if index is None:
        sys.exit(f"{args.model} has no {EXAMPLES_FILE}: train it with --retrieved_examples")
    texts = [r["instruction"] for r in json.loads((DATA / "smarthome_test.json").read_text())][:args.requests]
    started = time.perf_counter()
    for text in texts:
        index.neighbours(text)
    retrieval_ms = (time.perf_counter() - started) * 1000 / len(texts)
    postings_mib = sum(rows.nbytes + weights.nbytes for rows, weights in index._postings.values()) / 2**20
    print(f"retrieval alone: {retrieval_ms:.2f} ms per request ({len(index.records)} records, k = {index.k}); "
          f"the index's postings: {postings_mib:.2f} MiB\n")
    if args.retrieval_only:
        return
    rows = []
    with tempfile.TemporaryDirectory() as work:
        plain = Path(work) / "plain"
        plain.mkdir()
        for item in args.model.resolve().iterdir():
            if item.name != EXAMPLES_FILE:
                (plain / item.name).symlink_to(item)
        for name, model in (("with examples", args.model), ("without (same weights)", plain)):
            latencies, prompt = serve_and_time(model, texts, Path(work))
            rows.append((name, prompt, statistics.median(latencies), percentile(latencies, 0.99)))
    print("| prompt | prompt tokens (mean) | p50 ms | p99 ms |\n|---|---|---|---|")
    for name, prompt, p50, p99 in rows:
        print(f"| {name} | {prompt:.0f} | {p50:.0f} | {p99:.0f} |")
    print(f"\nratio with/without: p50 {rows[0][2] / rows[1][2]:.2f}x, p99 {rows[0][3] / rows[1][3]:.2f}x")


if __name__ == "__main__":
    main()
