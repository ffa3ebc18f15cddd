"""Where sweeps live: a local folder or an S3 prefix (AWS or any S3-compatible endpoint), behind one small API.

S3-compatible endpoints (MinIO, moto, ...) are given the way AWS tools expect them: AWS_ENDPOINT_URL_S3 (or
AWS_ENDPOINT_URL) in the environment; boto3, pyarrow (Tune's storage, checkpoints) and MLflow's artifact store
all read it. Credentials come from the environment or the instance profile, never from the URI, so they are never
written into a trial's config, Tune's state or MLflow.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from sweep.errors import StorageError


@dataclass(frozen=True)
class Storage:
    uri: str  # an absolute local path, or s3://bucket/prefix

    @property
    def remote(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> str:
        return "/".join([self.uri.rstrip("/"), *parts])

    def filesystem(self) -> pafs.FileSystem:
        return pafs.FileSystem.from_uri(self.uri)[0] if self.remote else pafs.LocalFileSystem()

    def _path(self, uri: str) -> str:
        return uri.removeprefix("s3://")

    def exists(self, uri: str) -> bool:
        return self.filesystem().get_file_info(self._path(uri)).type != pafs.FileType.NotFound

    def is_empty_dir(self, uri: str) -> bool:
        fs = self.filesystem()
        if fs.get_file_info(self._path(uri)).type == pafs.FileType.NotFound:
            return True
        return not fs.get_file_info(pafs.FileSelector(self._path(uri), allow_not_found=True))

    def write_text(self, uri: str, text: str) -> None:
        fs = self.filesystem()
        fs.create_dir(self._path(uri).rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(self._path(uri)) as f:
            f.write(text.encode())

    def read_text(self, uri: str) -> str:
        with self.filesystem().open_input_stream(self._path(uri)) as f:
            return f.read().decode()

    def upload(self, local: Path, uri: str) -> None:
        pafs.copy_files(str(local), self._path(uri), destination_filesystem=self.filesystem())

    def probe(self) -> None:
        """Does the storage answer? Asks for its root's info and raises what the storage raises when it does not:
        the one liveness check of a running sweep (sweep.tune.storage_watch every few seconds, and run_sweep once
        Tune has stopped). It writes nothing and is cheap; `preflight` is the thorough check before the start."""
        self.filesystem().get_file_info(self._path(self.uri))

    def reachable(self) -> bool:
        try:
            self.probe()
            return True
        except Exception:  # any failure to answer counts: unreachable
            return False

    def preflight(self) -> None:
        """The storage must exist and take a write (tried, then removed) before anything starts; each way it can
        fail is a StorageError saying the fix (a running sweep's storage is watched with `probe`)."""
        if self.remote:
            _preflight_s3(self.uri)
        else:
            _preflight_local(Path(self.uri))


def parse_storage(value: str | None) -> Storage:
    value = value or "results"
    if "://" not in value:
        return Storage(str(Path(value).expanduser().resolve()))
    parsed = urlparse(value)
    if parsed.scheme != "s3":
        raise StorageError(f"storage {value!r}: only local folders and s3://bucket/prefix are supported")
    if parsed.username or parsed.password or "@" in parsed.netloc:
        raise StorageError("storage URIs must not carry credentials: put them in the environment (AWS_ACCESS_KEY_ID, "
                        "AWS_SECRET_ACCESS_KEY, AWS_PROFILE) or use an instance profile")
    if len(parsed.netloc) < 3:
        raise StorageError(f"storage {value!r}: S3 bucket names have at least 3 characters")
    return Storage(f"s3://{parsed.netloc}{parsed.path.rstrip('/')}")


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _preflight_local(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise StorageError(f"storage {path} exists and is not a folder; pass --storage DIR")
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(f"storage {path} cannot be created: {probe} is a file; pass --storage DIR")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".medpeft-write-probe-"):
            pass
    except OSError as e:
        raise StorageError(f"storage {path} is not writable ({probe}: {e.strerror}); pass --storage DIR") from None


def _preflight_s3(uri: str) -> None:
    import boto3
    import botocore.exceptions as errors

    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    where = f" at {s3_endpoint()}" if s3_endpoint() else ""
    client = boto3.client("s3", config=boto3.session.Config(connect_timeout=5, read_timeout=10,
                                                            retries={"max_attempts": 2}))
    key = f"{prefix}/.medpeft-write-probe-{uuid.uuid4().hex}".lstrip("/")
    try:
        client.head_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except errors.NoCredentialsError:
        raise StorageError(f"storage {uri}: no AWS credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                        "AWS_PROFILE, or run where an instance profile grants S3 access") from None
    except errors.EndpointConnectionError as e:
        raise StorageError(f"storage {uri}: cannot reach S3{where} ({e}); check AWS_ENDPOINT_URL_S3 and the "
                        "network") from None
    except errors.ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket"):
            raise StorageError(f"storage {uri}: bucket {bucket!r} does not exist{where}; create it "
                            f"(aws s3 mb s3://{bucket}) or fix --storage") from None
        if code in ("403", "AccessDenied"):
            raise StorageError(f"storage {uri}: the credentials in use may not write to bucket {bucket!r}; grant "
                            "s3:PutObject/GetObject/DeleteObject/ListBucket on it") from None
        raise StorageError(f"storage {uri}: {code or e}") from None
