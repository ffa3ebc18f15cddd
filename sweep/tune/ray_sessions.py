"""The local Ray clusters our launchers start, and what a killed launcher leaves behind.

A launcher without `--address` starts a Ray of its own. When that launcher is killed (`kill -9`, an OOM kill, a
closed laptop lid that ends the session), Ray's own processes are supposed to follow it, but some do not: its
`DashboardAgent` and `RuntimeEnvAgent` (children of the raylet, re-parented when it goes) were seen alive more
than a minute later, holding memory and the session's files. Nothing names them as ours: their process titles
(`ray::DashboardAgent`) carry no session, and a `ray start` cluster has the same processes.

So every launcher writes down the session it started (its own process, by pid and start time, and the session's
folder) in a small record on this machine, and removes the record when it ends. The next launcher looks at the
records first: a record whose launcher is gone names a dead predecessor's session, and every process still
holding that session's folder (on its command line, or as an open file: all of Ray's processes keep their logs
open there, the agents and idle workers included) is stopped. A live launcher's session, and any Ray this tool
did not start, are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

RECORDS_DIR = "medpeft-sweep-ray-sessions"  # under the machine's temporary folder (one per machine, not per user)


def records_dir() -> Path:
    return Path(tempfile.gettempdir()) / RECORDS_DIR


@dataclass(frozen=True)
class SessionRecord:
    """A local Ray session and the launcher process that started it."""

    pid: int
    started: float  # the launcher's process start time (psutil's create_time): a reused pid is not the launcher
    session_dir: str

    def launcher_alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return False


def record_session(session_dir: str, folder: Path | None = None) -> Path:
    """Write down that this process started the Ray session in `session_dir`."""
    folder = folder or records_dir()
    folder.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    path = folder / f"{me.pid}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(SessionRecord(me.pid, me.create_time(), session_dir))))
    tmp.replace(path)  # never a half-written record
    return path


def forget_session(folder: Path | None = None) -> None:
    """This launcher is ending and has shut its Ray down: its record goes."""
    with contextlib.suppress(FileNotFoundError):
        ((folder or records_dir()) / f"{os.getpid()}.json").unlink()


def session_processes(session_dir: str) -> list[psutil.Process]:
    """Every process (but this one) that names `session_dir` on its command line or holds a file open in it."""
    prefix = session_dir.rstrip("/") + "/"
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid == os.getpid():
            continue
        try:
            command = " ".join(process.info["cmdline"] or ())
            if session_dir in command or any(f.path.startswith(prefix) for f in process.open_files()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def clean_up_dead_sessions(folder: Path | None = None) -> list[tuple[str, int]]:
    """Stop what launchers that are gone left of their Ray sessions; returns (session folder, processes stopped)
    for each such session. Records of live launchers are left alone; unreadable records are removed."""
    folder = folder or records_dir()
    cleaned = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = SessionRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if record.launcher_alive():
            continue
        processes = session_processes(record.session_dir)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                process.kill()  # SIGKILL: Ray's agents ignore SIGTERM once their raylet is gone
        psutil.wait_procs(processes, timeout=10)
        path.unlink(missing_ok=True)
        cleaned.append((record.session_dir, len(processes)))
    return cleaned
