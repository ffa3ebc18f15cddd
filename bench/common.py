"""What every benchmark shares: a result row, timing, and where the sample data is."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@dataclass
class Result:
    key: str  # the top-level key in the JSON report
    value: float | None
    target: str  # e.g. ">= 5"
    ours: str  # what was measured, in words, with its number
    baseline: str
    details: dict = field(default_factory=dict)


def rate(work: Callable[[], int], min_seconds: float = 1.0) -> float:
    """Items per second of `work` (which returns how many items it did), repeated for at least min_seconds."""
    work()  # warm-up: imports, page cache, allocator
    done, started = 0, time.perf_counter()
    while True:
        done += work()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return done / elapsed
