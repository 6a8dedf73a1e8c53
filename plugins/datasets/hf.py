"""Hugging Face datasets: a hub name, a local ``save_to_disk`` folder, or parquet/arrow files, read by the
``datasets`` library (the optional extra ``sftcore[hf]``) and decoded on sftcore's one image path.

The image column's bytes are taken undecoded (``Image(decode=False)``) and decoded by
``sftcore.api.images_from_files`` (size rule, pixel limit, EXIF, transparency) as every file-backed dataset
is: in memory when they fit, else on demand in DataLoader workers, straight from the memory-mapped Arrow
table. ``datasets`` is imported only when the dataset is built.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

from sftcore.api import DatasetContext, DataSplits, check_option, splits_from_files
from sftcore.errors import ConfigError, SftError, show

_WHO = "dataset hf"
_VAL_NAMES = ("validation", "valid", "val")
_FILE_KINDS = {".parquet": "parquet", ".arrow": "arrow"}


def validate_options(
    where: str,
    path: str | None = None,
    subset: str | None = None,
    image: str = "image",
    label: str = "label",
    train: str = "train",
    val: str | bool | None = None,
    test: str | bool | None = None,
    revision: str | None = None,
    test_ratio: float = 0.2,
    in_memory: bool | str = "auto",
    crop_padding: int | None = None,
    flip: bool = False,
) -> None:
    """Every option's type and range, checked when the config is resolved (before anything is built)."""
    if path is None:
        raise ConfigError(
            f"{where} hf needs path: a Hugging Face hub name (user/name), a save_to_disk folder, or parquet/arrow files"
        )
    check_option("path", path, str, where=where)
    for name, value in (("subset", subset), ("revision", revision)):
        check_option(name, value, str, none=True, where=where)
    for role, split in (("val", val), ("test", test)):
        if not (split is None or split is False or (isinstance(split, str) and split.strip())):
            raise ConfigError(
                f"{where}.{role} must be a split name, null (its usual name when present) or false (none), "
                f"got {show(split)}"
            )
    for name, value in (("image", image), ("label", label), ("train", train)):
        check_option(name, value, str, where=where)
    if not (in_memory == "auto" or isinstance(in_memory, bool)):
        raise ConfigError(f"{where}.in_memory must be auto, true or false, got {show(in_memory)}")
    check_option("test_ratio", test_ratio, float, low=0, high=0.95, where=where)
    check_option("crop_padding", crop_padding, int, low=0, high=256, none=True, where=where)
    check_option("flip", flip, bool, where=where)


def hf(
    ctx: DatasetContext,
    path: str | None = None,
    subset: str | None = None,
    image: str = "image",
    label: str = "label",
    train: str = "train",
    val: str | bool | None = None,
    test: str | bool | None = None,
    revision: str | None = None,
    test_ratio: float = 0.2,
    in_memory: bool | str = "auto",
    crop_padding: int | None = None,
    flip: bool = False,
) -> DataSplits:
    """A Hugging Face dataset (path: hub name, save_to_disk folder, or parquet/arrow files); splits train, val
    (default: validation if present; false: none) and test (default: a labelled test if present; false: none;
    without one, test_ratio of train held out);
    image: the image column; label: the label column (a ClassLabel's names become the classes)."""
    where = f"config: {ctx.stage}.dataset"
    validate_options(where, path, subset, image, label, train, val, test, revision, test_ratio, in_memory,
                     crop_padding, flip)  # fmt: skip
    assert path is not None  # validate_options
    splits = _load(path, subset, revision)
    chosen = _choose_splits(splits, train, val, test, path, label)
    tables = {role: _columns(splits[name], name, image, label, path) for role, name in chosen.items()}
    classes = _classes(tables["train"], label)
    parts = {role: _labelled(table, role, chosen[role], image, label, classes) for role, table in tables.items()}
    return splits_from_files(classes, parts, ctx, _WHO, in_memory=in_memory, test_ratio=test_ratio,
                             crop_padding=crop_padding, flip=flip)  # fmt: skip


cast(Any, hf).validate_options = validate_options  # a function attribute sftcore reads


# --------------------------------------------------------------------------- loading
def _datasets_module():
    try:
        import datasets
    except ImportError:
        raise SftError(
            f"{_WHO} needs the datasets library: pip install 'sftcore[hf]' (or pip install datasets)"
        ) from None
    datasets.disable_progress_bars()  # its bars would interleave with the run's own lines
    return datasets


def _load(path: str, subset: str | None, revision: str | None) -> dict:
    """{split name: datasets.Dataset}: a save_to_disk folder, a local folder or file of data files, or a hub
    name; whatever ``datasets`` raises becomes one line."""
    datasets = _datasets_module()
    local = Path(os.path.expanduser(path))
    try:
        if local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json")):
            loaded = datasets.load_from_disk(str(local))
        elif local.is_file() and local.suffix in _FILE_KINDS:
            loaded = datasets.load_dataset(_FILE_KINDS[local.suffix], data_files={"train": str(local)})
        elif local.exists() or path.startswith((".", "/", "~")) or path.endswith(tuple(_FILE_KINDS)):
            if not local.exists():
                raise SftError(f"{_WHO}: {local.resolve()} not found; set path to a save_to_disk folder, a "
                               "folder of parquet/arrow files, or a hub name (user/name)")  # fmt: skip
            loaded = datasets.load_dataset(str(local), subset)
        else:
            loaded = datasets.load_dataset(path, subset, revision=revision)
    except (SftError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - datasets and the hub raise many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SftError(
            f"{_WHO}: cannot load {show(path)} ({first}); without network access, run "
            "datasets.load_dataset(...).save_to_disk(FOLDER) where there is access and set path to FOLDER"
        ) from None
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def _choose_splits(splits: dict, train: str, val, test, path: str, label: str) -> dict[str, str]:
    """{role: split name}: the named splits first (train, then val and test when named), then val and test by
    their usual names among the splits left, skipping one without labels (a hub test split of -1s); ``false``
    for val or test means none."""
    have = ", ".join(sorted(splits))
    chosen: dict[str, str] = {}
    for role, name in (("train", train), ("val", val), ("test", test)):
        if isinstance(name, str):
            if name not in splits:
                raise SftError(f"{_WHO}: {show(path)} has no split {show(name)} (it has: {have}); set {role}: to one")
            if name in chosen.values():
                raise SftError(f"{_WHO}: train, val and test must be different splits; {role} is {show(name)} too")
            chosen[role] = name
    for role, name, usual in (("val", val, _VAL_NAMES), ("test", test, ("test",))):
        if name is None:
            found = next((u for u in usual if u in splits and u not in chosen.values() and _labelled_split(
                splits[u], label)), None)  # fmt: skip
            if found is not None:
                chosen[role] = found
    return {role: chosen[role] for role in ("train", "val", "test") if role in chosen}


def _labelled_split(split, label: str) -> bool:
    """Whether a split has a label in any row (a hub's unlabelled test split holds -1 or nothing)."""
    if label not in split.column_names:
        return True  # its own check says what is missing
    return any(v is not None and v != -1 for v in split[label])


def _columns(split, name: str, image: str, label: str, path: str):
    """The split with just its image column (undecoded) and label column; a missing column is one line."""
    datasets = _datasets_module()
    lacking = [c for c in (image, label) if c not in split.column_names]
    if lacking:
        raise SftError(
            f"{_WHO}: split {show(name)} of {show(path)} has no column(s) {', '.join(lacking)} (it has: "
            f"{', '.join(split.column_names)}); set image: and label: to its column names"
        )
    split = split.select_columns([image, label])
    if not isinstance(split.features[image], datasets.Image):
        raise SftError(
            f"{_WHO}: column {show(image)} of split {show(name)} holds {type(split.features[image]).__name__}, "
            "not images; set image: to the column of type Image"
        )
    return split.cast_column(image, datasets.Image(decode=False))


# --------------------------------------------------------------------------- labels
def _classes(split, label: str) -> list[str]:
    """A ClassLabel's names; otherwise the training labels, sorted (numerically when they are whole numbers)."""
    feature = split.features[label]
    names = getattr(feature, "names", None)
    if names:
        return [str(n) for n in names]
    values = {v for v in split[label] if v is not None}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return [str(v) for v in sorted(values)]
    return sorted(str(v) for v in values)


def _labelled(split, role: str, name: str, image: str, label: str, classes: list[str]):
    """(image sources, label indices) of a split; a missing, unknown or out-of-range label is one line."""
    index = {c: i for i, c in enumerate(classes)}
    names = getattr(split.features[label], "names", None)  # this split's own: it may order them otherwise
    labels = []
    for row, value in enumerate(split[label]):
        key = str(names[value]) if names and isinstance(value, int) and 0 <= value < len(names) else str(value)
        if value is None or isinstance(value, bool) or key not in index:
            raise SftError(
                f"{_WHO}: row {row} of split {show(name)} has label {show(value)}, not one of the "
                f"{len(classes)} training classes; fix the row or the label column"
            )
        labels.append(index[key])
    if not labels:
        raise SftError(f"{_WHO}: split {show(name)} has no rows")
    empty = sorted(set(range(len(classes))) - set(labels)) if role == "train" else []
    if empty:  # a class the model would have an output for and never see
        raise SftError(
            f"{_WHO}: class(es) {', '.join(classes[i] for i in empty[:5])} of the label column have no rows in "
            f"split {show(name)}; add training rows for them, or drop them from the ClassLabel"
        )
    return _Rows(split, image, name), labels


class _Rows:
    """A lazy sequence of ``(name, bytes)`` image sources read from an Arrow table (pickles for DataLoader
    workers: the table is memory-mapped, not copied)."""

    def __init__(self, table, column: str, split: str):
        self.table, self.column, self.split = table, column, split

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, row: int) -> tuple[str, bytes | None]:
        cell = self.table[row][self.column] or {}
        data, file = cell.get("bytes"), cell.get("path")
        if data is None and not file:
            raise SftError(f"{_WHO}: row {row} of split {show(self.split)} has no image; fix or remove the row")
        return (f"{file or 'row'} (split {self.split}, row {row})" if data is not None else str(file)), data
