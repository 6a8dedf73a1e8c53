"""Your own images, one sub-folder per class, held at their own size when they share one (else resized once
to the backbone's input size: ``sftcore.api.image_shape_for``).

Resizing happens once per image, rather than per batch: user images come in any size and mode, and
decoding a 4000x3000 JPEG every epoch would dominate training. The decoding path is shared with the
torchvision and manifest datasets (``sftcore.api.images_from_files``): images are held in memory as uint8
when they fit in ``ctx.max_memory_bytes``; otherwise a FileSet decodes them on demand in the runner's
DataLoader workers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, cast

from sftcore.api import DatasetContext, DataSplits, check_option, decode_image, splits_from_files
from sftcore.errors import ConfigError, SftError, show

_WHO = "dataset image_folder"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_SKIP = {"__MACOSX"}  # archive debris, not a class
_LAYOUT = (
    "one sub-folder per class (root/<class>/*.jpg), or root/train/<class>/* with optional "
    "root/val/<class>/* and root/test/<class>/*"
)


def validate_options(
    where: str,
    root: str | None = None,
    test_ratio: float = 0.2,
    in_memory: bool | str = "auto",
    crop_padding: int | None = None,
    flip: bool = False,
    extensions: list[str] | None = None,
) -> None:
    """Every option's type and range, checked when the config is resolved (before anything is built,
    and before pretraining when this is the finetune dataset) and again by the factory."""
    if root is None:
        raise ConfigError(f"{where} image_folder needs root: the folder holding your images, " + _LAYOUT)
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"{where}.root must be a folder path, got {show(root)}")
    if not (in_memory == "auto" or isinstance(in_memory, bool)):
        raise ConfigError(f"{where}.in_memory must be auto, true or false, got {show(in_memory)}")
    if isinstance(test_ratio, bool) or not isinstance(test_ratio, (int, float)) or not 0 <= test_ratio < 1:
        raise ConfigError(f"{where}.test_ratio must be a number in [0, 1), got {show(test_ratio)}")
    check_option("flip", flip, bool, where=where)
    check_option("crop_padding", crop_padding, int, low=0, high=256, none=True, where=where)
    _extensions(extensions, where)


def image_folder(
    ctx: DatasetContext,
    root: str | None = None,
    test_ratio: float = 0.2,
    in_memory: bool | str = "auto",
    crop_padding: int | None = None,
    flip: bool = False,
    extensions: list[str] | None = None,
) -> DataSplits:
    """Images in class sub-folders; layout root/train|val|test/<class>/ or root/<class>/ split by test_ratio."""
    where = f"config: {ctx.stage}.dataset"
    validate_options(where, root, test_ratio, in_memory, crop_padding, flip, extensions)
    exts = _extensions(extensions, where)
    root_path = Path(os.path.expanduser(str(root)))
    if not root_path.is_dir():
        raise SftError(
            f"dataset image_folder: root {root_path.resolve()} is not a folder; point root at "
            "the folder holding your images, " + _LAYOUT
        )
    classes, splits, test_ratio = _scan(root_path, exts, test_ratio)
    parts = {name: ([p for p, _ in items], [y for _, y in items]) if items else None for name, items in splits.items()}
    return splits_from_files(classes, parts, ctx, _WHO, in_memory=in_memory, test_ratio=test_ratio,
                             crop_padding=crop_padding, flip=flip)  # fmt: skip


cast(Any, image_folder).validate_options = validate_options  # a function attribute sftcore reads


# --------------------------------------------------------------------------- finding files
def _extensions(extensions, where: str) -> tuple[str, ...]:
    if extensions is None:
        return EXTENSIONS
    if isinstance(extensions, str):
        extensions = [extensions]
    if (
        not isinstance(extensions, (list, tuple))
        or not extensions
        or not all(isinstance(e, str) and e.strip(".") for e in extensions)
    ):
        raise ConfigError(f"{where}.extensions must be a list like [.jpg, .png], got {show(extensions)}")
    return tuple("." + e.lower().lstrip(".") for e in extensions)


def _real_dir(path: Path, root: Path) -> bool:
    """A folder to read: not a symlink. A folder link that leads back into the (resolved) root is
    skipped, as its images are read where they are (``cat/loop -> .`` once put one class's images
    in again, and training images into the test split); one that leads out of the root is an error,
    since skipping it would drop data without a word."""
    if not path.is_dir():
        return False
    if not path.is_symlink():
        return True
    target = path.resolve()
    if target == root or root in target.parents:
        return False
    raise SftError(
        f"dataset image_folder: {path} links to {target}, outside the root {root}; image_folder "
        "does not follow folder links out of its root: move or copy that folder into the root"
    )


def _visible_dirs(folder: Path, root: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if not p.name.startswith(".") and p.name not in _SKIP and _real_dir(p, root)
    )


def _regular_file(path: str) -> bool:
    """A regular file (a symlink to one counts): a FIFO or device named x.png would hang or never end."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a dangling symlink, a file gone since the listing
        return False


def _images(folder: Path, exts: tuple[str, ...], root: Path) -> list[str]:
    """Image files under a class folder (recursively, sorted, hidden files skipped); folder links are
    not followed (see _real_dir) and only regular files are taken."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and _real_dir(Path(dirpath, d), root))
        out.extend(
            path
            for path in (
                os.path.join(dirpath, f)
                for f in sorted(filenames)
                if not f.startswith(".") and f.lower().endswith(exts)
            )
            if _regular_file(path)
        )
    return out


def _class_files(folder: Path, exts, root: Path) -> dict[str, list[str]]:
    found = {d.name: _images(d, exts, root) for d in _visible_dirs(folder, root)}
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise SftError(
            f"dataset image_folder: class folder(s) {', '.join(empty)} in {folder.resolve()} hold no "
            f"images ({' '.join(exts)}); add images, remove the folder(s), or set extensions"
        )
    return found


def _scan(root: Path, exts, test_ratio: float):
    """Class names, per split a list of (path, label), and the share of train to hold out as test (layout B's
    test_ratio; none in layout A, whose test/ folder is the test split); layout A when root/train holds class
    folders."""
    real = root.resolve()
    train_dir = root / "train"
    layout_a = _real_dir(train_dir, real) and bool(_visible_dirs(train_dir, real))
    found = _class_files(train_dir if layout_a else root, exts, real)
    if not found:
        raise SftError(f"dataset image_folder: found no class folders in {root.resolve()}; expected " + _LAYOUT)
    if len(found) < 2:  # one class: every prediction is right, and the run would report 100% accuracy
        raise SftError(
            f"dataset image_folder: {(train_dir if layout_a else root).resolve()} holds one class "
            f"folder ({show(next(iter(found)))}); a classifier needs at least 2 classes: add a folder "
            "per class"
        )
    classes = sorted(found)
    index = {c: i for i, c in enumerate(classes)}
    if not layout_a:
        return (
            classes,
            {"train": [(p, index[c]) for c in classes for p in found[c]], "val": None, "test": None},
            test_ratio,
        )
    splits = {"train": [(p, index[c]) for c in classes for p in found[c]], "val": None, "test": None}
    for name in ("val", "test"):
        folder = root / name
        if not _real_dir(folder, real):
            continue
        other = _class_files(folder, exts, real)
        unknown = sorted(set(other) - set(classes))
        if unknown:
            raise SftError(
                f"dataset image_folder: {folder.resolve()} has class folder(s) {', '.join(unknown)} "
                f"that {train_dir.resolve()} lacks; every {name} class needs training images; "
                "add them to train or remove those folders"
            )
        splits[name] = [(p, index[c]) for c in sorted(other) for p in other[c]] or None
    return classes, splits, 0.0


# --------------------------------------------------------------------------- decoding
def decode(path: str, shape: tuple[int, int, int]):
    """One image file -> uint8 [C, H, W], as every file-backed dataset decodes it (``sftcore.api.decode_image``)."""
    return decode_image(path, shape, "dataset image_folder")
