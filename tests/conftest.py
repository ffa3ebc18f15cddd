"""Shared fixtures: paths to the real sample data, a launcher runner, and clean-up of Ray processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sweep.orphans import kill_new_ray_processes, ray_processes

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


def launch(*args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    """Run `python -m sweep.launch ARGS` in a subprocess (its own Ray, its own imports)."""
    result = subprocess.run([sys.executable, "-m", "sweep.launch", *args], capture_output=True, text=True,
                            cwd=REPO, timeout=900)
    if check is not None and result.returncode != check:
        raise AssertionError(f"exit {result.returncode}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def run_worker(worker, config: dict, session=None):
    """A task's worker function run without Ray, reporting to a LocalSession (stopped like Tune stops a trial)."""
    import contextlib

    from trainables.session import LocalSession, StopTraining, use_session

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
    """The default sweep, unchanged, on real BreastMNIST: shared by every test that needs a finished sweep."""
    if not (SHARED_DATA / "medmnist").is_dir():
        pytest.skip("../shared/data is not present")
    storage = tmp_path_factory.mktemp("quickstart")
    result = launch("--storage", str(storage), "--data-root", str(SHARED_DATA))
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
