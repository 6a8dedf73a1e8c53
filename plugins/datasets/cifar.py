"""CIFAR-10 and CIFAR-100 read straight from torchvision's on-disk pickles.

The pickles are read here rather than through ``torchvision.datasets`` so that torchvision is
imported only to download, and so that the images land in one uint8 ``[N, 3, 32, 32]`` tensor
without the per-sample PIL round trip. A restricted unpickler accepts only what a CIFAR batch
holds (numpy arrays, lists, strings), so a stray pickle under ``root`` cannot run code.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sftcore.api import Augment, DatasetContext, DataSplits, ImageSet, check_option
from sftcore.errors import ConfigError, SftError, show


@dataclass(frozen=True)
class _Spec:
    title: str
    folder: str  # under root, as torchvision extracts it
    url: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# File names, URLs and md5 sums copied from torchvision/datasets/cifar.py (torchvision 0.29),
# so data downloaded by torchvision and by sftcore pass the same checks.
ARCHIVE_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}
FILE_MD5 = {
    "cifar-10-batches-py": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar-100-python": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}

# Per-channel statistics of the training images (pixel values scaled to [0, 1]).
CIFAR10 = _Spec(
    "CIFAR-10",
    "cifar-10-batches-py",
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar-10-python.tar.gz",
    tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("test_batch",),
    "batches.meta",
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
)
CIFAR100 = _Spec(
    "CIFAR-100",
    "cifar-100-python",
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "cifar-100-python.tar.gz",
    ("train",),
    ("test",),
    "meta",
    (0.5071, 0.4865, 0.4409),
    (0.2673, 0.2564, 0.2762),
)

_PIXELS = 3 * 32 * 32


def cifar10(
    ctx: DatasetContext,
    root: str = "./data",
    download: bool = False,
    verify: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    augment: bool = True,
) -> DataSplits:
    """CIFAR-10: 50,000 training and 10,000 test images, 32x32 RGB, 10 classes."""
    return _load(ctx, CIFAR10, "labels", "label_names", root, download, verify, mean, std, augment)


def cifar100(
    ctx: DatasetContext,
    root: str = "./data",
    download: bool = False,
    verify: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    augment: bool = True,
    labels: str = "fine",
) -> DataSplits:
    """CIFAR-100: 50,000 training and 10,000 test images, 32x32 RGB, 100 fine or 20 coarse classes."""
    validate_options(f"config: {ctx.stage}.dataset", labels=labels)
    return _load(ctx, CIFAR100, f"{labels}_labels", f"{labels}_label_names", root, download, verify, mean, std, augment)


def validate_options(
    where: str,
    root: str = "./data",
    download: bool = False,
    verify: bool = True,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    augment: bool = True,
    labels: str = "fine",
) -> None:
    """Every option's type and range, checked when the config is resolved (before anything is built)
    and again when the data load; CIFAR-10 takes no ``labels`` (its signature rejects the key first)."""
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"{where}.root must be a folder path, got {show(root)}")
    for name, value in (("download", download), ("verify", verify), ("augment", augment)):
        check_option(name, value, bool, where=where)
    _stats(mean, (0.5,) * 3, f"{where}.mean", positive=False)
    _stats(std, (0.5,) * 3, f"{where}.std", positive=True)
    if labels not in ("fine", "coarse"):
        raise ConfigError(f"{where}.labels is {show(labels)}; use fine (100 classes) or coarse (20 superclasses)")


# validate_options: a function attribute that sftcore reads (Any: mypy has no attributes on functions)
cast(Any, cifar10).validate_options = validate_options
cast(Any, cifar100).validate_options = validate_options


# --------------------------------------------------------------------------- loading
def _load(ctx, spec: _Spec, label_key: str, names_key: str, root, download, verify, mean, std, augment) -> DataSplits:
    where = f"config: {ctx.stage}.dataset"
    validate_options(where, root, download, verify, mean, std, augment)
    mean = _stats(mean, spec.mean, f"{where}.mean", positive=False)
    std = _stats(std, spec.std, f"{where}.std", positive=True)
    folder = _ensure_files(spec, Path(os.path.expanduser(str(root))), download, verify)
    classes = [_text(n) for n in _field(_read_pickle(folder / spec.meta), names_key, folder / spec.meta)]
    train = _read_split(folder, spec.train, label_key, len(classes))
    test = _read_split(folder, spec.test, label_key, len(classes))
    return DataSplits(
        classes=classes,
        train=train,
        test=test,
        mean=mean,
        std=std,
        augment=Augment(crop_padding=4, flip=True) if augment else Augment(),
    )


def _stats(value, default, where: str, positive: bool) -> tuple[float, ...]:
    if value is None:
        return default
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        out = (
            ()
            if isinstance(values, str) or any(isinstance(v, (bool, str)) for v in values)
            else tuple(float(v) for v in values)
        )
    except (TypeError, ValueError, OverflowError):
        out = ()
    if len(out) not in (1, 3) or not all(math.isfinite(v) for v in out) or (positive and min(out) <= 0):
        need = "positive numbers" if positive else "numbers"
        raise ConfigError(f"{where} must be 1 or 3 {need}, e.g. [0.5, 0.5, 0.5]; got {show(value)}")
    return out * 3 if len(out) == 1 else out


def _ensure_files(spec: _Spec, root: Path, download: bool, verify: bool) -> Path:
    """Return the folder with every file present (and matching torchvision's md5 when verifying)."""
    folder = root / spec.folder
    names = [*spec.train, *spec.test, spec.meta]
    bad = _problems(folder, names, verify)
    if bad and download:
        _download(spec, root, verify)
        bad = _problems(folder, names, verify)
    if not bad:
        return folder
    missing = [n for n, why in bad if why == "missing"]
    if missing:
        where = folder.resolve()
        if len(missing) == len(names):
            raise SftError(
                f"{spec.title} not found: looked in {where} for {', '.join(names)}; set download: "
                f"true (needs internet) or copy torchvision's {spec.folder} folder into "
                f"{root.resolve()}"
            )
        raise SftError(
            f"{spec.title} under {where} is incomplete: missing {', '.join(missing)}; set download: "
            f"true (needs internet) or copy torchvision's complete {spec.folder} folder there"
        )
    name = bad[0][0]
    raise SftError(
        f"{spec.title} md5 mismatch for {folder.resolve() / name}: the file is corrupt or not CIFAR; "
        "delete it and re-download, or set verify: false for data you made yourself"
    )


def _problems(folder: Path, names: list[str], verify: bool) -> list[tuple[str, str]]:
    out = []
    for name in names:
        path = folder / name
        if not path.is_file():
            out.append((name, "missing"))
        elif verify and _md5(path) != FILE_MD5[folder.name][name]:
            out.append((name, "md5"))
    return out


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _download(spec: _Spec, root: Path, verify: bool) -> None:
    """Fetch and extract torchvision's archive into root (imports torchvision only here)."""
    import tarfile
    import urllib.error

    from torchvision.datasets import utils

    md5 = ARCHIVE_MD5[spec.archive] if verify else None
    try:
        utils.download_and_extract_archive(spec.url, str(root), filename=spec.archive, md5=md5)
    except RuntimeError as exc:  # torchvision's "File not found or corrupted." after a bad md5
        raise SftError(
            f"downloaded {root.resolve() / spec.archive} fails its md5 check ({exc}); delete it and retry"
        ) from None
    except tarfile.TarError as exc:
        raise SftError(f"cannot extract {root.resolve() / spec.archive} ({exc}); delete it and retry") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SftError(
            f"could not download {spec.title} from {spec.url} ({reason}); download: true needs "
            f"internet; offline, copy torchvision's {spec.folder} folder into {root.resolve()}"
        ) from None


_ALLOWED = {
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()  # latin1: Python 2 pickles, as torchvision does
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
        raise SftError(f"{path} is not a CIFAR pickle ({exc}); delete it and re-download") from None
    if not isinstance(obj, dict):
        raise SftError(
            f"{path} is not a CIFAR pickle (holds {type(obj).__name__}, not a dict); delete it and re-download"
        )
    # Python 2 pickles read with latin1 have str keys; ones written by Python 3 have bytes keys.
    return {_text(k): v for k, v in obj.items()}


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _field(entry: dict, key: str, path: Path):
    if key not in entry:
        raise SftError(
            f"{path} has no '{key}' entry (it has: {', '.join(sorted(entry))}); it is not the "
            "CIFAR file expected here; delete it and re-download"
        )
    return entry[key]


def _read_split(folder: Path, names: tuple[str, ...], label_key: str, num_classes: int) -> ImageSet:
    """All batches of a split into one preallocated uint8 [N, 3, 32, 32] tensor, one batch in memory at a time."""
    import numpy as np
    import torch

    images: torch.Tensor | None = None
    labels: list[int] = []
    for name in names:
        path = folder / name
        entry = _read_pickle(path)
        data = _field(entry, "data", path)
        data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else np.asarray(data)
        ys = list(_field(entry, label_key, path))
        del entry
        if data.dtype != np.uint8 or data.size != len(ys) * _PIXELS:
            raise SftError(
                f"{path} does not hold CIFAR images: expected uint8 data of {len(ys)} x {_PIXELS} "
                f"(one row per label), got {data.dtype} {tuple(data.shape)}; delete it and re-download"
            )
        n, start = len(ys), len(labels)
        if images is None:  # assume equal batches; grow if a later one is larger
            images = torch.empty((n * len(names), 3, 32, 32), dtype=torch.uint8)
        elif start + n > len(images):
            images = torch.cat([images[:start], torch.empty((n, 3, 32, 32), dtype=torch.uint8)])
        images.numpy()[start : start + n] = data.reshape(n, 3, 32, 32)  # rows are R plane, G plane, B plane
        labels.extend(ys)
        del data
    assert images is not None  # names: a split's batch files, never none
    labels_t = torch.tensor(labels, dtype=torch.int64)
    if len(labels_t) and (int(labels_t.min()) < 0 or int(labels_t.max()) >= num_classes):
        raise SftError(
            f"labels in {folder} fall outside 0..{num_classes - 1} (the classes named in its meta "
            "file); the files do not belong together; re-download them"
        )
    if len(labels_t) < len(images):
        images = images[: len(labels_t)].clone()
    return ImageSet(images=images, labels=labels_t)
