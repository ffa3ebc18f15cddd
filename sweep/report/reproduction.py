"""Our numbers beside a published study's (`python -m sweep.report --name NAME --reference dutt2024`).

Every cell of the study's tables that we ran is shown with ours, the published value and the difference; the
cells the study has and we did not run are listed. Methods are ranked as the study ranks them (per dataset, then
the mean of the per-dataset ranks), the agreement of the two rankings is Kendall's tau per dataset and backbone,
and each of the study's findings is recomputed from our numbers by the same rule that states it on the study's
own numbers: holds, does not hold, or not run.

Units: the study prints F1 as a fraction (0.94) and FID as is; our report shows F1 in percent, so the published
values are shown in percent too. Cells that did not learn (sweep.results.trust) are shown but left out of ranks and
findings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sweep.references import Reference
from sweep.report import plots
from sweep.report.document import Document

# The study's classification tables and the one for text-to-image, by backbone.
CLASSIFICATION_TABLES = ("Table 2", "Table 3", "Table 5")


@dataclass
class Reproduction:
    cells: pd.DataFrame  # one row per published cell: study names, our ids, published, ours, difference
    ranks: pd.DataFrame  # per backbone and method: mean rank over datasets, study's and ours
    taus: pd.DataFrame  # per backbone and dataset: Kendall's tau of the two method rankings
    findings: pd.DataFrame  # finding, verdict (holds / does not hold / not run), study's numbers, ours
    volume: pd.DataFrame  # the study's Figure 1 curves and ours, one row per (backbone, method, fraction)


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two paired score lists (ties in either count as in scipy's tau-b); NaN below 2 items."""
    n = len(a)
    if n < 2:
        return math.nan
    concordant = discordant = ties_a = ties_b = 0
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else math.nan


def compare(reference: Reference, scores: pd.DataFrame) -> Reproduction:
    """Our method scores (sweep.results.scores.method_scores) against the reference's tables."""
    table = reference.tables
    published = table[table["table"] != "Table 6"].copy()  # Table 6 repeats Table 3's counts, no scores
    published = published[published["value"].notna()]
    mine = {(r["backbone"], r["dataset"], r["method"], round(float(r["fraction"]), 4)): r
            for r in scores.to_dict("records")}
    rows = []
    for r in published.itertuples(index=False):
        backbone, dataset = reference.ours("backbone", r.backbone), reference.ours("dataset", r.dataset)
        method = reference.ours("method", r.method)
        fraction = 1.0 if pd.isna(r.fraction) else float(r.fraction)
        scale = 100.0 if r.metric == "f1" else 1.0
        key = (backbone, dataset, method, round(fraction, 4))
        row = {"table": r.table, "study_backbone": r.backbone, "study_dataset": r.dataset,
               "study_method": r.method, "fraction": fraction, "metric": r.metric, "backbone": backbone,
               "dataset": dataset, "method": method, "published": float(r.value) * scale,
               "higher_is_better": r.metric != "fid"}
        if key in mine:
            got = mine[key]
            row |= {"ours": float(got["mean"]), "seeds": int(got["seeds"]), "learned": got["learned"],
                    "difference": float(got["mean"]) - float(r.value) * scale}
        else:
            row |= {"ours": math.nan, "seeds": 0, "learned": None, "difference": math.nan}
        rows.append(row)
    cells = pd.DataFrame(rows)
    main = cells[cells["table"] != "Figure 1"]
    ranks, taus = _ranks(main)
    return Reproduction(cells, ranks, taus, _findings(cells, ranks), cells[cells["table"] == "Figure 1"])


def _ranks(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per backbone: each method's mean over datasets (and data fractions, Table 4's) of its rank within the dataset
    (1 = best), the study's and ours (ours among the methods we ran that learned); Kendall's tau per dataset
    between the two orders of the methods we ran."""
    rank_rows, tau_rows = [], []
    for backbone, group in cells.groupby("study_backbone", sort=False):
        study_ranks, our_ranks = {}, {}
        for (dataset, fraction), part in group.groupby(["study_dataset", "fraction"], sort=False):
            dataset = dataset if fraction == 1.0 else f"{dataset} ({fraction:g})"
            sign = 1.0 if part["higher_is_better"].iloc[0] else -1.0
            study = (sign * part["published"]).rank(ascending=False)
            study_ranks[dataset] = dict(zip(part["study_method"], study, strict=True))
            ran = part[part["ours"].notna() & part["learned"].map(lambda v: v is not False)]
            if len(ran) >= 2:
                ours = (sign * ran["ours"]).rank(ascending=False)
                our_ranks[dataset] = dict(zip(ran["study_method"], ours, strict=True))
                tau_rows.append({"study_backbone": backbone, "study_dataset": dataset, "methods": len(ran),
                                 "tau": kendall_tau(list(sign * ran["published"]), list(sign * ran["ours"]))})
        for method in dict.fromkeys(group["study_method"]):
            theirs = [r[method] for r in study_ranks.values() if method in r]
            mine = [r[method] for r in our_ranks.values() if method in r]
            rank_rows.append({"study_backbone": backbone, "study_method": method,
                              "study_mean_rank": float(np.mean(theirs)) if theirs else math.nan,
                              "our_mean_rank": float(np.mean(mine)) if mine else math.nan,
                              "our_datasets": len(mine)})
    return pd.DataFrame(rank_rows), pd.DataFrame(tau_rows, columns=["study_backbone", "study_dataset", "methods",
                                                                    "tau"])


def _first(ranks: pd.DataFrame, backbones: list[str], column: str) -> tuple[str | None, float]:
    part = ranks[ranks["study_backbone"].isin(backbones)].groupby("study_method")[column].mean().dropna()
    return (part.idxmin(), float(part.min())) if len(part) else (None, math.nan)


def _peft_advantage(cells: pd.DataFrame, backbone: str, column: str) -> float:
    """Mean over datasets of (best PEFT method - full fine-tuning), in the table's units."""
    part = cells[(cells["study_backbone"] == backbone) & (cells["table"] != "Figure 1")]
    gains = []
    for _dataset, group in part.groupby("study_dataset"):
        group = group[group[column].notna() & group["learned"].map(lambda v: v is not False)] \
            if column == "ours" else group
        full = group[group["study_method"] == "Full FT"][column]
        peft = group[~group["study_method"].isin(["Full FT", "Linear Probing"])][column]
        if len(full) and len(peft):
            gains.append(float(peft.max() - full.iloc[0]))
    return float(np.mean(gains)) if gains else math.nan


def _crossover(curves: pd.DataFrame, backbone: str, method: str, column: str) -> float:
    """The largest training fraction at which `method` beats full fine-tuning on the study's Figure 1 (NaN when it
    never does or when either curve is missing)."""
    part = curves[curves["study_backbone"] == backbone]
    full = part[part["study_method"] == "Full FT"].set_index("fraction")[column]
    peft = part[part["study_method"] == method].set_index("fraction")[column]
    both = pd.concat([full, peft], axis=1, keys=["full", "peft"]).dropna()
    if len(both) < 2:
        return math.nan
    ahead = both[both["peft"] > both["full"]]
    return float(ahead.index.max()) if len(ahead) else 0.0


def _findings(cells: pd.DataFrame, ranks: pd.DataFrame) -> pd.DataFrame:
    rows = []

    def add(finding: str, study: str, ours: str, verdict: str) -> None:
        rows.append({"finding": finding, "study": study, "ours": ours, "verdict": verdict})

    for backbones, method, finding in ((["ResNet50"], "SSF", "SSF ranks first on ResNet-50 (Table 2)"),
                                       (["ViT-B", "ViT-L", "ViT-H"], "LoRA", "LoRA ranks first on ViTs (Table 3)")):
        study_first, study_rank = _first(ranks, backbones, "study_mean_rank")
        our_first, our_rank = _first(ranks, backbones, "our_mean_rank")
        ours = ranks[ranks["study_backbone"].isin(backbones)].groupby("study_method")["our_mean_rank"].mean()
        if our_first is None or math.isnan(ours.get(method, math.nan)):
            add(finding, f"{study_first} first (mean rank {study_rank:.2f})", "-", "not run")
        else:
            add(finding, f"{study_first} first (mean rank {study_rank:.2f})",
                f"{our_first} first (mean rank {our_rank:.2f}); {method}: {ours[method]:.2f}",
                "holds" if our_first == method else "does not hold")

    advantage = {b: (_peft_advantage(cells, b, "published"), _peft_advantage(cells, b, "ours"))
                 for b in ("ViT-B", "ViT-L", "ViT-H")}
    study = ", ".join(f"{b} {v[0]:+.1f}" for b, v in advantage.items())
    if any(math.isnan(v[1]) for v in advantage.values()):
        add("PEFT's advantage over full fine-tuning grows with model size, ViT-B to ViT-H (Table 3)", study,
            ", ".join(f"{b} {v[1]:+.1f}" for b, v in advantage.items() if not math.isnan(v[1])) or "-", "not run")
    else:
        gains = [v[1] for v in advantage.values()]
        add("PEFT's advantage over full fine-tuning grows with model size, ViT-B to ViT-H (Table 3)", study,
            ", ".join(f"{b} {v[1]:+.1f}" for b, v in advantage.items()),
            "holds" if gains[-1] > gains[0] else "does not hold")

    curves = cells[cells["table"] == "Figure 1"]
    for backbone, method in (("ViT-B", "LoRA"), ("ViT-B", "BitFit"), ("ViT-L", "LoRA"), ("ViT-L", "BitFit")):
        theirs, ours = _crossover(curves, backbone, method, "published"), _crossover(curves, backbone, method, "ours")
        finding = f"Figure 1, {backbone}: {method} beats full fine-tuning up to a training fraction, not beyond"
        study_text = f"ahead up to {theirs:.0%}" if theirs else "never ahead"
        if math.isnan(ours):
            add(finding, study_text, "-", "not run")
            continue
        fractions = sorted(curves["fraction"].unique())
        steps = abs(_step(fractions, ours) - _step(fractions, theirs))
        add(finding, study_text, f"ahead up to {ours:.0%}" if ours else "never ahead",
            "holds" if steps <= 1 else "does not hold")

    fid = cells[cells["metric"] == "fid"]
    for which, method, finding in (("first", "Bias", "Bias tuning has the best FID (Table 4)"),
                                   ("last", "LoRA", "LoRA has the worst FID (Table 4)")):
        study_order = fid.groupby("study_method")["published"].mean().sort_values()
        our_order = fid.groupby("study_method")["ours"].mean().dropna().sort_values()
        pick = (lambda s: s.index[0]) if which == "first" else (lambda s: s.index[-1])
        study_text = f"{pick(study_order)} {study_order[pick(study_order)]:.1f}" if len(study_order) else "-"
        if method not in our_order.index:
            add(finding, study_text, "-", "not run")
        else:
            add(finding, study_text, f"{pick(our_order)} {our_order[pick(our_order)]:.1f}",
                "holds" if pick(our_order) == method else "does not hold")
    return pd.DataFrame(rows)


def _step(fractions: list[float], value: float) -> int:
    """Index of `value` among the fractions (0 for 'never ahead')."""
    return 0 if not value else 1 + min(range(len(fractions)), key=lambda i: abs(fractions[i] - value))


def section(doc: Document, found: Reproduction, reference: Reference, out: Path, files: list[Path]) -> None:
    """The report's reproduction section: the study's numbers beside ours, findings, and its Figure 1 beside ours."""
    cells = found.cells
    main = cells[cells["table"] != "Figure 1"]
    ran = main[main["ours"].notna()]
    doc.heading(f"Reproduction of {reference.short} (--reference {reference.name})")
    doc.text(f"{reference.citation} Each cell: ours / published (difference, ours minus published); F1 in percent "
             f"(the study prints it as a fraction), FID as printed. {len(ran)} of {len(main)} cells of the study's "
             "tables were run in this sweep. Cells marked (did not learn) are left out of the ranks and findings.")
    for (table, backbone), part in main.groupby(["table", "study_backbone"], sort=False):
        if part["ours"].isna().all():
            continue
        columns = list(dict.fromkeys(part["study_dataset"] + part["fraction"].map(
            lambda f: "" if f == 1.0 else f" ({f:g})")))
        rows = []
        for method, mine in part.groupby("study_method", sort=False):
            row = {"method": method}
            for r in mine.itertuples(index=False):
                column = r.study_dataset + ("" if r.fraction == 1.0 else f" ({r.fraction:g})")
                row[column] = (f"- / {r.published:.1f}" if math.isnan(r.ours) else
                               f"{r.ours:.1f} / {r.published:.1f} ({r.difference:+.1f})"
                               + (" (did not learn)" if r.learned is False else ""))
            rows.append(row)
        doc.heading(f"{table}, {backbone}", level=3)
        doc.table(pd.DataFrame(rows, columns=["method", *columns]).fillna("-"))
    missing = main[main["ours"].isna()]
    if len(missing):
        doc.heading("Not run here", level=3)
        doc.bullets([f"{table}, {backbone}: {len(part)} cells ({', '.join(dict.fromkeys(part['study_method']))} "
                     f"on {', '.join(dict.fromkeys(part['study_dataset']))})"
                     for (table, backbone), part in missing.groupby(["table", "study_backbone"], sort=False)])
    doc.heading("Method ranks (mean of the per-dataset ranks, 1 = best, as the study ranks them)", level=3)
    ranks = found.ranks[found.ranks["our_datasets"] > 0]
    if len(ranks):
        doc.table(pd.DataFrame({"backbone": ranks["study_backbone"], "method": ranks["study_method"],
                                "study": ranks["study_mean_rank"].map(lambda v: f"{v:.2f}"),
                                "ours": ranks["our_mean_rank"].map(lambda v: f"{v:.2f}"),
                                "datasets (ours)": ranks["our_datasets"]}))
        doc.text("Kendall's tau between the study's order of the methods and ours, per dataset (1: the same order, "
                 "-1: reversed; over the methods we ran that learned):")
        doc.table(pd.DataFrame({"backbone": found.taus["study_backbone"], "dataset": found.taus["study_dataset"],
                                "methods": found.taus["methods"],
                                "tau": found.taus["tau"].map(lambda v: "-" if math.isnan(v) else f"{v:+.2f}")}))
    else:
        doc.text("No method of the study was run here on any of its datasets.")
    doc.heading("The study's findings, on our numbers", level=3)
    doc.table(pd.DataFrame({"finding": found.findings["finding"], "study": found.findings["study"],
                            "ours": found.findings["ours"], "verdict": found.findings["verdict"]}))
    if len(found.volume):
        name = "reference-volume.png"
        plots.study_volume(found.volume, out / name, "HAM10000")
        files.append(out / name)
        doc.image(out / name, "The study's Figure 1 (dashed) and ours (solid, where run): test F1 against the "
                              "fraction of HAM10000's training split")
