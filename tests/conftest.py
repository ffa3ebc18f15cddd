"""Shared fixtures: paths to the real sample data, a launcher runner, and clean-up of Ray processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.ray_processes import kill_new_ray_processes, ray_processes
from trainables.session import LocalSession

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BREASTMNIST = SHARED_DATA / "medmnist" / "breastmnist_28.npz"

needs_shared_data = pytest.mark.skipif(not BREASTMNIST.is_file(), reason="../shared/data is not present")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One image cache for the whole test session (shared by the sweeps the tests launch), not the user's.
_CACHE = tempfile.mkdtemp(prefix="medpeft-test-cache-")
os.environ["MEDPEFT_CACHE_DIR"] = _CACHE
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Every Ray the tests start (and the launchers they run, which inherit this) binds to 127.0.0.1 only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def launch(*args: str, check: int | None = 0, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m sweep.launch ARGS` in a subprocess (its own Ray, its own imports)."""
    result = subprocess.run([sys.executable, "-m", "sweep.launch", *args], capture_output=True, text=True,
                            cwd=REPO, timeout=900, env=env)
    if check is not None and result.returncode != check:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


class LaunchedSweep:
    """`python -m sweep.launch ARGS` in the background. A thread drains its output (stdout and stderr together) as
    it comes: a pipe nobody reads fills up and blocks the driver, which stalls the sweep being watched."""

    def __init__(self, args: list[str], cwd: Path = REPO, env: dict | None = None) -> None:
        self.rays_before = ray_processes()
        self.proc = subprocess.Popen([sys.executable, "-m", "sweep.launch", *args], cwd=cwd, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until `ready()` (checked on each output line and every half second) or the output ends."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not ready():
                if self._closed or time.monotonic() > deadline:
                    return ready()
                self._changed.wait(0.5)
        return True

    def count(self, predicate: Callable[[str], bool]) -> int:
        with self._changed:
            return sum(map(predicate, self.lines))

    def wait(self, timeout: float) -> int:
        """The exit code; the launcher and everything it started are killed after `timeout` seconds."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the launcher, then every Ray process it left (as a preempted machine would lose them)."""
        with contextlib.suppress(ProcessLookupError):  # it may have exited already
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(10)
        time.sleep(1)
        kill_new_ray_processes(self.rays_before)


class StopTraining(SystemExit):
    """Raised by StoppingSession.report to imitate Tune stopping a trial (Tune raises SystemExit there)."""


class StoppingSession(LocalSession):
    """A LocalSession that ends the loop after its `stop_after_reports`-th report, the way Tune stops a trial."""

    def __init__(self, stop_after_reports: int) -> None:
        super().__init__()
        self.stop_after = stop_after_reports

    def report(self, metrics: dict) -> None:
        super().report(metrics)
        if len(self.reports) >= self.stop_after:
            raise StopTraining(f"stopped after {len(self.reports)} reports")


def load_spec(path: str | Path | None = None, overrides: list[str] | None = None):
    """A spec without arms, as the launcher loads it (sweep.plan.spec.load_specs)."""
    from sweep.plan.spec import load_specs

    specs = load_specs(path, overrides)
    assert len(specs) == 1, f"{path} has {len(specs)} arms: load it with load_specs"
    return specs[0]


def run_worker(worker, config: dict, session=None):
    """A task's worker function run without Ray, reporting to a LocalSession (a StoppingSession is stopped like Tune
    stops a trial)."""
    from trainables.session import use_session

    session = session or LocalSession()
    with use_session(session), contextlib.suppress(StopTraining):
        worker(config)
    return session


def mlflow_experiment(config: dict, folder: Path) -> dict:
    """`config` with its tracking pointed at a new MLflow experiment in `folder` (sqlite + artifacts there)."""
    import mlflow

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    experiment = mlflow.MlflowClient(uri).create_experiment("t", artifact_location=(folder / "a").as_uri())
    config["tracking"].update(uri=uri, experiment_id=experiment)
    return config


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory) -> tuple[Path, str]:
    """The default sweep, unchanged, as `make run` runs it on a fresh machine: no data root and an empty home
    directory, so it trains on the BreastMNIST shipped inside the project. Shared by every test that needs a
    finished sweep."""
    storage = tmp_path_factory.mktemp("quickstart")
    home = tmp_path_factory.mktemp("empty-home")
    env = {k: v for k, v in os.environ.items() if k != "MEDPEFT_DATA_ROOT"} | {"HOME": str(home)}
    result = launch("--storage", str(storage), env=env)
    return storage, result.stdout


@pytest.fixture(scope="session", autouse=True)
def _no_ray_left_behind():
    before = ray_processes()
    yield
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass
    kill_new_ray_processes(before)
    shutil.rmtree(_CACHE, ignore_errors=True)


LONG_TESTS = "MEDPEFT_LONG_TESTS"


def pytest_collection_modifyitems(config, items):
    """Tests marked `long` (end-to-end runs of several minutes each on 2 cores) run with MEDPEFT_LONG_TESTS=1
    (`make test-all`), so that `make test` stays within its time; everything they check is also covered by
    faster tests, at the level of units."""
    if os.environ.get(LONG_TESTS) == "1":
        return
    skip = pytest.mark.skip(reason=f"a long end-to-end run: {LONG_TESTS}=1 (make test-all) runs it")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)
