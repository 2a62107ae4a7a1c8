"""Admission control: refuse at once (503 with ``Retry-After``) what could not be answered in time.

vLLM runs up to ``max_in_flight`` sequences per step and queues the rest; without a bound, overload turns
into every request waiting (on the 2-core CPU, 24 clients saw a p50 of 20 s). Two bounds apply:

* a count: ``max_in_flight + max_queued`` admitted generations, past which a request is refused;
* a deadline: a request whose expected time to its answer passes ``deadline_s`` is refused. The expectation
  is Little's law over what the server measures, not a fixed queue length: with ``L`` generations admitted
  and the engine finishing one every ``interval`` seconds (the mean gap between finishes while it is busy,
  which falls as continuous batching packs more sequences into each step), a new one is answered after
  about ``(L + 1) * interval``. An idle server, or one that has not measured yet, admits.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service import metrics
from service.errors import ServiceError

SMOOTHING = 0.1  # weight of the newest finish gap in the moving average (about the last 20 finishes)


class Admission:
    """The admitted generations and the measured service interval (``deadline_s`` 0: no deadline)."""

    def __init__(
        self,
        max_in_flight: int,
        max_queued: int,
        deadline_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.limit = max_in_flight + max_queued
        self.deadline_s = deadline_s
        self.admitted = 0
        self.interval: float | None = None  # seconds between finishes while busy; None until measured
        self._clock = clock
        self._last_finish = 0.0  # the last finish, or when the server last became busy

    def expected_seconds(self, n: int = 1) -> float:
        """The expected time until ``n`` more generations are answered (0 while nothing is measured)."""
        return 0.0 if self.interval is None else (self.admitted + n) * self.interval

    def check(self, n: int) -> None:
        """Refuse (503, retryable) when ``n`` more generations would pass the count or the deadline; 422 when they
        never fit."""
        if n > self.limit:  # retrying could never help: not a 503
            raise ServiceError(
                422,
                "batch_too_large",
                f"{n} texts are more than this server admits at once ({self.limit})",
                field="texts",
            )
        if self.admitted + n > self.limit:
            raise ServiceError(
                503, "overloaded", f"server is at capacity ({self.limit} requests); retry shortly", retry_after=1
            )
        expected = self.expected_seconds(n)
        if self.deadline_s and self.admitted and expected > self.deadline_s:
            raise ServiceError(
                503,
                "overloaded",
                f"the answer would take about {expected:.1f} s, past this server's deadline of "
                f"{self.deadline_s:g} s; retry shortly",
                retry_after=max(1, math.ceil(expected - self.deadline_s)),
            )

    @contextmanager
    def hold(self, n: int) -> Iterator[None]:
        """Count ``n`` generations as admitted while the block runs (after ``check``); their end is a finish."""
        if self.admitted == 0:
            self._last_finish = self._clock()  # busy from now: the idle time before is no service time
        self._update(n)
        try:
            yield
        finally:
            self._finish(n)

    @contextmanager
    def slots(self, n: int) -> Iterator[None]:
        self.check(n)
        with self.hold(n):
            yield

    def _finish(self, n: int) -> None:
        now = self._clock()
        gap = (now - self._last_finish) / n
        self.interval = gap if self.interval is None else (1 - SMOOTHING) * self.interval + SMOOTHING * gap
        self._last_finish = now
        self._update(-n)
        metrics.EXPECTED_SECONDS.set(self.expected_seconds())

    def _update(self, delta: int) -> None:
        self.admitted += delta
        running = min(self.admitted, self.max_in_flight)
        metrics.IN_FLIGHT.set(running)
        metrics.QUEUED.set(self.admitted - running)
