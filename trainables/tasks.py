"""The interface `sweep/` uses to know a task: its worker function, the schema of its `train:` section, the
backbone families it trains, how to check a backbone/method pair without training, and which metrics it reports.
Nothing else of trainables is needed to plan or run a sweep.

What a task's trials report, and the rule its trials are ranked by, are the contract in trainables/contract.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from trainables.contract import TEST_ACC, VAL_BEST_ACC, Selection, test_metric, val_best


@dataclass(frozen=True)
class Task:
    name: str
    short: str  # prefix of cell keys, e.g. "cls"
    worker: Callable[[dict[str, Any]], None]
    train_schema: type[BaseModel]
    families: tuple[str, ...]  # backbone families the task trains
    selection: Callable[[BaseModel], Selection]
    # (backbone, method, knobs, bn_mode, image_size, weights=..., **backbone kwargs) -> PreparedModel, built without
    # weights; raises MethodError when the method does not fit
    probe: Callable[..., Any]
    check_weights: Callable[[str, str, dict], str]  # (backbone, weights, kwargs) -> resolved source; WeightsError
    needs_captions: bool = False  # trains on image-caption pairs: datasets are checked for them before any trial
    needs_classes: bool = False  # classifies: datasets need two classes or more, each in every split

    def max_epochs(self, train: BaseModel) -> int:
        return int(train.epochs)


def _classification() -> Task:
    from trainables.backbones import check_weights
    from trainables.classification import ClassificationTrain, train_loop_per_worker
    from trainables.probe import probe

    return Task("classification", "cls", train_loop_per_worker, ClassificationTrain, ("vit", "cnn"),
                lambda t: Selection(val_best(t.select_metric), test_metric(t.select_metric)), probe,
                lambda name, weights, kwargs: check_weights(name, weights), needs_classes=True)


def _simulated() -> Task:
    from trainables.backbones import check_weights
    from trainables.probe import probe
    from trainables.simulated import SimulatedTrain, train_loop_per_worker

    return Task("simulated", "sim", train_loop_per_worker, SimulatedTrain, ("vit", "cnn"),
                lambda t: Selection(VAL_BEST_ACC, TEST_ACC), probe,
                lambda name, weights, kwargs: check_weights(name, weights))


def _text_to_image() -> Task:
    from trainables import diffusion_models
    from trainables.text_to_image import SELECTION, TextToImageTrain, train_loop_per_worker

    return Task("t2i", "t2i", train_loop_per_worker, TextToImageTrain, ("unet",), lambda t: SELECTION,
                diffusion_models.probe, diffusion_models.check_weights, needs_captions=True)


_TASKS: dict[str, Callable[[], Task]] = {"classification": _classification, "simulated": _simulated,
                                         "t2i": _text_to_image}


def get_task(name: str) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(sorted(_TASKS))}")
    return _TASKS[name]()


def list_tasks() -> list[str]:
    return sorted(_TASKS)
