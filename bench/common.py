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


def launch(*args: str, env: dict | None = None, check: bool = True):
    """`python -m sweep.launch ARGS` in a subprocess (its own Ray), output captured."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "sweep.launch", *args], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise RuntimeError(f"sweep failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def tune_results(experiment_dir: Path) -> dict[str, list[dict]]:
    """Every trial's Tune results (result.json, written when TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0), by trial key."""
    import json

    out = {}
    for path in experiment_dir.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            out[rows[0]["config"]["tracking"]["trial_key"]] = rows
    return out


def data_args() -> list[str]:
    return ["--data-root", str(SHARED_DATA)] if (SHARED_DATA / "medmnist").is_dir() else []
