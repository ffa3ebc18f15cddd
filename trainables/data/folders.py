"""Users' own data: a folder of class folders (`imagefolder`) or a CSV of paths and labels (`csv`)."""

from __future__ import annotations

from typing import Literal

import pandas as pd

from trainables.data.base import (
    SPLIT_ALIASES,
    DatasetError,
    FileSource,
    Options,
    class_index,
    list_images,
    normalise_split,
    register_dataset,
)


class ImageFolderOptions(Options):
    channels: Literal[1, 3] = 3
    classes: list[str] | None = None  # class order (default: sorted folder names)


@register_dataset
class ImageFolder(FileSource):
    """root/<class>/*.png, or root/{train,val,test}/<class>/*.png for official splits."""

    name = "imagefolder"
    Options = ImageFolderOptions

    @property
    def channels(self) -> int:
        return self.options.channels

    def _split_dirs(self) -> dict[str, str]:
        root = self.require_root()
        found = {p.name: SPLIT_ALIASES[p.name.lower()] for p in root.iterdir()
                 if p.is_dir() and p.name.lower() in SPLIT_ALIASES}
        return found or {".": ""}

    def classes(self) -> list[str]:
        if self.options.classes:
            return list(self.options.classes)
        root = self.require_root()
        names = {p.name for d in self._split_dirs() for p in (root / d).iterdir() if p.is_dir()}
        if not names:
            raise DatasetError(f"dataset 'imagefolder': no class folders under {root}")
        return sorted(names)

    def rows(self) -> pd.DataFrame:
        root, classes, rows = self.require_root(), self.classes(), []
        for folder, split in self._split_dirs().items():
            for class_dir in sorted(p for p in (root / folder).iterdir() if p.is_dir()):
                rows += [(p.relative_to(root).as_posix(), class_dir.name, split) for p in list_images(class_dir)]
        if not rows:
            raise DatasetError(f"dataset 'imagefolder': no images under {root}")
        frame = pd.DataFrame(rows, columns=["item", "label", "split"])
        frame["label"] = class_index(frame["label"], classes, self.name)
        frame["group"] = ""
        return frame


class CsvOptions(Options):
    file: str = "labels.csv"
    path_column: str = "path"
    label_column: str = "label"
    group_column: str | None = "group"  # used when the column exists
    split_column: str | None = "split"
    caption_column: str | None = "caption"
    classes: list[str] | None = None  # class order; labels outside it are an error (default: sorted labels)
    channels: Literal[1, 3] = 3


@register_dataset
class Csv(FileSource):
    """A CSV with a path (relative to the CSV's folder) and a label per image, and optionally a group (patient),
    a split and a caption."""

    name = "csv"
    Options = CsvOptions

    @property
    def channels(self) -> int:
        return self.options.channels

    def table(self) -> pd.DataFrame:
        path, o = self.find(self.options.file), self.options
        layout = (f"a header row naming its columns ({o.path_column}, {o.label_column}, optionally split, group, "
                  "caption) and one row per image")
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise DatasetError(f"dataset 'csv': {path} is empty; it needs {layout}") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as e:
            raise DatasetError(f"dataset 'csv': {path} is not a readable CSV ({e}); it needs {layout}") from None
        for column in (o.path_column, o.label_column):
            if column not in table:
                raise DatasetError(f"dataset 'csv': {o.file} has no column {column!r} "
                                   f"(columns: {', '.join(table.columns)}); set path_column / label_column")
        if table.empty:
            raise DatasetError(f"dataset 'csv': {path} lists no images (it has a header and no rows); add one row "
                               "per image")
        return table

    def classes(self) -> list[str]:
        return list(self.options.classes or sorted(self.table()[self.options.label_column].unique()))

    def rows(self) -> pd.DataFrame:
        table, o = self.table(), self.options
        base = self.find(o.file).parent.relative_to(self.require_root()).as_posix()
        prefix = "" if base == "." else base + "/"
        rows = pd.DataFrame({
            "item": prefix + table[o.path_column],
            "label": class_index(table[o.label_column], self.classes(), self.name),
            "split": normalise_split(table[o.split_column], self.name) if o.split_column in table else "",
            "group": table.get(o.group_column, ""),
        })
        if o.caption_column in table:
            rows["caption"] = table[o.caption_column]
        self.check_files(rows)
        return rows
