"""How fast this machine runs now, and how fast trials run when `slots` of them share it (sweep/plan/cost.py).

A machine's speed is not a constant: a laptop's clock follows its temperature, and a cloud VM shares its cores
with its neighbours. On the 2-core VM this was written on, the same 15 training steps of EfficientNet-Lite0 ran at
46 to 65 images/s within ten minutes, and a calibration cached hours before a study had measured 68 where the
study's trials then ran at 45. Two things follow:

- **Drift** (`reference_rate`): every calibration times a fixed reference workload now (a small convolutional
  network's training step on 16 images of 28 px, for `seconds`). Each group measured now records it; a group read
  from the cache is scaled by reference now / reference when it was measured, so that cached and fresh
  measurements describe the machine at the same moment.
- **Trials at once** (`together`): `slots` trials share the cores' caches and memory bandwidth (and the cores,
  where slots outnumber them). A group is measured as the sweep runs it: in `slots` fresh processes at once, each
  on a trial's threads, their timed steps started together at a barrier; its speed is their mean. On this machine
  two EfficientNet-Lite0 full fine-tunings at once each kept 0.85-0.9 of their speed alone, linear probes all of
  it: a small reference workload's slowdown (none) does not stand for a large model's.

Both concern the CPU: on a GPU each trial has its own share of the card, and neither is measured.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from typing import Any

REFERENCE_SECONDS = 2.0  # timed seconds: long enough to average over a VM's second-to-second jitter
REFERENCE_BATCH, REFERENCE_SIZE = 16, 28
TOGETHER_TIMEOUT_S = 600  # a measurement that takes longer than this has hung (a model build, a deadlock)


class SpeedError(RuntimeError):
    """A measurement in a separate process failed or did not finish."""


def reference_rate(threads: int = 1, seconds: float = REFERENCE_SECONDS) -> float:
    """Training steps/s of the reference workload on `threads` threads, timed for `seconds` after warm-up steps
    (torch's threads are set back afterwards)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    if threads < 1 or seconds <= 0:
        raise ValueError(f"threads ({threads}) must be at least 1 and seconds ({seconds}) more than 0")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
        optimizer = torch.optim.AdamW(net.parameters())
        x = torch.randn(REFERENCE_BATCH, 3, REFERENCE_SIZE, REFERENCE_SIZE, generator=generator)
        y = torch.randint(0, 10, (REFERENCE_BATCH,), generator=generator)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            optimizer.step()

        for _ in range(3):
            step()
        steps, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            step()
            steps += 1
        return steps / elapsed
    finally:
        torch.set_num_threads(before)


def _worker(function: Callable[..., Any], kwargs: dict[str, Any], barrier: Any, out: Any) -> None:
    try:
        out.put(("ok", function(**kwargs, ready=barrier.wait)))
    except BaseException as error:  # reported to the parent, which raises it with the others' context
        barrier.abort()
        out.put(("error", f"{type(error).__name__}: {error}"))


def together(function: Callable[..., Any], kwargs: dict[str, Any], processes: int) -> list[Any]:
    """`function(**kwargs, ready=...)` in `processes` fresh processes at once: each calls `ready()` when it is
    about to time, and none goes on before all have (a barrier). Returns each process's result."""
    if processes < 1:
        raise ValueError(f"processes ({processes}) must be at least 1")
    context = multiprocessing.get_context("spawn")  # not a fork of a parent that holds torch's threads or Ray
    barrier, out = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=_worker, args=(function, kwargs, barrier, out), daemon=True)
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        results = []
        for _ in workers:
            try:
                results.append(out.get(timeout=TOGETHER_TIMEOUT_S))
            except Exception:  # queue.Empty: a worker died without a word (killed, out of memory)
                raise SpeedError(f"a measurement in {processes} processes at once did not finish within "
                                 f"{TOGETHER_TIMEOUT_S} s") from None
        errors = [value for status, value in results if status == "error"]
        if errors:
            raise SpeedError(f"a measurement in {processes} processes at once failed: {errors[0]}")
        return [value for _, value in results]
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
