"""The admission deadline through the real server: under more load than it can answer in time, the demo model's
server refuses the excess at once (503, Retry-After) and answers what it accepted; the figures under the issue's
load (24 clients) are in BENCHMARKS.md (bench/load.py), not asserted here."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from conftest import LiveServer, start_server
from test_server import metric

pytestmark = pytest.mark.engine

DEADLINE_S = 0.5
CLIENTS = 16
SECONDS = 8.0


@pytest.fixture(scope="module")
def server(demo_model, tmp_path_factory) -> LiveServer:
    started = start_server(
        demo_model, tmp_path_factory.mktemp("admission"), "--admission-deadline", str(DEADLINE_S), token=None
    )
    yield started
    started.stop()


async def client_loop(client: httpx.AsyncClient, until: float, results: list[tuple[int, float, httpx.Headers]]) -> None:
    """One client asking one utterance after the other, waiting as long as a refusal's Retry-After says."""
    while time.monotonic() < until:
        start = time.monotonic()
        reply = await client.post("/v1/intents", json={"text": "turn off the lights in the kitchen"})
        results.append((reply.status_code, time.monotonic() - start, reply.headers))
        if reply.status_code == 503:
            await asyncio.sleep(float(reply.headers["Retry-After"]))


def test_past_the_deadline_requests_are_refused_at_once_with_retry_after(server: LiveServer) -> None:
    results: list[tuple[int, float, httpx.Headers]] = []

    async def load() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            until = time.monotonic() + SECONDS
            await asyncio.gather(*(client_loop(client, until, results) for _ in range(CLIENTS)))

    asyncio.run(load())
    served = sorted(seconds for status, seconds, _ in results if status == 200)
    refused = [(seconds, headers) for status, seconds, headers in results if status == 503]
    assert len(served) + len(refused) == len(results), {status for status, _, _ in results}
    assert served and refused, f"served {len(served)}, refused {len(refused)}"
    assert all(int(headers["Retry-After"]) >= 1 for _, headers in refused)
    refusal_median = sorted(seconds for seconds, _ in refused)[len(refused) // 2]
    print(
        f"\nserved {len(served)} (p50 {served[len(served) // 2] * 1000:.0f} ms, max {served[-1] * 1000:.0f} ms), "
        f"refused {len(refused)} (median {refusal_median * 1000:.0f} ms)"
    )
    # A refusal costs no generation: it is answered faster than the answers the server accepted.
    assert refusal_median < served[len(served) // 2]
    text = httpx.get(f"{server.url}/metrics").text
    assert metric(text, "intentlm_admission_expected_seconds") >= 0
