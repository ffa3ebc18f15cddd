"""The README's example of what the quickstart prints is what the launcher prints: the summary rendered by the
launcher's own code from the README's numbers gives the README's text back, with one row per cell of the quickstart
spec, in its order."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from sweep.plan.spec import DEFAULT_SPEC
from sweep.plan.validate import make_plan
from sweep.report.launcher_output import summary
from sweep.report.outcome import Outcome
from sweep.store.storage import parse_storage
from tests.conftest import load_spec

README = Path(__file__).resolve().parents[1] / "README.md"
STORAGE = "/home/you/medpeft-sweep/results"  # where the README's example ran
UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}


def example() -> list[str]:
    """The lines of the README's code block that follows 'What you will see'."""
    text = README.read_text().split("What you will see", 1)[1]
    return text.split("```\n", 2)[1].splitlines()


def _count(text: str) -> int:
    number, unit = re.fullmatch(r"([\d.]+)([kMG]?)", text).groups()
    return round(float(number) * UNITS[unit])


def _row(line: str, columns: list[tuple[int, int]]) -> dict:
    """A row of the table, read back into the fields the launcher's table is printed from."""
    cell, chosen, val, test, trivial, learned, params, epochs, stopped, *search = (line[a:b].strip() for a, b in columns)
    trainable, total = re.fullmatch(r"(\S+) / (\S+) \([\d.]+%\)", params).groups()
    trivial_val, trivial_test = trivial.split("/")
    (run, most), (early, trials) = epochs.split("/"), stopped.split("/")
    return {"cell_key": cell, "chosen_trial": f"{cell}/trial=?", "chosen": chosen, "val": float(val),
            "test": float(test), "trivial_val": float(trivial_val), "trivial_test": float(trivial_test),
            "learned": {"yes": True, "did not learn": False, "n/a": None}[learned], "trainable_params": _count(trainable),
            "total_params": _count(total), "epochs_run": int(run), "epochs_max": int(most),
            "stopped_early": int(early), "trials": int(trials), "failed": 0, "complete": True, "has_result": True,
            **({"search": search[0]} if search else {})}


def _without_shares(text: str) -> str:
    # The shares are computed from exact counts, which the table prints rounded to 3 digits.
    return re.sub(r"\(\d+\.\d\d%\)", "(share)", text)


def test_the_readme_example_is_what_the_launcher_prints():
    lines = example()
    start = next(i for i, line in enumerate(lines) if line.startswith("=== Sweep 'quickstart'"))
    header, dashes = lines[start + 1], lines[start + 2]
    columns = [(m.start(), m.end() + 2) for m in re.finditer(r"-+", dashes)]
    columns[-1] = (columns[-1][0], None)
    rows = []
    for line in lines[start + 3:]:
        if not line:
            break
        rows.append(_row(line, columns))

    plan = make_plan(load_spec(DEFAULT_SPEC), DEFAULT_SPEC, None)
    assert [r["cell_key"] for r in rows] == [c.key for c in plan.cells]  # one row per cell, in the spec's order
    assert all(r["epochs_max"] == c.budget * plan.max_epochs for r, c in zip(rows, plan.cells, strict=True))
    assert any(line.startswith(f"Sweep 'quickstart': {len(plan.cells)} cells, {plan.total_trials} trials -> ")
               for line in lines[:start])
    minutes, seconds = re.search(r"in (\d+)m(\d+)s ===", lines[start]).groups()
    printed = summary(plan, "quickstart", Outcome(True, pd.DataFrame(rows), 60 * int(minutes) + int(seconds)),
                      parse_storage(STORAGE), f"sqlite:///{STORAGE}/mlflow.db")
    assert header in printed and dashes in printed
    assert _without_shares(printed).strip("\n") == _without_shares("\n".join(lines[start:])).strip("\n")
