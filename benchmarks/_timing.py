"""Timing shared by the benchmark scripts (run them from anywhere: ``python benchmarks/bench_x.py``)."""

from __future__ import annotations

import time


def best_of(fn, repeat: int):
    """Run ``fn`` ``repeat`` times; return (its last result, best wall seconds, best CPU seconds)."""
    wall, cpu, out = float("inf"), float("inf"), None
    for _ in range(max(1, int(repeat))):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall = min(wall, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)
    return out, wall, cpu
