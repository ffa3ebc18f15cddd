"""What a killed launcher leaves of its local Ray is stopped by the next launcher; nothing else is touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil

from sweep.tune import ray_sessions

HOLD_OPEN = "import sys, time; f = open(sys.argv[1], 'a'); print('ready', flush=True); time.sleep(120)"


def holder(path: Path) -> subprocess.Popen:
    """A process that keeps a file in `path`'s folder open, as Ray's agents keep their session's logs open; its
    command line does not name the folder (the agents' process titles do not either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen([sys.executable, "-c", HOLD_OPEN, str(path)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def dead_launcher() -> tuple[int, float]:
    """The pid and start time of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(process.pid).create_time()
    process.wait()
    return process.pid, started


def test_a_dead_launchers_session_is_stopped_and_a_live_ones_is_not(tmp_path):
    records = tmp_path / "records"
    records.mkdir()
    dead_session, live_session = tmp_path / "session_dead", tmp_path / "session_live"
    orphan = holder(dead_session / "logs" / "dashboard_agent.log")
    alive = holder(live_session / "logs" / "dashboard_agent.log")
    bystander = holder(tmp_path / "elsewhere" / "x.log")
    try:
        pid, started = dead_launcher()
        (records / f"{pid}.json").write_text(json.dumps({"pid": pid, "started": started,
                                                          "session_dir": str(dead_session)}))
        me = psutil.Process()  # a live launcher: this test's own process
        (records / f"{me.pid}.json").write_text(json.dumps({"pid": me.pid, "started": me.create_time(),
                                                             "session_dir": str(live_session)}))
        (records / "garbage.json").write_text("{not json")

        cleaned = ray_sessions.clean_up_dead_sessions(records)

        assert cleaned == [(str(dead_session), 1)]
        assert orphan.wait(10) is not None, "the dead launcher's process was not stopped"
        assert alive.poll() is None and bystander.poll() is None, "a live session or a bystander was stopped"
        assert sorted(p.name for p in records.iterdir()) == [f"{me.pid}.json"]
    finally:
        for process in (orphan, alive, bystander):
            process.kill()
            process.wait()


def test_a_reused_pid_is_not_a_live_launcher(tmp_path):
    me = psutil.Process()
    record = ray_sessions.SessionRecord(me.pid, me.create_time() - 3600, str(tmp_path))
    assert not record.launcher_alive()
    assert ray_sessions.SessionRecord(me.pid, me.create_time(), str(tmp_path)).launcher_alive()


def test_a_launcher_records_its_session_and_forgets_it(tmp_path):
    path = ray_sessions.record_session("/tmp/ray/session_x", tmp_path)
    assert json.loads(path.read_text())["session_dir"] == "/tmp/ray/session_x"
    assert ray_sessions.clean_up_dead_sessions(tmp_path) == []  # alive: kept
    ray_sessions.forget_session(tmp_path)
    assert list(tmp_path.iterdir()) == []
