"""Ray processes on this machine. After a SIGKILL of a sweep's driver, Ray's agents and trial workers of the local
cluster outlive it (and ignore SIGTERM); tests and benchmarks that kill drivers end them with this."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

PATTERNS = ("ray::", "raylet", "gcs_server", "ray/dashboard", "log_monitor.py", "runtime_env/agent",
            "monitor.py --logs-dir")


def ray_processes() -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    pids = set()
    for line in out.splitlines()[1:]:
        pid, _, command = line.strip().partition(" ")
        if any(p in command for p in PATTERNS):
            pids.add(int(pid))
    return pids


def kill_new_ray_processes(before: set[int]) -> None:
    """SIGKILL every Ray process that was not running when `before` was taken."""
    for pid in ray_processes() - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
