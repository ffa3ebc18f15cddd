"""Ray processes on this machine. After a SIGKILL of a sweep's driver, Ray's agents and trial workers of the local
cluster outlive it (and ignore SIGTERM); tests and benchmarks that kill drivers end them with this."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

PATTERNS = ("ray::", "raylet", "gcs_server", "ray/dashboard", "log_monitor.py", "runtime_env/agent",
            "monitor.py --logs-dir")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process on this machine."""
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    table = {}
    for line in out.splitlines()[1:]:
        pid, ppid, *command = line.split(maxsplit=2)
        table[int(pid)] = (int(ppid), command[0] if command else "")
    return table


def ray_processes() -> set[int]:
    return {pid for pid, (_, command) in _processes().items() if any(p in command for p in PATTERNS)}


def kill_new_ray_processes(before: set[int]) -> None:
    """SIGKILL every Ray process that was not running when `before` was taken, except the new workers of a Ray
    that was (another sweep on this machine keeps its own)."""
    table = _processes()

    def under_old_ray(pid: int) -> bool:
        seen = set()
        while pid in table and pid not in seen:
            seen.add(pid)
            pid = table[pid][0]
            if pid in before:
                return True
        return False

    for pid in ray_processes() - before:
        if not under_old_ray(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
