"""How a caller should send many utterances: one request each, one batch request, or concurrent requests.

Against a running server, the same N test utterances are labelled three ways, in one run:

* sequential: one ``predict`` per utterance, each waiting for the last (the reference client's way:
  the baseline);
* batched: ``predict_batch`` in chunks of ``--batch-size`` (what ``intentlm ask -`` does);
* concurrent: ``AsyncIntentClient.predict`` for all N at once (what a busy voice backend does).

    intentlm serve --port 8765 &
    .venv/bin/python bench/client.py --url http://127.0.0.1:8765 -n 32

Prints utterances/s for each and the ratio to the baseline. The utterances are the first N of the
repository's data/smarthome/smarthome_test.json (``--data`` reads another file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from clients import AsyncIntentClient, IntentClient

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "smarthome" / "smarthome_test.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=None, help="service URL (default: $INTENTLM_URL or http://127.0.0.1:8000)")
    parser.add_argument("--token", default=None)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("-n", type=int, default=32, help="utterances")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    texts = [record["instruction"] for record in json.loads(args.data.read_text())[: args.n]]

    with IntentClient(args.url, token=args.token, timeout=600) as client:
        client.predict_batch(texts[:4])  # warm the connection and the server's caches
        results = {"sequential": timed(lambda: [client.predict(text) for text in texts])}
        results["batched"] = timed(
            lambda: [
                p
                for i in range(0, len(texts), args.batch_size)
                for p in client.predict_batch(texts[i : i + args.batch_size])
            ]
        )

    async def concurrent() -> None:
        async with AsyncIntentClient(args.url, token=args.token, timeout=600) as client:
            await asyncio.gather(*(client.predict(text) for text in texts))

    results["concurrent"] = timed(lambda: asyncio.run(concurrent()))
    baseline = results["sequential"]
    print(f"{len(texts)} utterances from {args.data.name}")
    for name, seconds in results.items():
        print(f"{name:>11}: {seconds:7.2f} s  {len(texts) / seconds:7.1f} utterances/s  x{baseline / seconds:.1f}")


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
