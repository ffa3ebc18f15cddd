"""MIMIC-CXR-JPG (Johnson et al. 2019; PhysioNet, credentialed access) as image-report pairs for text-to-image:
files/pXX/pXXXXXXXX/sXXXXXXXX/<dicom_id>.jpg, mimic-cxr-2.0.0-split.csv(.gz) (official train/validate/test),
optionally mimic-cxr-2.0.0-metadata.csv(.gz) (view positions), and the free-text reports
(files/pXX/pXXXXXXXX/sXXXXXXXX.txt, from MIMIC-CXR's mimic-cxr-reports, beside or under `reports`/).
The report section used as the prompt is selectable; split by patient through the official split."""

from __future__ import annotations

import re
from typing import Literal

import pandas as pd
from pydantic import Field

from trainables.data.base import DatasetError, FileSource, Options, normalise_split, register_dataset

SECTION = re.compile(r"^\s*([A-Z][A-Z /&-]+):", re.MULTILINE)


class MimicOptions(Options):
    section: Literal["impression", "findings", "findings+impression", "full"] = "impression"
    views: list[str] | None = Field(default_factory=lambda: ["PA", "AP"])  # None: every view
    max_caption_chars: int = 1000


def report_section(text: str, section: str) -> str:
    """A section of a radiology report ('' when the report has no such section)."""
    if section == "full":
        return " ".join(text.split())
    parts: dict[str, str] = {}
    matches = list(SECTION.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        parts[match.group(1).strip().lower()] = " ".join(text[match.end() : end].split())
    if section == "findings+impression":
        return " ".join(p for p in (parts.get("findings", ""), parts.get("impression", "")) if p)
    return parts.get(section, "")


@register_dataset
class MimicCXR(FileSource):
    name = "mimic_cxr"
    Options = MimicOptions
    channels = 1

    def classes(self) -> list[str]:
        return ["chest x-ray"]  # text-to-image: the caption is the condition

    def rows(self) -> pd.DataFrame:
        split = pd.read_csv(self.find("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"))
        if self.options.views is not None:
            meta = pd.read_csv(self.find("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"),
                               usecols=["dicom_id", "ViewPosition"])
            split = split.merge(meta, on="dicom_id")
            split = split[split["ViewPosition"].isin(self.options.views)]
        subject = "p" + split["subject_id"].astype(str)
        study_dir = "files/" + subject.str[:3] + "/" + subject + "/s" + split["study_id"].astype(str)
        rows = pd.DataFrame({
            "item": study_dir + "/" + split["dicom_id"].astype(str) + ".jpg",
            "label": 0,
            "split": normalise_split(split["split"], self.name),
            "group": subject,
        })
        self.check_files(rows)
        rows["caption"] = [self._caption(d) for d in study_dir]
        empty = rows["caption"] == ""
        if empty.any():  # a report without the chosen section: fall back to the whole report
            self.notes["caption_fallback_full_report"] = str(int(empty.sum()))
            rows.loc[empty, "caption"] = [self._caption(d, "full") for d in study_dir[empty.to_numpy()]]
        return rows.reset_index(drop=True)

    def _caption(self, study_dir: str, section: str | None = None) -> str:
        root = self.require_root()
        for base in (root, root / "reports", root / "mimic-cxr-reports"):
            path = base / f"{study_dir}.txt"
            if path.is_file():
                text = report_section(path.read_text(errors="replace"), section or self.options.section)
                return text[: self.options.max_caption_chars]
        raise DatasetError(f"dataset 'mimic_cxr': report {study_dir}.txt not found under {root} (or reports/, "
                           "mimic-cxr-reports/); unpack mimic-cxr-reports beside the images")
