"""The interface `sweep/` uses to know a task: its worker function, the schema of its `train:` section, and what
the scheduler watches. Nothing else of trainables is needed to plan or run a sweep."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class Task:
    name: str
    short: str  # prefix of cell keys, e.g. "cls"
    worker: Callable[[dict[str, Any]], None]
    train_schema: type[BaseModel]
    families: tuple[str, ...]  # backbone families the task trains
    metric_template: str  # the per-epoch metric the scheduler and searcher compare, e.g. "val/best_{select}"
    mode: str  # "max" or "min"

    def objective(self, train: BaseModel) -> str:
        return self.metric_template.format(select=getattr(train, "select_metric", ""))

    def max_epochs(self, train: BaseModel) -> int:
        return int(train.epochs)


def _classification() -> Task:
    from trainables.classification import ClassificationTrain, train_loop_per_worker

    return Task("classification", "cls", train_loop_per_worker, ClassificationTrain, ("vit", "cnn"),
                "val/best_{select}", "max")


def _simulated() -> Task:
    from trainables.simulated import SimulatedTrain, train_loop_per_worker

    return Task("simulated", "sim", train_loop_per_worker, SimulatedTrain, ("vit", "cnn"), "val/best_{select}", "max")


_TASKS: dict[str, Callable[[], Task]] = {"classification": _classification, "simulated": _simulated}


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]()


def list_tasks() -> list[str]:
    return sorted(_TASKS)
