"""Bad input exits with code 2, a message naming the problem and the fix, and nothing created: no sweep folder, no
MLflow store, no manifest or image cache, nothing outside the storage.

Each case is one row of BAD: the launcher's arguments (written by a function that may first put files in the test's
folder) and what the error must say. A new check is a new row."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep.launch import main
from sweep.plan.spec import DEFAULT_SPEC
from tests.conftest import SHARED_DATA, needs_shared_data
from tests.dataset_layouts import write_image
from trainables.data import default_cache_dir

TINY = ["--set", "backbones=[{name: test_resnet, weights: random}]", "--set", "image_size=32"]


def _closed_port() -> int:
    """A port nothing listens on: the kernel's pick for a socket that is closed again at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CLOSED = _closed_port()


def _paths(root: Path, files_only: bool = False) -> set[Path]:
    return {p for p in root.rglob("*") if not files_only or p.is_file()} if root.exists() else set()


def refused(capsys, tmp_path: Path, *args: str) -> str:
    """Run the launcher on bad input: exit 2, no traceback, and nothing new in the test's folder (the storage, the
    default MLflow store and anything a sweep name could point to are in it) or in the data cache."""
    storage, cache = tmp_path / "store", default_cache_dir()
    before, cached = _paths(tmp_path), _paths(cache, files_only=True)
    code = main(["--storage", str(storage), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    assert _paths(tmp_path) == before, "bad input must not create anything"
    assert _paths(cache, files_only=True) == cached, "bad input must leave no manifest or image cache"
    return err


@dataclass(frozen=True)
class Bad:
    args: Callable[[Path], list[str]]  # the launcher's arguments, given the test's folder (where it may write data)
    says: tuple[str, ...]  # what the error must contain: the problem and the fix
    never_says: tuple[str, ...] = ()  # what would mislead


def _imagefolder(tmp_path: Path, classes: dict[str, int], corrupt: int = 0) -> list[str]:
    """An imagefolder with this many images per class (`corrupt` of the first class's are not PNGs at all)."""
    root = tmp_path / "folder"
    for c, (name, n) in enumerate(classes.items()):
        for i in range(n):
            write_image(root / name / f"{i}.png", 100 * c + i)
    for i in range(corrupt):
        (root / next(iter(classes)) / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return [*TINY, "--set", f"datasets=[{{name: imagefolder, root: {root}}}]"]


def _csv(tmp_path: Path, text: str) -> list[str]:
    root = tmp_path / "csv-data"
    root.mkdir()
    (root / "labels.csv").write_text(text)
    return [*TINY, "--set", f"datasets=[{{name: csv, root: {root}}}]"]


def _started_sweep(tmp_path: Path, *args: str, spec: Path = DEFAULT_SPEC, overrides: tuple[str, ...] = ()) -> list[str]:
    """A sweep 'quickstart' started from `spec` with `--set overrides` (its saved inputs), resumed with `args`
    (EDITED in them: the default spec with 8 epochs instead of 6, in a file of its own)."""
    folder = tmp_path / "store" / "quickstart"
    folder.mkdir(parents=True)
    from tests.conftest import load_spec

    (folder / "medpeft-sweep.json").write_text(json.dumps({
        "spec": load_spec(spec, list(overrides)).model_dump(mode="json"), "spec_path": str(spec),
        "overrides": list(overrides), "data_root": None, "mlflow_uri": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"}))
    edited = tmp_path / "edited.yaml"
    edited.write_text(DEFAULT_SPEC.read_text().replace("epochs: 6", "epochs: 8"))
    return ["--resume", *(a.replace("EDITED", str(edited)) for a in args)]


def _edited_since_started(tmp_path: Path) -> list[str]:
    """A sweep started from a spec file that was edited afterwards, resumed naming that same file."""
    mine = tmp_path / "mine.yaml"
    mine.write_text(DEFAULT_SPEC.read_text())
    args = _started_sweep(tmp_path, "--config", str(mine), spec=mine)
    mine.write_text(mine.read_text().replace("epochs: 6", "epochs: 8"))
    return args


BAD: dict[str, Bad] = {
    # The spec and the command line
    "a spec file that does not exist": Bad(lambda t: ["--config", str(t / "missing.yaml")], ("does not exist",)),
    "a misspelt spec key": Bad(lambda t: ["--set", "trian.epochs=3"], ("trian",)),
    "an unknown method": Bad(lambda t: [*TINY, "--set", "methods=[linear, lora_everything]"],
                             ("unknown method 'lora_everything'",)),
    "an unknown dataset": Bad(lambda t: [*TINY, "--set", "datasets=[{name: chestct3000}]"],
                              ("unknown dataset 'chestct3000'",)),
    "a method that does not fit the backbone": Bad(
        lambda t: ["--set", "backbones=[{name: test_vit, weights: random}]", "--set", "image_size=32",
                   "--set", "methods=[lora_conv]"], ("'lora_conv' does not fit backbone 'test_vit'", "cnn")),
    "an unknown backbone, whatever its weights": Bad(
        lambda t: ["--set", "backbones=[{name: resnet_fifty, weights: timm}]"],
        ("unknown model 'resnet_fifty'", "timm.list_models"), never_says=("Hugging Face cache", "offline")),
    "--name outside the storage": Bad(lambda t: [*TINY, "--name", "../escaped"],
                                      ("--name '../escaped'", "letters, digits", "--name my-sweep")),
    "--name with a path": Bad(lambda t: [*TINY, "--name", "a/b"], ("--name 'a/b'",)),
    # The search space and the scheduler
    "an LR range whose low is not below its high": Bad(
        lambda t: [*TINY, "--set", "search.spaces={linear: {lr: {low: 0.1, high: 0.01}}}"],
        ("low (0.1) must be smaller than high (0.01)",)),
    "a log range from zero": Bad(lambda t: [*TINY, "--set", "search.spaces={linear: {lr: {low: 0, high: 0.01}}}"],
                                 ("a log range needs low > 0",)),
    "a negative learning rate among the choices": Bad(
        lambda t: [*TINY, "--set", "search.spaces={bias: {lr: [0.01, -0.001]}}"],
        ("method 'bias': searched lr -0.001 is not a valid lr", "greater than 0", "search.spaces.bias.lr")),
    "a zero learning rate among the choices": Bad(
        lambda t: [*TINY, "--set", "search.spaces={linear: {lr: [0.0, 0.01]}}"],
        ("searched lr 0.0 is not a valid lr",)),
    "a linear LR range reaching below zero": Bad(
        lambda t: [*TINY, "--set", "search.spaces={linear: {lr: {low: -0.01, high: 0.01, log: false}}}"],
        ("searched lr -0.01 is not a valid lr",)),
    "a halving rung after the last epoch": Bad(
        lambda t: [*TINY, "--set", "scheduler.grace_period=8"],
        ("scheduler.grace_period (8) must be smaller than train.epochs (6)", "scheduler.type: fifo")),
    "a halving rung at the last epoch": Bad(lambda t: [*TINY, "--set", "train.epochs=2"],
                                            ("scheduler.grace_period (2) must be smaller than train.epochs (2)",)),
    # Data
    "a --data-root that does not exist": Bad(lambda t: [*TINY, "--data-root", str(t / "nowhere")],
                                             ("nowhere (--data-root", "does not exist")),
    "a dataset missing from the data root": Bad(
        lambda t: [*TINY, "--data-root", str(t),
                   "--set", "datasets=[{name: medmnist, options: {subset: dermamnist, download: false}}]"],
        ("dermamnist", "not found", "--data-root")),
    "a data fraction that leaves a class without training images": Bad(
        lambda t: [*TINY, "--set", "fractions=[1.0, 0.001]"],
        ("data fraction 0.001 leaves class", "without training images", "use fractions of at least")),
    "an empty CSV": Bad(lambda t: _csv(t, ""), ("labels.csv is empty", "header row")),
    "a CSV with only its header": Bad(lambda t: _csv(t, "path,label\n"), ("lists no images", "add one row per image"),
                                      never_says=("split is empty",)),
    "an imagefolder of one class": Bad(lambda t: _imagefolder(t, {"benign": 12}),
                                       ("has 1 class (benign)", "two or more")),
    "a class too small to reach every split": Bad(lambda t: _imagefolder(t, {"benign": 12, "malignant": 2}),
                                                  ("has no images of class(es) malignant", "train, val and test")),
    "an image that cannot be decoded": Bad(lambda t: _imagefolder(t, {"benign": 12, "malignant": 12}, corrupt=1),
                                           ("1 images could not be decoded", "0.png", "on_corrupt: skip")),
    # Where the sweep runs and writes
    "an unwritable storage": Bad(lambda t: [*TINY, "--storage", "/proc/sys/medpeft-results"],
                                 ("storage /proc/sys/medpeft-results is not writable", "--storage DIR"),
                                 never_says=("--mlflow-uri",)),
    "a tracking URI MLflow cannot open": Bad(lambda t: [*TINY, "--mlflow-uri", "foo://bar"],
                                             ("cannot track to 'foo' URIs", "sqlite:///", "http://HOST:PORT")),
    "a tracking server that does not answer": Bad(lambda t: [*TINY, "--mlflow-uri", f"http://127.0.0.1:{CLOSED}"],
                                                  ("no MLflow tracking server answers",)),
    "a tracking database that does not answer": Bad(
        lambda t: [*TINY, "--mlflow-uri", f"postgresql+psycopg2://sweeper@127.0.0.1:{CLOSED}/mlflow"],
        (f"no database answers at 127.0.0.1:{CLOSED}", "fix the host and port")),
    "a Ray address with no Ray there": Bad(lambda t: [*TINY, "--address", f"127.0.0.1:{CLOSED}"],
                                           (f"--address '127.0.0.1:{CLOSED}'", "no Ray cluster answers",
                                            "ray start --head")),
    "a Ray address that is not HOST:PORT": Bad(lambda t: [*TINY, "--address", "headnode"],
                                               ("--address 'headnode'", "HOST:PORT")),
    "more GPUs per trial than this machine has": Bad(
        lambda t: [*TINY, "--set", "resources={gpus_per_trial: 2, num_gpus: 0}"],
        ("need 1 CPUs and 2 GPUs per worker", "offers", "0 GPUs")),
    "more CPUs per trial than this machine has": Bad(
        lambda t: [*TINY, "--set", "resources={cpus_per_trial: 64, num_cpus: 2}"], ("64 CPUs", "2 CPUs")),
    # Resuming
    "--resume of a sweep that does not exist": Bad(lambda t: ["--resume"], ("no sweep 'quickstart'",)),
    "--resume with --set": Bad(lambda t: _started_sweep(t, "--set", "train.epochs=8"),
                               ("--set cannot change a sweep on --resume",)),
    "--resume with another --config": Bad(lambda t: _started_sweep(t, "--config", "EDITED"),
                                          ("cannot change a sweep on --resume", "was started with",
                                           "Leave --config out")),
    "--resume to a tracking database that does not answer": Bad(
        lambda t: _started_sweep(t, "--mlflow-uri", f"postgresql+psycopg2://sweeper@127.0.0.1:{CLOSED}/mlflow"),
        (f"no database answers at 127.0.0.1:{CLOSED}", "fix the host and port")),
    "--resume with its spec file edited since": Bad(_edited_since_started,
                                                    ("mine.yaml cannot change a sweep on --resume",
                                                     "as it was then (the file has changed since)",
                                                     "Leave --config out")),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_input_is_refused_before_anything_is_created(case: Bad, capsys, tmp_path):
    err = refused(capsys, tmp_path, *case.args(tmp_path))
    for text in case.says:
        assert text in err
    for text in case.never_says:
        assert text not in err


@pytest.mark.parametrize("started", ["the same file", "an identical copy", "the same file with --set"])
def test_resume_with_the_spec_it_was_started_with_is_not_refused_for_it(started, capsys, tmp_path):
    """Naming the spec it was started with again is no change (the checks above refuse only another spec, or the
    same file edited since): as the same file, as a copy of it elsewhere, or the file a --set was applied to."""
    copy = tmp_path / "copy.yaml"
    copy.write_text(DEFAULT_SPEC.read_text())
    given = copy if started == "an identical copy" else DEFAULT_SPEC
    overrides = ("train.epochs=8",) if started.endswith("--set") else ()
    args = _started_sweep(tmp_path, "--config", str(given), "--dry-run", overrides=overrides)
    assert main(["--storage", str(tmp_path / "store"), *args]) == 0, capsys.readouterr().err
    expected_epochs = 8 if overrides else 6  # the sweep as it was started: 8 cells x 3 trials x its epochs
    assert f"at most {24 * expected_epochs} trial-epochs" in capsys.readouterr().out


def test_existing_sweep_name_without_resume_is_refused(capsys, tmp_path):
    storage = tmp_path / "store"
    (storage / "quickstart").mkdir(parents=True)
    (storage / "quickstart" / "tuner.pkl").write_bytes(b"x")
    code = main(["--storage", str(storage), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "already exists" in err and "--resume" in err
    assert sorted(p.name for p in storage.rglob("*")) == ["quickstart", "tuner.pkl"]  # untouched


@needs_shared_data
def test_dry_run_prints_the_grid_and_creates_nothing(capsys, tmp_path):
    storage = tmp_path / "store"
    code = main(["--storage", str(storage), "--dry-run", "--data-root", str(SHARED_DATA)])
    out = capsys.readouterr().out
    assert code == 0 and not storage.exists()
    assert "8 cells, 24 trials" in out and "cls/breastmnist/tf_efficientnet_lite0/lora_conv/frac=0.5/seed=0" in out
    assert "trial-epochs" in out


@needs_shared_data
def test_dry_run_with_synchronous_halving_counts_its_epochs_and_warns_about_tpe(capsys, tmp_path):
    code = main(["--storage", str(tmp_path / "store"), "--dry-run", "--data-root", str(SHARED_DATA),
                 "--set", "scheduler.type=halving", "--set", "search.sampler=tpe"])
    out = capsys.readouterr().out
    # 8 cells of 3 trials, 6 epochs, one rung at 2 (reduction 3): 3 x 2 + 1 x 4 = 10 trial-epochs per cell.
    assert code == 0 and "at most 144 trial-epochs; 80 with synchronous halving (rungs at epochs 2)" in out
    assert "TPE learns nothing" in out


@pytest.mark.parametrize("where", ["sweep.plan.datasets.prepare_data", "sweep.tune.run.run_sweep"])
def test_ctrl_c_before_the_first_trial_says_what_to_do_without_a_traceback(where, monkeypatch, capsys, tmp_path):
    """Ctrl-C while the data is read (nothing of the sweep exists: run it again) or while Ray starts (its inputs are
    saved: --resume starts it); Tune itself handles one during the sweep."""
    import importlib

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    module, name = where.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    spec = tmp_path / "sim.yaml"
    spec.write_text("name: sim\ntask: simulated\ndatasets: [{name: synthetic, id: a}]\n"
                    "backbones: [{name: test_resnet, weights: random}]\nmethods: [full]\nimage_size: 16\n"
                    "train: {epochs: 1, epoch_seconds: 0.01}\nscheduler: {type: fifo}\nresources: {cpus_per_trial: 0.5}\n")
    code = main(["--config", str(spec), "--storage", str(tmp_path / "store")])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err, err
    if name == "prepare_data":
        assert "no sweep was started; run the same command again" in err
    else:
        assert f"--name sim --storage {tmp_path / 'store'} --resume" in err
