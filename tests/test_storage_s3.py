"""S3 storage end to end on a real S3-protocol server (moto) on loopback: preflight errors, a sweep whose storage
drops out mid-way (clear error, clean resume once it is back), everything where it belongs in the bucket, MLflow
through a tracking server, and no credential anywhere in what the sweep wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from tests.conftest import SHARED_DATA, LaunchedSweep
from tests.servers import Proxy, mlflow_server, moto_s3

pytestmark = pytest.mark.slow

SECRET_KEY = "fake-Secret-Key-7f3a9c1e5b2d8046"
PASSWORD = "MlflowPa55wordZq81"
TINY = ["--set", "backbones=[{name: test_efficientnet, weights: random}]", "--set", "image_size=32",
        "--set", "methods=[linear, bitfit]", "--set", "train.epochs=4", "--set", "fractions=[1.0]"]


@pytest.fixture
def s3(tmp_path):
    with moto_s3() as endpoint:
        proxy = Proxy(int(endpoint.rsplit(":", 1)[1]))
        env = {"AWS_ACCESS_KEY_ID": "AKIAFAKEACCESSKEY01", "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": proxy.url,
               "MLFLOW_S3_ENDPOINT_URL": proxy.url}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        boto3.client("s3").create_bucket(Bucket="medpeft")
        try:
            yield proxy, env
        finally:
            proxy.down()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def launch(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweep.launch", *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


def test_preflight_names_missing_bucket_and_unreachable_endpoint(s3, tmp_path):
    proxy, env = s3
    missing = launch(["--storage", "s3://no-such-bucket/x", *TINY], env, tmp_path)
    assert missing.returncode == 2 and "bucket 'no-such-bucket' does not exist" in missing.stderr
    bad = launch(["--storage", "s3://user:pw@medpeft/x", *TINY], env, tmp_path)
    assert bad.returncode == 2 and "must not carry credentials" in bad.stderr
    proxy.down()
    unreachable = launch(["--storage", "s3://medpeft/x", *TINY], env, tmp_path)
    assert unreachable.returncode == 2 and "cannot reach S3" in unreachable.stderr
    proxy.up()
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket="medpeft")  # nothing was created


def test_the_storage_probe_says_when_s3_stops_answering(s3):
    """Storage.probe, the one liveness check of a running sweep (the storage watch, and run_sweep after Tune
    stopped): answered while the endpoint is up, raises (reachable: False) once it is down, and answered again."""
    from sweep.store.storage import parse_storage

    proxy, _ = s3
    storage = parse_storage("s3://medpeft/sweeps")
    storage.probe()
    assert storage.reachable()
    proxy.down()
    with pytest.raises(OSError):
        storage.probe()
    assert not storage.reachable()
    proxy.up()
    assert storage.reachable()


@pytest.mark.long
def test_sweep_on_s3_survives_losing_storage_and_leaks_no_credentials(s3, tmp_path):
    proxy, env = s3
    data = ["--data-root", str(SHARED_DATA)] if (SHARED_DATA / "medmnist").is_dir() else []
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", "s3://medpeft/mlflow-default", env) as url:
        uri = url.replace("http://", f"http://alice:{PASSWORD}@")
        args = ["--storage", "s3://medpeft/sweeps", "--name", "s3sweep", "--mlflow-uri", uri]
        sessions_before = set(Path("/tmp/ray").glob("session_*")) if Path("/tmp/ray").is_dir() else set()

        # Storage drops out after the first finished trial: the sweep stops with a clear error (exit 3).
        sweep = LaunchedSweep([*args, *data, *TINY], cwd=tmp_path, env={**os.environ, **env})
        sweep.wait_for(lambda: sweep.count(lambda line: line.startswith("[") and "finished" in line) > 0, 300)
        proxy.down()
        code, first_run = sweep.wait(240), sweep.output
        assert code == 3, first_run[-3000:]
        assert "stopped answering" in first_run and "--resume" in first_run
        sweep.kill()  # what it left of Ray

        # Back again: --resume finishes every cell.
        proxy.up()
        resumed = launch([*args, "--resume", *data], env, tmp_path)
        assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
        assert "2/2 cells complete" in resumed.stdout

        report = subprocess.run([sys.executable, "-m", "sweep.report", "--name", "s3sweep", "--storage",
                                 "s3://medpeft/sweeps", "--mlflow-uri", uri, "--out", str(tmp_path / "report")],
                                cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True)
        assert report.returncode == 0, report.stderr[-2000:]

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("s3sweep")
        assert experiment.artifact_location.startswith("s3://medpeft/sweeps/mlartifacts")
        runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
        keys = [r.data.tags["trial_key"] for r in runs]
        assert len(keys) == len(set(keys)) == 6
        assert {r.data.tags["status"] for r in runs} <= {"finished", "stopped_early"}

        objects = boto3.client("s3").list_objects_v2(Bucket="medpeft", Prefix="sweeps/")["Contents"]
        names = [o["Key"] for o in objects]
        assert any(k.startswith("sweeps/s3sweep/experiment_state") for k in names)
        assert "sweeps/s3sweep/tuner.pkl" in names and "sweeps/s3sweep/medpeft-sweep.json" in names
        assert any(k.startswith("sweeps/s3sweep/checkpoints/") and k.endswith("/LATEST") for k in names)
        assert any(k.startswith("sweeps/cache/images/") and k.endswith(".arrow") for k in names)
        assert any(k.startswith("sweeps/mlartifacts/") and k.endswith("report/report.html") for k in names)

        # No credential in anything the sweep wrote or printed.
        texts = [("launch output", first_run + resumed.stdout + resumed.stderr + report.stdout)]
        for o in objects:
            body = boto3.client("s3").get_object(Bucket="medpeft", Key=o["Key"])["Body"].read()
            texts.append((f"s3://medpeft/{o['Key']}", body.decode("latin-1")))
        for run in client.search_runs([experiment.experiment_id]):
            texts.append((f"mlflow run {run.info.run_id}", repr(run.data.params) + repr(run.data.tags)))
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        for session in set(Path("/tmp/ray").glob("session_*")) - sessions_before:
            files += [p for p in session.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
        for path in files:
            texts.append((str(path), path.read_bytes().decode("latin-1")))
        leaks = [(where, text[max(0, text.find(secret) - 200): text.find(secret) + 50])
                 for where, text in texts for secret in (SECRET_KEY, PASSWORD) if secret in text]
        assert not leaks, f"credentials written to: {leaks[:5]}"
        assert len(texts) > 100
