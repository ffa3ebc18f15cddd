"""The package as users install it: a wheel built from the checkout, installed (not editable) into a fresh virtual
environment, run from a folder outside the checkout. Editable installs (`make`, Docker, the cluster setup) read the
checkout itself and hide a module or data file the wheel forgot; this is where that shows.

Offline: the wheel is built with this environment's setuptools (no build isolation) and installed without its
dependencies, which the new environment takes from this one (a path line in a .pth file: the directories are
added to sys.path, their own .pth files, among them the editable install's finder, are not run)."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from sweep.cli import COMMANDS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sweep", "trainables", "search_spaces")  # what the wheel ships; bench/ and tests/ need the checkout
DATA_SUFFIXES = (".yaml", ".csv", ".npz", ".md")


def checkout_files() -> set[str]:
    """What the wheel must hold, listed from the checkout: every module and every data file of the packages."""
    files = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", *DATA_SUFFIXES):
                files.add(path.relative_to(REPO).as_posix())
    return files


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what a source distribution holds, so the build leaves nothing in the checkout.
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                            "--no-index", "-v", "-w", str(tmp / "dist")], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("medpeft_sweep-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                              "--no-index", "--force-reinstall", str(wheel)], capture_output=True, text=True,
                             timeout=300, env=env)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    # Only now: pip would otherwise find this environment's (editable) medpeft-sweep and install nothing.
    ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    (Path(purelib) / "medpeft-dependencies.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")

    outside = tmp / "elsewhere"
    outside.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def run(*command: str, check: int | None = 0) -> subprocess.CompletedProcess:
        result = subprocess.run(list(command), cwd=outside, env=env, capture_output=True, text=True, timeout=300)
        if check is not None:
            assert result.returncode == check, f"{command}: exit {result.returncode}\n{result.stdout[-3000:]}\n" \
                                               f"{result.stderr[-3000:]}"
        return result

    return {"wheel": wheel, "build_log": build.stdout + build.stderr, "install_log": install.stdout + install.stderr,
            "run": run, "python": str(python), "purelib": purelib, "outside": outside}


def test_the_wheel_holds_every_module_and_data_file(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = set(wheel.namelist())
    missing = sorted(checkout_files() - names)
    assert not missing, f"not in the wheel: {missing}"
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_no_setuptools_warnings(installed):
    # setuptools' warnings are classes (BuildBackendWarning: Package '...' is absent from the `packages`
    # configuration, SetuptoolsDeprecationWarning, ...); pip's "warning: byte-compiling is disabled" is not one.
    for log in (installed["build_log"], installed["install_log"]):
        assert not re.findall(r"\w+Warning\b.*", log), re.findall(r"\w+Warning\b.*", log)


def test_the_installed_tool_runs_from_outside_the_checkout(installed):
    run = installed["run"]
    where = run(installed["python"], "-c", "import sweep, trainables; print(sweep.__file__); print(trainables.__file__)")
    assert all(line.startswith(installed["purelib"]) for line in where.stdout.split()), where.stdout

    help_text = run("medpeft-sweep", "--help").stdout
    assert all(command in help_text for command in COMMANDS)
    assert "error: unknown command" in run("medpeft-sweep", "lunch", check=2).stderr

    quickstart = run("medpeft-sweep", "launch", "--dry-run").stdout
    # The shipped spec and the shipped BreastMNIST: 4 methods x 2 fractions, 3 learning rates each, nothing missing.
    assert "Sweep 'quickstart' (classification): 8 cells, 24 trials" in quickstart
    assert "Missing" not in quickstart

    # The study's spec by the name it ships under; its data and weights are not here, which the dry run lists.
    paper = run("medpeft-sweep", "launch", "--config", "paper.yaml", "--arm", "cnn", "--dry-run").stdout
    assert "Sweep 'paper-cnn' (classification)" in paper
    assert "dataset 'ham10000'" in paper and "Missing" in paper
    assert not list(installed["outside"].iterdir()), "a dry run wrote into the current folder"

    methods = run("medpeft-sweep", "inspect", "methods").stdout
    assert re.search(r"^lora\s", methods, re.M) and re.search(r"^tsa\s", methods, re.M)

    # The other two commands load their whole module tree from the wheel and answer bad input as the launcher
    # does (exit 2, the problem named), before any work: nothing to report on, nothing to calibrate.
    assert "give --name NAME" in run("medpeft-sweep", "report", check=2).stderr
    calibrate = run("medpeft-sweep", "calibrate", "--config", "quickstart.yaml", "--set", "train.epochs=0",
                    check=2).stderr
    assert "epochs" in calibrate and "Traceback" not in calibrate
    assert not list(installed["outside"].iterdir()), "a refused command wrote into the current folder"

    # The module forms keep working from the installed package.
    assert "--dry-run" in run(installed["python"], "-m", "sweep.launch", "--help").stdout
