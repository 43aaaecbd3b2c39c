"""Latency percentiles with a bounded memory and a stated relative error.

A log-bucketed histogram (the idea of DDSketch, without its collapsing): a latency of v ns
(v >= 1) is counted in bucket ``ceil(log(v) / log(GAMMA))``, with ``GAMMA = (1 + ALPHA) /
(1 - ALPHA)``.  Bucket i holds the values in (GAMMA**(i-1), GAMMA**i]; reporting it as
``2 * GAMMA**i / (GAMMA + 1)`` is within ALPHA (relative) of every value in it.  So a
percentile read from the buckets is within ALPHA of the exact percentile of the values
counted (nearest rank: the value of rank ceil(q * n) in sorted order).

Memory: one dict entry per bucket in use.  Latencies from 1 ns to MAX_NS span at most
MAX_BUCKETS buckets (~1270 for 1 ns .. 100 s at ALPHA = 1 %); larger values are counted at
MAX_NS (their percentile reads as MAX_NS, exact max aside).  Latency 0 has its own count.
"""
from __future__ import annotations

import math

ALPHA = 0.01                        # stated relative error of every percentile
GAMMA = (1 + ALPHA) / (1 - ALPHA)
INV_LOG_GAMMA = 1.0 / math.log(GAMMA)
MAX_NS = 100_000_000_000            # 100 s
MAX_KEY = math.ceil(math.log(MAX_NS) * INV_LOG_GAMMA)
MAX_BUCKETS = MAX_KEY + 2           # keys 0..MAX_KEY, plus the zero count (key -1)
_ceil = math.ceil
_log = math.log


def key_of(v):
    """Bucket key of a latency in ns (-1 for 0)."""
    if v <= 0:
        return -1
    if v >= MAX_NS:
        return MAX_KEY
    return _ceil(_log(v) * INV_LOG_GAMMA)


def value_of(key):
    """The value reported for a bucket: within ALPHA of each value it holds."""
    if key < 0:
        return 0
    return 2.0 * GAMMA ** key / (GAMMA + 1)


def quantiles(buckets, qs):
    """{key: count} -> [value at quantile q for q in qs] (nearest rank; 0 when empty).
    ``qs`` ascending."""
    n = sum(buckets.values())
    if n <= 0:
        return [0] * len(qs)
    ranks = [max(1, _ceil(q * n - 1e-9)) for q in qs]
    out = []
    seen = 0
    i = 0
    for key in sorted(buckets):
        seen += buckets[key]
        while i < len(ranks) and seen >= ranks[i]:
            out.append(value_of(key))
            i += 1
        if i == len(ranks):
            break
    while len(out) < len(qs):         # not reached: ranks never exceed n
        out.append(value_of(max(buckets)))
    return out


class Sketch:
    """Stand-alone use (tests, tools); the aggregation inlines add() on its hot path."""

    __slots__ = ("buckets", "max")

    def __init__(self):
        self.buckets = {}
        self.max = 0

    def add(self, v):
        k = key_of(v)
        self.buckets[k] = self.buckets.get(k, 0) + 1
        if v > self.max:
            self.max = v

    def quantiles(self, qs):
        return quantiles(self.buckets, qs)
