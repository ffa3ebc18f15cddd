"""The configuration one trial receives: a plain JSON-able dict, validated here.

`sweep/` builds these dicts (one per trial) and never passes anything else, so a trial can be rerun from its
MLflow params or its Tune `params.json` alone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    name: str
    id: str | None = None  # how the sweep spec calls it (tags and reports); default: the name
    root: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    image_size: int = Field(224, ge=8)
    # The split: official where the dataset has one, else stratified/grouped with this seed and these shares.
    split_seed: int = 0
    val_share: float = Field(0.1, ge=0.0, lt=1.0)
    test_share: float = Field(0.2, gt=0.0, lt=1.0)
    on_corrupt: Literal["error", "skip"] = "error"
    on_duplicate: Literal["error", "drop"] = "error"
    # Fractions are of a fixed stratified subset of this many training images (chosen with split_seed).
    max_train_images: int | None = Field(None, ge=2)
    cache_dir: str | None = None
    # The manifest and image cache the sweep's driver prepared: {"manifest", "images"} file names, the source's
    # description, and "remote" (the storage's cache folder, from which nodes without them download them).
    prepared: dict[str, Any] | None = None
    # Set when the sweep fell back to the synthetic dataset because the real one was missing.
    fallback_from: str | None = None


class BackboneConfig(_Strict):
    name: str
    weights: str = "default"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None  # how the sweep spec calls it (tags and reports); default: the name

    @property
    def key(self) -> str:
        return self.id or self.name


class MethodConfig(_Strict):
    name: str
    knobs: dict[str, Any] = Field(default_factory=dict)
    bn_mode: Literal["train", "eval"] | None = None
    id: str | None = None  # how the sweep spec calls it (tags and reports); default: the name

    @property
    def key(self) -> str:
        return self.id or self.name


class ResourcesConfig(_Strict):
    cpus: float = Field(1.0, gt=0.0)
    gpus: float = Field(0.0, ge=0.0)
    num_workers: int = Field(1, ge=1)


class TrackingConfig(_Strict):
    uri: str | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    sweep: str = "adhoc"
    cell_key: str = "adhoc"
    trial_key: str = "adhoc/trial=0"
    tags: dict[str, str] = Field(default_factory=dict)


class TrialConfig(_Strict):
    task: str = "classification"
    seed: int = 0
    data: DataConfig
    backbone: BackboneConfig
    method: MethodConfig
    # Task-specific training settings, validated by the task's own schema (see trainables.tasks).
    train: dict[str, Any] = Field(default_factory=dict)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # The sweep's folder (path or URI): trials keep checkpoints under <storage>/checkpoints, multi-worker trials
    # their Train runs under <storage>/train. None: no checkpoints (a trial cannot resume).
    storage: str | None = None
    # The hyperparameters the searcher chose for this trial, by their search-space names.
    searched: dict[str, Any] = Field(default_factory=dict)
