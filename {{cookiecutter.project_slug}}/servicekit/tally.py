"""Plain counters the server and the journal keep, read by ``servicekit.metrics`` at scrape time.

Why not the client library's own Counter and Histogram: each of their updates takes a lock,
and the server would pay it for every batch whether anyone scrapes or not. Here an update is
an integer addition on the event loop's thread and nothing else; the metrics endpoint turns
these numbers into Prometheus families only when it is scraped. So this module is stdlib-only
and costs nothing to import: the service counts even when metrics are off, and only
``APP_METRICS_PORT`` brings in ``prometheus_client``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

SECONDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
"""Bucket bounds for durations: from 100 us (a page-cache write) to 10 s (a stuck disk)."""
LINES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
"""Bucket bounds for the lines one journal write carries (group commit)."""


class Histogram:
    """Counts of observations per bucket, and their sum; no lock, no allocation per bucket.

    ``counts[i]`` holds the observations ``v`` with ``bounds[i-1] < v <= bounds[i]`` (the
    last one: above every bound), not cumulated: the scrape cumulates them, as Prometheus's
    ``le`` buckets are. One writer at a time (the event loop, or the journal's one fsync in
    the executor); a scrape that reads mid-update may see ``total`` and ``counts`` one
    observation apart, which the next scrape corrects.
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        buckets: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        return buckets
