"""MLflow logging from a trial's rank-0 worker, with a deterministic run identity.

A trial's run is found by its `trial_key` tag before one is created, so a restarted trial appends to its own run
instead of opening a second one (what Ray's MLflowLoggerCallback does after `Tuner.restore`). Three cases:

- no run yet: create it under the cell's run and log every param once (params are immutable in MLflow);
- a run exists and we resume from a checkpoint: append to it;
- a run exists but we start from scratch: it belongs to an attempt that left no checkpoint (the driver died
  before recording the trial), and is deleted; a fresh run is created.

Either way, if that run had already ended with the same config (finished, stopped early, or diverged), the loop
replays its metrics instead of training again: the sweep sees the same outcome as before the driver died.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from typing import Any

from trainables.config import TrackingConfig
from trainables.contract import (
    CELL_KEY_TAG,
    EPOCH,
    FAILURE_REASON,
    ROLE_TAG,
    STATUS_TAG,
    TRIAL_KEY_TAG,
    Status,
)

# How an earlier attempt ended, when that is a result: an attempt that reached one is replayed, never trained
# again. (A crash is not one: the trial is retried.) A diverged run's status is `failed`, its kind "diverged".
DIVERGED = "diverged"
REPLAYABLE = (Status.FINISHED, Status.STOPPED_EARLY, DIVERGED)
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000


def config_hash(config: dict[str, Any]) -> str:
    """Hash of what a trial trains (not where it logs or stores): two attempts of the same trial share it."""
    relevant = {k: v for k, v in config.items() if k not in ("tracking", "storage")}
    return hashlib.sha1(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


class TrialRun:
    """Where a trial's params, metrics and status go. `NullRun` stands in when tracking is off or rank != 0."""

    def __init__(self, client, run_id: str, ended: str | None = None, logged_steps: set[int] | None = None,
                 failure_reason: str = ""):
        self.client, self.run_id = client, run_id
        self.ended, self.failure_reason = ended, failure_reason  # how an earlier attempt ended (see REPLAYABLE)
        # Epochs an earlier attempt already logged: a resumed trial redoes at most the epoch after its last
        # checkpoint, identically (seeded per epoch), and its metrics are not logged twice.
        self.logged_steps = logged_steps or set()

    @classmethod
    def open(
        cls,
        tracking: TrackingConfig,
        params: dict[str, Any],
        tags: dict[str, str],
        digest: str,
        resuming: bool,
    ) -> TrialRun:
        from mlflow import MlflowClient

        client = MlflowClient(tracking.uri)
        existing = find_run(client, tracking.experiment_id, TRIAL_KEY_TAG, tracking.trial_key)
        if existing is not None:
            tags_now = existing.data.tags
            same_config = tags_now.get("config_hash") == digest
            outcome = tags_now.get(STATUS_TAG)
            if outcome == Status.FAILED and tags_now.get("failure_kind") == DIVERGED:
                outcome = DIVERGED
            ended = outcome if outcome in REPLAYABLE else None
            run_id = existing.info.run_id
            if same_config:
                steps = {int(m.step) for m in client.get_metric_history(run_id, EPOCH)}
                if ended in (Status.FINISHED, Status.STOPPED_EARLY) and not steps:
                    ended = None  # stopped before it logged an epoch (the driver's mark): nothing to replay
                if resuming or ended:
                    if not ended:
                        client.set_tag(run_id, STATUS_TAG, Status.RUNNING)
                    return cls(client, run_id, ended, steps, tags_now.get(FAILURE_REASON, ""))
            client.delete_run(run_id)
        run_tags = {
            **tracking.tags,
            **tags,
            TRIAL_KEY_TAG: tracking.trial_key,
            CELL_KEY_TAG: tracking.cell_key,
            "sweep": tracking.sweep,
            ROLE_TAG: "trial",
            "config_hash": digest,
            STATUS_TAG: Status.RUNNING,
        }
        if tracking.parent_run_id:
            run_tags["mlflow.parentRunId"] = tracking.parent_run_id
        run = client.create_run(tracking.experiment_id, tags=run_tags, run_name=tracking.trial_key)
        run_id = run.info.run_id
        _log_params(client, run_id, params)
        return cls(client, run_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        if step in self.logged_steps:
            return
        self.logged_steps.add(step)
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)]
        for i in range(0, len(entries), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[i : i + MAX_METRICS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)

    def finish(self, status: Status, reason: str | None = None, kind: str | None = None) -> None:
        tags = {STATUS_TAG: status}
        if reason:
            tags[FAILURE_REASON] = reason[:5000]
        if kind:
            tags["failure_kind"] = kind
        self.set_tags(tags)
        self.client.set_terminated(self.run_id, "FAILED" if status == Status.FAILED else "FINISHED")

    def history(self) -> dict[int, dict[str, float]]:
        """Every logged metric by step (epoch): what a replay reports again."""
        run = self.client.get_run(self.run_id)
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        for key in run.data.metrics:
            for m in self.client.get_metric_history(self.run_id, key):
                by_step[m.step][key] = m.value
        return dict(sorted(by_step.items()))


class NullRun(TrialRun):
    def __init__(self) -> None:
        super().__init__(client=None, run_id="")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        pass

    def finish(self, status: Status, reason: str | None = None, kind: str | None = None) -> None:
        pass

    def history(self) -> dict[int, dict[str, float]]:
        return {}


def open_trial_run(
    tracking: TrackingConfig,
    rank: int,
    params: dict[str, Any],
    tags: dict[str, str],
    digest: str,
    resuming: bool,
) -> TrialRun:
    if rank != 0 or not tracking.uri or not tracking.experiment_id:
        return NullRun()
    return TrialRun.open(tracking, params, tags, digest, resuming)


def find_run(client, experiment_id: str, tag: str, value: str):
    """The active run of an experiment whose tag equals value, or None."""
    escaped = value.replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.{tag} = '{escaped}'", max_results=2, order_by=["attributes.start_time ASC"]
    )
    return runs[0] if runs else None


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    entries = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
    for i in range(0, len(entries), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=entries[i : i + MAX_PARAMS_PER_BATCH])
