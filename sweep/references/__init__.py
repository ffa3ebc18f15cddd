"""Published studies as data (`sweep/references/<name>.yaml` and its tables): what they printed, in our names.

A reference maps the study's backbone, dataset and method names to the ids of our spec for it
(`search_spaces/paper.yaml` for Dutt et al. 2024), and carries its printed trainable-parameter counts with notes
where a printed count is not what it says. Reports put our numbers beside its numbers; tests pin every method's
definition by its printed count.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

REFERENCES_DIR = Path(__file__).resolve().parent  # its YAML files and tables sit beside this module
_UNITS = {"K": 1e3, "M": 1e6}


@dataclass(frozen=True)
class Reference:
    name: str
    short: str  # e.g. "Dutt et al. 2024"
    citation: str
    tables: Any  # pandas DataFrame: one row per printed number (table, backbone, dataset, ..., method, value)
    backbones: dict[str, str]
    datasets: dict[str, str]
    methods: dict[str, str]
    count_classes: int
    count_notes: dict[tuple[str, str], dict[str, Any]]

    def ours(self, column: str, value: str) -> str:
        """Our id for one of the study's names (`column`: backbone, dataset or method); the name itself if unmapped."""
        return {"backbone": self.backbones, "dataset": self.datasets, "method": self.methods}[column].get(value, value)

    def printed_counts(self):
        """One row per (study backbone, study method) with its printed trainable count."""
        rows = self.tables.dropna(subset=["trainable_params_printed"])
        return rows.drop_duplicates(["backbone", "method"])[["backbone", "method", "trainable_params_printed"]]


def available() -> list[str]:
    return sorted(p.stem for p in REFERENCES_DIR.glob("*.yaml"))


@cache
def load_reference(name: str) -> Reference:
    import pandas as pd

    path = REFERENCES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise LookupError(f"no reference study named {name!r}; shipped: {', '.join(available()) or 'none'}")
    raw = yaml.safe_load(path.read_text())
    tables = pd.read_csv(path.parent / raw["tables"], comment="#", dtype={"train_size": str})
    notes = {(n["backbone"], n["method"]): n for n in raw.get("count_notes", [])}
    return Reference(name, raw.get("short", name), " ".join(raw["citation"].split()), tables, raw["backbones"], raw["datasets"],
                     raw["methods"], int(raw["count_classes"]), notes)


@dataclass(frozen=True)
class PrintedCount:
    """A count as printed: '23.5M', '59.1K', '100M', or a range '3.8-7.2K'."""

    low: float
    high: float
    decimals: int
    unit: float
    text: str

    @classmethod
    def parse(cls, text: str) -> PrintedCount:
        match = re.fullmatch(r"([\d.]+)(?:-([\d.]+))?([KM])", text.strip())
        if not match:
            raise ValueError(f"not a printed count: {text!r}")
        low, high, unit = match.group(1), match.group(2) or match.group(1), match.group(3)
        decimals = max(len(x.partition(".")[2]) for x in (low, high))
        return cls(float(low), float(high), decimals, _UNITS[unit], text)

    def readings(self, count: float) -> dict[str, float]:
        """`count` in the printed unit, rounded and truncated to the digits printed."""
        value, step = count / self.unit, 10.0**-self.decimals
        return {"rounded": round(value / step) * step, "truncated": math.floor(value / step + 1e-9) * step}

    def matches(self, count: float) -> str | None:
        """How `count` reproduces the printed number ('rounded' or 'truncated'), or None. A range matches a count
        whose reading lies within it."""
        for reading, value in self.readings(count).items():
            if self.low - 1e-9 <= value <= self.high + 1e-9:
                return reading
        return None
