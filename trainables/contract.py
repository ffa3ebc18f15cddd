"""The contract between a trial and the sweep's driver, in one place: what a trial reports to Tune every epoch,
the tags and statuses its MLflow run carries, the run record the report reads back (params, tags, metrics,
artifact, and the tags and metrics the driver writes on cell runs), the exception a trial ends with when its node
is drained, the rule its cell's trials are ranked by, and when a trial had not converged.

Both sides use these names (trainables/ writes them, sweep/ reads them), so a misspelt key is an AttributeError
at import instead of a rung that waits for ever. This module imports nothing of ours: anything may import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

# -- what a trial reports to Tune each epoch -------------------------------------------------------------------

EPOCH = "epoch"  # epochs completed: the time attribute of the per-cell schedulers
# The task's selection metric oriented so that higher is better (the best-so-far validation score the task is
# chosen on: val/best_f1 for classification, minus the best validation denoising loss for text-to-image): the
# searcher and the schedulers compare trials on it, whatever the task.
SCORE = "score"
VAL_BEST_LOSS = "val/best_loss"  # best validation loss so far: breaks ties in SCORE
FAILED = "failed"  # 1 on the report of a trial that ended as failed (diverged); SCORE is NaN there
FAILURE_REASON = "failure_reason"  # why, on that report (and as a tag of its run)
REPLAYED = "replayed"  # 1: an earlier attempt's report, replayed from MLflow after a restore (nothing trained)
REPLAYED_STOPPED_EARLY = "replayed_stopped_early"  # 1 on the last replayed report of an attempt stopped early
RUN_ID = "mlflow_run_id"  # the trial's MLflow run: the driver marks a trial it stops without searching for it
# Images in the validation split SCORE is measured on: how far that score moves by chance (score_tolerance). A
# task without a fixed validation split (text-to-image, simulated) does not report it.
VAL_IMAGES = "val_images"


# -- the trial's MLflow run -----------------------------------------------------------------------------------

ROLE_TAG = "role"  # "sweep", "cell" or "trial": what a run of the sweep's experiment stands for
STATUS_TAG = "status"  # a trial run's Status
TRIAL_KEY_TAG = "trial_key"  # a trial run's key: <cell key>/trial=<index>, found again by it after a restart
CELL_KEY_TAG = "cell_key"
# A trial's search round within its cell (0: the planned one; later ones widen the learning-rate range or run the
# chosen configuration longer), and the round's kind ("initial", "high", "low" or "doubling"). The driver puts them
# in the trial's config (tracking.tags), so the trial's run carries them and the schedulers read them there.
ROUND_TAG = "round"
ROUND_KIND_TAG = "round_kind"
ROUND_DOUBLING = "doubling"  # a round whose one trial runs longer than max_t: no scheduler stops it


# -- the run record: what the report reads back from a trial's (and a cell's) MLflow run -----------------------

# Params of a trial run (trainables/trial.py run_params; trainables/simulated.py writes the same keys).
SELECTION_VAL_PARAM = "selection.val"  # the metric the cell's trials are chosen on (a validation metric name)
SELECTION_TEST_PARAM = "selection.test"  # the test metric reported beside it
SELECTION_TEST_HIGHER_PARAM = "selection.test_higher_is_better"
TRAINABLE_PARAMS_PARAM = "trainable_params"
TOTAL_PARAMS_PARAM = "total_params"
TRAINABLE_SHARE_PARAM = "trainable_share"
BN_MODE_PARAM = "method.bn_mode"  # how the method treats BatchNorm statistics
EPOCHS_PARAM = "train.epochs"
WORKERS_PARAM = "resources.num_workers"
CPUS_PARAM = "resources.cpus"
GPUS_PARAM = "resources.gpus"


def counts_param(split: str) -> str:
    """The param holding a split's images per class (a JSON list): the trivial classifier's scores come from it."""
    return f"data.counts_{split}"


def split_size_param(split: str) -> str:
    """The param holding a split's number of images (after the fraction and max_train_images for `train`)."""
    return f"data.n_{split}"


COUNTS_VAL_PARAM = counts_param("val")
COUNTS_TEST_PARAM = counts_param("test")
SPLIT_SIZE_PARAMS = tuple(split_size_param(s) for s in ("train", "val", "test"))
DATA_SOURCE_PARAM = "data.source"  # what data was really read (a synthetic fallback names itself here)
CLASSES_PARAM = "data.classes"  # how many classes the dataset has
WEIGHTS_PARAM = "backbone.weights"  # which pretrained weights the backbone started from (file and hash, or random)
# Every searched value, every train: setting and every method knob, as "<prefix><name>".
SEARCHED_PREFIX = "searched."
TRAIN_PREFIX = "train."
METHOD_PREFIX = "method."
BUDGET_PARAM = "budget"  # a cell run's: its planned trials
SWEEP_CELLS_PARAM = "cells"  # the sweep's parent run's: the cells planned at its start (adaptive seeds add more)

# Tags of trial and cell runs: the fields of the cell a run belongs to (reports group by them).
CELL_FIELD_TAGS = ("task", "dataset", "backbone", "method", "fraction", "seed")
# The last field, SEED_TAG, is a cell's seed: adaptive seeds add cells that differ from a planned one only there.
TASK_TAG, DATASET_TAG, BACKBONE_TAG, METHOD_TAG, FRACTION_TAG, SEED_TAG = CELL_FIELD_TAGS
DATA_FALLBACK_TAG = "data_fallback"  # on runs that trained on synthetic data because the real data was absent
# Tags of a trial run's attempt: the Ray node it ran on, and the epoch it resumed after (absent on a fresh start).
NODE_TAG = "node"
RESUMED_FROM_TAG = "resumed_from_epoch"

# Tags of a cell run, written by the driver (trials never write them): its search rounds as they went
# (sweep/tune/rounds.py describes them, written as each round ends) ...
SEARCH_TAG = "search"  # the rounds, in words
SEARCH_ROUNDS_TAG = "search_rounds"  # how many rounds ran
SEARCH_RANGES_TAG = "search_ranges"  # each round's learning rates, lowest..highest
SEARCH_EDGE_TAG = "search_edge"  # how the learning-rate range ended (sweep/tune/rounds.py EDGE_KINDS; "" until then)
SEARCH_NOTE_TAG = "search_note"  # why the rounds stopped where they did
SEARCH_KNOB_EDGES_TAG = "search_knob_edges"  # the other searched knobs at an edge of what the cell tried
# ... and its outcome, once the sweep (or the report) read it back (sweep/report/outcome.py: MLflow's compare
# view answers "which method won here" from these alone).
COMPLETE_TAG = "complete"  # "true" once every planned trial of the cell ended
CHOSEN_TRIAL_TAG = "chosen_trial"  # the chosen trial's key
CHOSEN_TAG = "chosen"  # its searched values, as text
LEARNED_TAG = "learned"  # whether the cell beat the trivial classifier (sweep.results.cell_outcome's words)
NOT_CONVERGED_TAG = "not_converged"  # "true" where the chosen trial's validation score was still rising
LR_AT_EDGE_TAG = "lr_at_edge"  # which edge of its range the chosen learning rate sits at, or "no"
KNOBS_AT_EDGE_TAG = "knobs_at_edge"  # the chosen trial's other searched knobs at an edge, or "no"
# Its metrics: the chosen trial's validation and test scores, learning rate, and the trivial classifier's scores.
CELL_VAL_METRIC = "val"
CELL_TEST_METRIC = "test"
CHOSEN_LR_METRIC = "chosen_lr"
TRIVIAL_VAL_METRIC = "trivial_val"
TRIVIAL_TEST_METRIC = "trivial_test"
# A trial run's tag, from the same read-back: "true" on each cell's chosen trial, "false" on its other ended ones.
BEST_IN_CELL_TAG = "is_best_in_cell"

# Metrics of a trial run (besides the report keys above, logged every epoch).
TEST_PREFIX = "test/"  # every test metric: test/<name>, logged with the last epoch


def test_metric(name: str) -> str:
    """'acc' -> 'test/acc'."""
    return TEST_PREFIX + name


def val_best(name: str) -> str:
    """'acc' -> 'val/best_acc': the best-so-far validation value of a metric, the one a trial is chosen on."""
    return f"val/best_{name}"


VAL_BEST_ACC = val_best("acc")
TEST_ACC = test_metric("acc")
# A classifier's test metrics the report's table keeps a column for (others are kept too, by their prefix).
TEST_METRICS = tuple(test_metric(m) for m in ("f1", "acc", "balanced_acc", "auroc", "mcc", "loss"))
TEST_LOSS = test_metric("loss")
TRAIN_LOSS = "train/loss"  # mean training loss of the epoch
PEAK_MEM = "sys/peak_mem_mb"  # the trial's peak device (or process) memory

class NodeDraining(RuntimeError):
    """The node a trial's attempt runs on is being drained (a cloud's preemption notice): the attempt ends right
    after checkpointing and reporting an epoch, and the trial continues from that checkpoint on another node. The
    trial raises it; the driver (sweep/tune/callbacks.py) does not count it as a failure."""


class Status(StrEnum):
    """How a trial's run stands. A status is a plain string in MLflow and in tables (StrEnum compares equal)."""

    RUNNING = "running"  # training, or interrupted (a restart resumes it)
    FINISHED = "finished"  # ran every epoch
    STOPPED_EARLY = "stopped_early"  # stopped by its cell's scheduler at a rung
    FAILED = "failed"  # diverged, or raised past its retries


ENDED = (Status.FINISHED, Status.STOPPED_EARLY, Status.FAILED)  # a trial in one of these is done for the sweep


# -- the per-image predictions a trial leaves -------------------------------------------------------------------

# A classification trial that runs to its last epoch logs, with its best-validation weights, one row per image of
# its validation and test splits as this Parquet artifact of its run, so every score the report states (and the
# bootstrap over test images) can be recomputed. Columns: PRED_SPLIT ("val" or "test"), PRED_ROW (the image's row
# in the dataset's manifest), PRED_GROUP (patient or lesion id; "" where the split has none), PRED_LABEL (the true
# class index), and PRED_PROB_PREFIX + str(c) for every class c (the softmax probabilities; they sum to 1).
PREDICTIONS_ARTIFACT = "predictions.parquet"
PRED_SPLIT = "split"
PRED_ROW = "row"
PRED_GROUP = "group"
PRED_LABEL = "label"
PRED_PROB_PREFIX = "prob_"

# The run record's names that say by their form that they are a run's keys: nothing in sweep/ or trainables/
# writes them as a string literal but this module (tests/test_architecture.py checks; it also refuses any literal
# key where a run's tags, params or metrics are read or written, which covers the plainer names above).
RUN_RECORD_KEYS = (
    SELECTION_VAL_PARAM, SELECTION_TEST_PARAM, SELECTION_TEST_HIGHER_PARAM, BN_MODE_PARAM, EPOCHS_PARAM,
    WORKERS_PARAM, CPUS_PARAM, GPUS_PARAM, COUNTS_VAL_PARAM, COUNTS_TEST_PARAM, *SPLIT_SIZE_PARAMS, DATA_SOURCE_PARAM,
    CLASSES_PARAM, WEIGHTS_PARAM, SEARCHED_PREFIX, TRAIN_PREFIX, METHOD_PREFIX, VAL_BEST_ACC, TEST_PREFIX,
    *TEST_METRICS, TRAIN_LOSS, PEAK_MEM, VAL_BEST_LOSS, PREDICTIONS_ARTIFACT,
)


# -- which trial of a cell is best -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What a task's trials are chosen on (validation) and reported with (test), and which way is better."""

    val: str  # e.g. "val/best_acc"
    test: str  # e.g. "test/acc"
    test_higher_is_better: bool = True


def selection_order(score: float | None, best_loss: float | None, trial_key: str) -> tuple[float, float, str]:
    """The rule a cell's trials are ranked by, at every rung of successive halving and in the final choice of the
    cell's trial: sort ascending on this key and the best comes first. Higher SCORE first; ties (common after one
    epoch on a small validation set) go to the lower VAL_BEST_LOSS, then to the lower trial key, so the choice
    never depends on the order trials ended in. A missing or non-finite value ranks last."""
    return -_finite(score, -math.inf), _finite(best_loss, math.inf), trial_key


def _finite(value: float | None, otherwise: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return otherwise
    return value if math.isfinite(value) else otherwise


# -- when a trial had not converged ----------------------------------------------------------------------------

# SCORE values (accuracy, F1 ... in [0, 1]) closer than this are equal: one point, about the sampling noise of a
# validation set of a few thousand images. A spec's search.flat_tolerance replaces it; a smaller validation set
# raises it (score_tolerance).
SCORE_TOLERANCE = 0.01


def score_tolerance(score: float | None, images: int | None, floor: float = SCORE_TOLERANCE) -> float:
    """The least difference between two validation scores (SCORE units) that says more than chance: one standard
    error of a proportion-like score `score` measured on `images` validation images, sqrt(s(1-s)/n), or `floor`
    where that is larger, or the images or the score are not known.

    On 39 validation images (BUSI) a score of 0.7 moves by 0.073 when the validation set is drawn again; a rise of
    0.02 over a trial's last epochs, or a 0.03 gap between two learning rates, is then one or two images, not a
    trend (with a fixed 0.01, 22% of the first CNN study's chosen trials were "still improving" and its flat ranges
    read as edges). One standard error, not a 95% margin: what it decides is whether to spend one more round (train
    longer, search further), where a missed trend costs more than a round run for nothing."""
    if images is None or score is None or not images > 0 or not math.isfinite(float(score)):
        return floor
    s = min(max(float(score), 0.0), 1.0)
    return max(floor, math.sqrt(s * (1.0 - s) / float(images)))


def still_improving(scores: Mapping[int, float] | Sequence[float], tolerance: float = SCORE_TOLERANCE,
                    higher_is_better: bool = True) -> bool:
    """Whether a trial had not converged, the one definition both sides use: the driver's search rounds run such a
    chosen trial again with twice the epochs (sweep/tune/rounds.py), the report marks it † (sweep/report).

    The definition (the Deep Learning Tuning Playbook's "are the trials still improving at the end of training?",
    asked of the metric the trial is chosen on): the trial's best-so-far validation score (`scores`: SCORE, one
    value per epoch, by epoch or in epoch order) rose by more than `tolerance` over its last fifth of epochs (at
    least its last two). Both sides pass score_tolerance of the trial's best score and validation images, so one
    image more right on a small validation set is not "still improving". The best-so-far, not the last value: a
    dip at the end is not progress, and a score that went up and came back did converge. Fewer than three epochs cannot tell a trend from one step: not judged
    (False). Epochs with no finite score (a diverged report) are left out."""
    ordered = [scores[e] for e in sorted(scores)] if isinstance(scores, Mapping) else list(scores)
    sign = 1.0 if higher_is_better else -1.0
    values = [sign * float(v) for v in ordered if v is not None and math.isfinite(float(v))]
    if len(values) < 3:
        return False
    best = [max(values[: i + 1]) for i in range(len(values))]
    back = max(2, math.ceil(len(values) / 5))
    return best[-1] - best[-1 - back] > tolerance
