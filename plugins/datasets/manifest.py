"""A table of image paths and labels: ``{name: manifest, train: train.csv, test: test.csv, image: path, label: class}``.

The common case of data that is not laid out in class folders: a CSV (or parquet, when pyarrow or pandas is
installed) per split, one row per image. Paths are relative to the table's own folder and may not leave
it, so a table moved with its images keeps working and a table cannot point at files elsewhere on the
machine. Tables are read through ``sftcore.api.read_text`` (regular file, bounded, UTF-8) and images take
the one shared decoding path (``sftcore.api.images_from_files``).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, cast

from sftcore.api import DatasetContext, DataSplits, check_option, read_text, splits_from_files
from sftcore.errors import ConfigError, SftError, show

_WHO = "dataset manifest"


def validate_options(
    where: str,
    train: str | None = None,
    test: str | None = None,
    val: str | None = None,
    image: str = "path",
    label: str = "label",
    test_ratio: float = 0.2,
    in_memory: bool | str = "auto",
    crop_padding: int | None = None,
    flip: bool = False,
) -> None:
    """Every option's type and range, checked when the config is resolved (before anything is built)."""
    if train is None:
        raise ConfigError(f"{where} manifest needs train: a CSV file with one row per image (columns {image}, {label})")
    for name, value in (("train", train), ("test", test), ("val", val)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}.{name} must be the path of a .csv or .parquet file, got {show(value)}")
    for name, value in (("image", image), ("label", label)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}.{name} must be a column name, got {show(value)}")
    if isinstance(test_ratio, bool) or not isinstance(test_ratio, (int, float)) or not 0 <= test_ratio < 1:
        raise ConfigError(f"{where}.test_ratio must be a number in [0, 1), got {show(test_ratio)}")
    if not (in_memory == "auto" or isinstance(in_memory, bool)):
        raise ConfigError(f"{where}.in_memory must be auto, true or false, got {show(in_memory)}")
    check_option("crop_padding", crop_padding, int, low=0, high=256, none=True, where=where)
    check_option("flip", flip, bool, where=where)


def manifest(
    ctx: DatasetContext,
    train: str | None = None,
    test: str | None = None,
    val: str | None = None,
    image: str = "path",
    label: str = "label",
    test_ratio: float = 0.2,
    in_memory: bool | str = "auto",
    crop_padding: int | None = None,
    flip: bool = False,
) -> DataSplits:
    """Images listed in tables (CSV; parquet with pyarrow or pandas), paths relative to each table's folder;
    without a test table, a stratified share test_ratio of train is held out as test."""
    where = f"config: {ctx.stage}.dataset"
    validate_options(where, train, test, val, image, label, test_ratio, in_memory, crop_padding, flip)
    tables = {name: t for name, t in (("train", train), ("val", val), ("test", test)) if t is not None}
    rows = {name: _rows(Path(os.path.expanduser(t)), image, label) for name, t in tables.items()}
    classes = _classes(rows["train"], tables["train"])
    index = {c: i for i, c in enumerate(classes)}
    parts = {name: _labelled(name, tables[name], r, index) for name, r in rows.items()}
    return splits_from_files(classes, parts, ctx, _WHO, in_memory=in_memory, test_ratio=test_ratio,
                             crop_padding=crop_padding, flip=flip)  # fmt: skip


cast(Any, manifest).validate_options = validate_options  # a function attribute sftcore reads


# --------------------------------------------------------------------------- tables
def _read_table(table: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line or row number, row)]) of a CSV or parquet table; anything unreadable is one line."""
    if table.suffix.lower() == ".parquet":
        return _read_parquet(table)
    text = read_text(table, "manifest table").removeprefix("\ufeff")  # a BOM from spreadsheet exports
    reader = csv.DictReader(text.splitlines(), strict=True)
    try:
        columns = [str(c).strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        out = [(reader.line_num, row) for row in reader]
    except csv.Error as exc:
        raise SftError(f"{_WHO}: {table} line {reader.line_num} is not valid CSV ({exc}); fix the file") from None
    return columns, out


def _read_parquet(table: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    """A parquet table through pyarrow (or pandas): optional packages, never required by sftcore."""
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found, unused-ignore]

        read = pq.read_table
    except ImportError:
        try:
            import pandas as pd  # type: ignore[import-not-found, unused-ignore]

            read = pd.read_parquet
        except ImportError:
            raise SftError(
                f"{_WHO}: {table} is parquet, which needs pyarrow or pandas: pip install pyarrow, or save it as CSV"
            ) from None
    if not table.is_file():
        raise SftError(f"{_WHO}: manifest table '{table}' not found")
    try:
        data = read(str(table))
        records = data.to_pylist() if hasattr(data, "to_pylist") else data.to_dict("records")
        columns = [str(c) for c in data.column_names] if hasattr(data, "column_names") else list(data.columns)
    except Exception as exc:  # noqa: BLE001 - the readers raise many types for a broken file
        raise SftError(f"{_WHO}: cannot read parquet table {table} ({type(exc).__name__}: {exc})") from None
    return columns, [(i + 1, row) for i, row in enumerate(records)]


def _rows(table: Path, image: str, label: str) -> list[tuple[int, str, str]]:
    """(line, image file, label text) per row, each path checked to stay inside the table's folder and exist."""
    columns, rows = _read_table(table)
    lacking = [c for c in (image, label) if c not in columns]
    if lacking:
        raise SftError(
            f"{_WHO}: {table} has no column(s) {', '.join(lacking)} (it has: {', '.join(columns) or 'none'}); "
            "set image: and label: to its column names"
        )
    if not rows:
        raise SftError(f"{_WHO}: {table} lists no images")
    folder = table.parent
    out = []
    for line, row in rows:
        value, name = row.get(image), row.get(label)
        if value is None or name is None or not str(value).strip() or not str(name).strip():
            raise SftError(f"{_WHO}: {table} line {line} has an empty {image} or {label}; fill it in or remove it")
        out.append((line, _inside(folder, str(value).strip(), table, line), str(name).strip()))
    return out


def _inside(folder: Path, value: str, table: Path, line: int) -> str:
    """The image file a row names: relative to the table's folder, never leaving it, present."""
    parts = PurePosixPath(value.replace("\\", "/")).parts
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or ".." in parts or not parts:
        raise SftError(
            f"{_WHO}: {table} line {line} names {show(value)}; image paths must be relative to the table's "
            f"folder {folder.resolve()} and stay inside it (no absolute paths, no '..')"
        )
    path = folder.joinpath(*parts)
    if not path.is_file():
        raise SftError(f"{_WHO}: {table} line {line}: image {path} not found; fix the row or add the file")
    return str(path)


def _classes(rows: list[tuple[int, str, str]], table: str) -> list[str]:
    """The training table's labels, sorted (numerically when they are all whole numbers)."""
    names = {name for _, _, name in rows}
    numeric = all(n.lstrip("-").isdigit() for n in names)
    return sorted(names, key=(lambda n: (int(n), n)) if numeric else None)


def _labelled(split: str, table: str, rows: list[tuple[int, str, str]], index: dict[str, int]):
    """(paths, labels) of a split; a label the training table lacks is one line."""
    for line, _, name in rows:
        if name not in index:
            raise SftError(
                f"{_WHO}: {table} line {line} has label {show(name)}, which the train table never uses; "
                f"every {split} class needs training images"
            )
    return [p for _, p, _ in rows], [index[name] for _, _, name in rows]
