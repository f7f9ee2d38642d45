"""Shared benchmark harness: run our tool and its peers on the same inputs, print a table, write JSON.

Every benchmark script builds a list of :class:`Run` records (one per method x dataset) with :func:`measure`, then
calls :func:`report`. Ratios are computed against the row of ``ours`` for each dataset, so the table reads as
"peer / stmap" for time and memory and "stmap - peer" for quality.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

RESULTS = Path(__file__).parent / "results"


@dataclass
class Run:
    """One method on one dataset: wall time, peak memory and quality metrics."""

    dataset: str
    method: str
    seconds: float
    peak_mb: float
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""


class _PeakRSS:
    """Sample the process's resident memory in a thread; peak above the starting value, in MB."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.proc = psutil.Process(os.getpid())

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(dataset: str, method: str, func: Callable[[], Any], score: Callable[[Any], dict[str, float]]) -> Run:
    """Run ``func`` once, timing it and tracking peak memory (RSS and Python allocations), then score its output."""
    tracemalloc.start()
    with _PeakRSS() as rss:
        t0 = time.perf_counter()
        out = func()
        seconds = time.perf_counter() - t0
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = max(rss.mb, py_peak / 2**20)
    return Run(dataset, method, seconds, peak, {k: float(v) for k, v in score(out).items()})


def report(name: str, runs: list[Run], ours: str = "stmap", higher_is_better: dict[str, bool] | None = None) -> Path:
    """Print a table (with ratios to ``ours`` per dataset) and write ``results/<name>.json``; return its path."""
    higher_is_better = higher_is_better or {}
    metric_names = sorted({k for r in runs for k in r.metrics})
    header = ["dataset", "method", "time_s", "peak_MB", "time_vs_ours", "mem_vs_ours", *metric_names]
    rows = []
    for r in runs:
        ref = next((x for x in runs if x.dataset == r.dataset and x.method == ours), None)
        t_ratio = r.seconds / ref.seconds if ref and ref.seconds > 0 else float("nan")
        m_ratio = r.peak_mb / ref.peak_mb if ref and ref.peak_mb > 0 else float("nan")
        rows.append(
            [r.dataset, r.method, f"{r.seconds:.2f}", f"{r.peak_mb:.0f}", f"{t_ratio:.2f}", f"{m_ratio:.2f}"]
            + [f"{r.metrics.get(m, float('nan')):.4f}" for m in metric_names]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(f"\n== {name} ==\n{line}\n{'-' * len(line)}")
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    meta = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    payload = {"benchmark": name, "ours": ours, "meta": meta, "higher_is_better": higher_is_better}
    payload["runs"] = [asdict(r) for r in runs]
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
