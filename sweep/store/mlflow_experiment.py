"""MLflow on the driver: the store, one experiment and one parent run per sweep, and one run per cell.

Created here, before any trial starts: several trial processes creating a fresh sqlite store at once race on its
schema migration. Runs are found again by tags (role + key) before they are created, so a resumed sweep reuses
them. Trials nest their own runs under their cell's run (see trainables.mlflow_run).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sweep.plan.grid import Cell
from trainables.contract import (
    BUDGET_PARAM,
    CELL_FIELD_TAGS,
    CELL_KEY_TAG,
    DATA_FALLBACK_TAG,
    ROLE_TAG,
    SWEEP_CELLS_PARAM,
)

ROLE = ROLE_TAG  # the tag saying what a run of the experiment stands for (contract)


@dataclass(frozen=True)
class Tracking:
    uri: str
    experiment_id: str
    parent_run_id: str
    cell_runs: dict[str, str]  # cell key -> run id

    def for_cell(self, sweep: str, cell: Cell) -> dict[str, Any]:
        """The `tracking` section of a cell's trial configs."""
        return {
            "uri": self.uri,
            "experiment_id": self.experiment_id,
            "parent_run_id": self.cell_runs[cell.key],
            "sweep": sweep,
            CELL_KEY_TAG: cell.key,
            "tags": {},
        }


def default_tracking_uri(storage) -> str:
    """A sqlite store beside the sweeps; for remote storage, on this machine (sqlite cannot live on S3: on a
    cluster, pass --mlflow-uri of a tracking server)."""
    if storage.remote:
        return f"sqlite:///{Path.cwd() / 'medpeft-mlflow.db'}"
    return f"sqlite:///{Path(storage.uri) / 'mlflow.db'}"


def without_credentials(uri: str) -> str:
    """The MLflow URI without credentials: user:password in it move to MLflow's environment variables, which
    MLflow reads and nothing logs (a trial's config, Tune's state and MLflow itself never hold them)."""
    parsed = urlparse(uri)
    if not (parsed.username or parsed.password):
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = parsed.username or ""
    os.environ["MLFLOW_TRACKING_PASSWORD"] = parsed.password or ""
    host = parsed.hostname + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=host).geturl()


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


# What MLflow can track to, and how to write each.
TRACKING_SCHEMES = {
    "sqlite": "sqlite:///PATH/mlflow.db (a local file; the default)",
    "postgresql": "postgresql+psycopg2://USER@HOST:PORT/DB (a database; needs psycopg2-binary)",
    "mysql": "mysql://USER@HOST:PORT/DB (needs pymysql or mysqlclient)",
    "mssql": "mssql://USER@HOST:PORT/DB (needs pyodbc)",
    "http": "http://HOST:PORT (an `mlflow server`)",
    "https": "https://HOST (an `mlflow server`)",
    "databricks": "databricks (a Databricks workspace)",
}
# The Python driver SQLAlchemy loads for each database (`scheme+driver://` names it; without one, SQLAlchemy
# 2.1's defaults), and the package that provides it.
_DRIVERS = {"postgresql": "psycopg", "mysql": "mysqldb", "mssql": "pyodbc"}
_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # each database's default port
PROBE_TIMEOUT_S = 5
_PACKAGES = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary", "pymysql": "pymysql",
             "mysqldb": "mysqlclient", "pyodbc": "pyodbc"}


def check_tracking_uri(uri: str) -> None:
    """Raise StorageError unless MLflow can open `uri`: a known scheme, its database driver installed, a server that
    answers, a sqlite file whose folder can be created. Called before anything is written."""
    import importlib.util

    from sweep.errors import StorageError

    parsed = urlparse(uri)
    scheme, _, driver = parsed.scheme.partition("+")
    if scheme not in TRACKING_SCHEMES:
        known = "; ".join(TRACKING_SCHEMES.values())
        raise StorageError(f"--mlflow-uri {uri!r}: MLflow cannot track to {parsed.scheme or 'a plain path'!r} URIs. "
                        f"Use one of: {known}")
    driver = driver or _DRIVERS.get(scheme, "")
    module = {"mysqldb": "MySQLdb"}.get(driver, driver)
    if scheme in _DRIVERS and not importlib.util.find_spec(module):
        raise StorageError(f"--mlflow-uri {uri!r}: its database driver {driver!r} is not installed: pip install "
                        f"{_PACKAGES.get(driver, driver)}" + (" (or name the driver you have, e.g. "
                                                               "postgresql+psycopg2://...)" if scheme == "postgresql"
                                                               else ""))
    if scheme in _DRIVERS and parsed.hostname:  # (without a host, the driver's local socket: nothing to probe)
        _probe_database(uri, parsed.hostname, parsed.port or _PORTS[scheme])
    if scheme == "sqlite":
        folder = Path(uri.removeprefix("sqlite:///")).parent
        existing = next((p for p in [folder, *folder.parents] if p.exists()), None)
        if existing is None or not os.access(existing, os.W_OK):
            raise StorageError(f"--mlflow-uri {uri!r}: {folder} cannot be created or written")
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S * 2) as response:
                response.read(64)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise StorageError(f"--mlflow-uri {uri!r}: no MLflow tracking server answers there ({e}); start one "
                            "(mlflow server --host 127.0.0.1 --port 5000 ...) or give another URI") from None


def _probe_database(uri: str, host: str, port: int) -> None:
    """A database that does not answer is an error now, within seconds: MLflow's own connection retries take
    minutes, and come after the sweep's folder has been created."""
    import socket

    from sweep.errors import StorageError

    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        raise StorageError(f"--mlflow-uri {uri!r}: no database answers at {host}:{port} ({e.strerror or e}); start it, "
                        "or fix the host and port in --mlflow-uri (or leave it out for a sqlite file in the "
                        "storage)") from None


def create_store(uri: str) -> None:
    """A new sqlite store appears complete or not at all: its schema is built in a file of its own, then linked into
    place (a link never replaces a file another process made first). Anything that opens the store while it is
    still being migrated (a trial, `mlflow ui`, a test polling it) would run the same migration at the same time,
    and one of them fails ("table _alembic_tmp_... already exists")."""
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(f".{path.name}.{os.getpid()}.creating")
    building.unlink(missing_ok=True)
    try:
        client(f"sqlite:///{building}").search_experiments(max_results=1)  # runs the schema migrations
        os.link(building, path)
    except FileExistsError:
        pass  # another process finished first: use its store
    except OSError:  # a filesystem without hard links: a rename (which could replace a store made meanwhile)
        if not path.exists():
            os.replace(building, path)
    finally:
        building.unlink(missing_ok=True)


def find_experiment(uri: str, name: str):
    return client(uri).get_experiment_by_name(name)


def prepare(uri: str, sweep: str, artifact_root: str, cells: list[Cell], spec_text: str,
            notes: Iterable[str] = ()) -> Tracking:
    """Get or create the sweep's experiment, parent run and cell runs."""
    create_store(uri)
    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name(sweep)
    if experiment is None:
        experiment_id = mlflow.create_experiment(sweep, artifact_location=artifact_root)
    else:
        experiment_id = experiment.experiment_id
    existing = runs_by_tag(mlflow, experiment_id, role="cell", key=CELL_KEY_TAG)
    parent = runs_by_tag(mlflow, experiment_id, role="sweep", key="sweep").get(sweep)
    if parent is None:
        parent = mlflow.create_run(experiment_id, run_name=sweep, tags={ROLE: "sweep", "sweep": sweep}).info.run_id
        mlflow.log_text(parent, spec_text, "spec.yaml")
        mlflow.log_batch(parent, params=_params({SWEEP_CELLS_PARAM: len(cells), "trials": sum(c.budget for c in cells)}))
    for note in notes:
        if "SYNTHETIC" in note:
            mlflow.set_tag(parent, DATA_FALLBACK_TAG, "synthetic")
    cell_runs = {}
    for cell in cells:
        run_id = existing.get(cell.key)
        if run_id is None:
            tags = {
                ROLE: "cell",
                "mlflow.parentRunId": parent,
                "sweep": sweep,
                CELL_KEY_TAG: cell.key,
                **dict(zip(CELL_FIELD_TAGS, (cell.task, cell.dataset.key, cell.backbone.key, cell.method.key,
                                             str(cell.fraction), str(cell.seed)), strict=True)),
                **({DATA_FALLBACK_TAG: "synthetic"} if cell.tags.get("fallback_from") else {}),
            }
            run_id = mlflow.create_run(experiment_id, run_name=cell.key, tags=tags).info.run_id
            space = {name: dist.model_dump(exclude_none=True) for name, dist in cell.space.items()}
            mlflow.log_batch(run_id, params=_params({BUDGET_PARAM: cell.budget, "space": space}))
        cell_runs[cell.key] = run_id
    return Tracking(uri, experiment_id, parent, cell_runs)


def runs_by_tag(mlflow, experiment_id: str, role: str, key: str) -> dict[str, str]:
    """{tag value: run id} of the experiment's runs with this role."""
    found = {}
    for run in search_all(mlflow, experiment_id, f"tags.{ROLE} = '{role}'"):
        found.setdefault(run.data.tags.get(key), run.info.run_id)
    return found


def search_all(mlflow, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = mlflow.search_runs([experiment_id], filter_string=filter_string, max_results=5000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _params(values: dict[str, Any]):
    from mlflow.entities import Param

    return [Param(k, str(v)[:6000]) for k, v in values.items()]
