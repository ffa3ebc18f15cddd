"""Ray processes on this machine. After a SIGKILL of a sweep's driver, Ray's agents and trial workers of the local
cluster outlive it (and ignore SIGTERM); tests and benchmarks that kill drivers end them with this."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

PATTERNS = ("ray::", "raylet", "gcs_server", "ray/dashboard", "log_monitor.py", "runtime_env/agent",
            "monitor.py --logs-dir")


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process on this machine."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    table = {}
    for line in out.splitlines()[1:]:
        pid, ppid, *command = line.split(maxsplit=2)
        table[int(pid)] = (int(ppid), command[0] if command else "")
    return table


def ray_processes() -> set[int]:
    return {pid for pid, (_, command) in processes().items() if any(p in command for p in PATTERNS)}


def new_ray_processes(before: set[int]) -> set[int]:
    """The Ray processes that were not running when `before` was taken and are ours: started under this process,
    or orphaned (a killed launcher's, re-parented to init). Not the new workers of a Ray that was running before,
    nor the Ray of a launcher that some other process on this machine runs and is still alive (another test
    session's sweep keeps its own)."""
    table = processes()
    ray = ray_processes()
    me = os.getpid()

    def ours(pid: int) -> bool:
        ancestors, seen = [], {pid}
        while pid in table and table[pid][0] not in seen:
            pid = table[pid][0]
            seen.add(pid)
            ancestors.append(pid)
        if me in ancestors:
            return True
        if any(a in before for a in ancestors):
            return False  # a worker of a Ray that was already running
        # Under another live process (some launcher that is not ours), or orphaned (a killed launcher's).
        return not any(a > 1 and a in table and a not in ray for a in ancestors)

    return {pid for pid in ray - before if ours(pid)}


def kill_new_ray_processes(before: set[int]) -> None:
    """SIGKILL the processes `new_ray_processes(before)` finds."""
    for pid in new_ray_processes(before):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
