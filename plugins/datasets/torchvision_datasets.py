"""torchvision's classification datasets as one component: ``{name: torchvision, dataset: Flowers102}``.

torchvision's own classes read the files (its annotation parsers, official splits and downloader), so
data laid out for torchvision works unchanged. The images then take sftcore's one decoding path
(``sftcore.api.images_from_files``: resized and cropped once to the backbone's input, in memory when they
fit, else streamed by DataLoader workers); the few datasets torchvision holds as arrays (MNIST, SVHN,
STL-10) are converted directly and resized per batch by the runner. torchvision is imported only when a
dataset is built, so ``sft list`` stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sftcore.api import Augment, DatasetContext, DataSplits, check_option, splits_from_files
from sftcore.errors import ConfigError, SftError, show


@dataclass(frozen=True)
class _Spec:
    """How sftcore builds one torchvision dataset: torchvision's keyword arguments per sftcore split
    (``None``: no official one: test is a stratified hold-out of train, val the runner's usual hold-out)."""

    train: dict
    test: dict | None
    layout: str  # what torchvision expects under root, for the one-line error when it is missing
    val: dict | None = None
    arrays: bool = False  # held as arrays by torchvision (MNIST, SVHN, STL-10), not as files
    flip: bool = True  # a mirrored photo is the same class; a mirrored digit or sign is not
    extra: dict = field(default_factory=dict)  # keyword arguments for every split


_TRAIN, _TEST = {"train": True}, {"train": False}
DATASETS: dict[str, _Spec] = {
    "Flowers102": _Spec(
        {"split": "train"},
        {"split": "test"},
        "flowers-102/{jpg/image_*.jpg, imagelabels.mat, setid.mat}",
        val={"split": "val"},
    ),
    "OxfordIIITPet": _Spec(
        {"split": "trainval"},
        {"split": "test"},
        "oxford-iiit-pet/{images/*.jpg, annotations/trainval.txt, annotations/test.txt}",
    ),
    "DTD": _Spec(
        {"split": "train"},
        {"split": "test"},
        "dtd/dtd/{images/<class>/*.jpg, labels/train1.txt, val1.txt, test1.txt}",
        val={"split": "val"},
    ),
    "Food101": _Spec(
        {"split": "train"}, {"split": "test"}, "food-101/{images/<class>/*.jpg, meta/train.json, meta/test.json}"
    ),
    "FGVCAircraft": _Spec(
        {"split": "train"},
        {"split": "test"},
        "fgvc-aircraft-2013b/data/{images/*.jpg, variants.txt, images_variant_{train,val,test}.txt}",
        val={"split": "val"},
    ),
    "StanfordCars": _Spec(
        {"split": "train"},
        {"split": "test"},
        "stanford_cars/{cars_train/, cars_test/, devkit/cars_meta.mat, devkit/cars_train_annos.mat, "
        "cars_test_annos_withlabels.mat}",
    ),
    "Caltech101": _Spec({}, None, "caltech101/101_ObjectCategories/<class>/image_*.jpg"),
    "EuroSAT": _Spec({}, None, "eurosat/2750/<class>/*.jpg", flip=False),
    "SUN397": _Spec({}, None, "SUN397/{ClassName.txt, <letter>/<class>/*.jpg}"),
    "Country211": _Spec(
        {"split": "train"},
        {"split": "test"},
        "country211/{train,valid,test}/<country code>/*.jpg",
        val={"split": "valid"},
    ),
    "GTSRB": _Spec(
        {"split": "train"},
        {"split": "test"},
        "gtsrb/{GTSRB/Training/<class>/*.ppm, GTSRB/Final_Test/Images/*.ppm, GT-final_test.csv}",
        flip=False,
    ),
    "SVHN": _Spec({"split": "train"}, {"split": "test"}, "{train_32x32.mat, test_32x32.mat}", arrays=True, flip=False),
    "STL10": _Spec(
        {"split": "train"},
        {"split": "test"},
        "stl10_binary/{train_X.bin, train_y.bin, unlabeled_X.bin, test_X.bin, test_y.bin, class_names.txt}",
        arrays=True,
    ),
    "MNIST": _Spec(_TRAIN, _TEST, "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", arrays=True, flip=False),
    "FashionMNIST": _Spec(
        _TRAIN, _TEST, "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", arrays=True, flip=False
    ),
    "KMNIST": _Spec(_TRAIN, _TEST, "KMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte", arrays=True, flip=False),
}


def _splits_text(spec: _Spec) -> str:
    if spec.test is None:
        return "one set: test held out by test_ratio"
    return "train, " + ("val, " if spec.val else "") + "test"


def validate_options(
    where: str,
    dataset: str | None = None,
    root: str = "./data",
    download: bool = False,
    in_memory: bool | str = "auto",
    test_ratio: float = 0.2,
    crop_padding: int | None = None,
    flip: bool | None = None,
) -> None:
    """Every option's type and range, checked when the config is resolved (before anything is built)."""
    if dataset is None:
        raise ConfigError(f"{where} torchvision needs dataset: one of {', '.join(DATASETS)}")
    if not isinstance(dataset, str) or dataset not in DATASETS:
        near = [name for name in DATASETS if name.lower() == str(dataset).lower()]
        hint = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(f"{where}.dataset is {show(dataset)}; {hint}use one of {', '.join(DATASETS)}")
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"{where}.root must be a folder path, got {show(root)}")
    check_option("download", download, bool, where=where)
    if not (in_memory == "auto" or isinstance(in_memory, bool)):
        raise ConfigError(f"{where}.in_memory must be auto, true or false, got {show(in_memory)}")
    check_option("test_ratio", test_ratio, float, low=0, high=0.95, where=where)
    check_option("crop_padding", crop_padding, int, low=0, high=256, none=True, where=where)
    check_option("flip", flip, bool, none=True, where=where)


def torchvision(
    ctx: DatasetContext,
    dataset: str | None = None,
    root: str = "./data",
    download: bool = False,
    in_memory: bool | str = "auto",
    test_ratio: float = 0.2,
    crop_padding: int | None = None,
    flip: bool | None = None,
) -> DataSplits:
    """(replaced below by the table of supported datasets)"""
    where = f"config: {ctx.stage}.dataset"
    validate_options(where, dataset, root, download, in_memory, test_ratio, crop_padding, flip)
    assert dataset is not None  # validate_options
    spec = DATASETS[dataset]
    root_path = Path(os.path.expanduser(root))
    raw = {name: _build(dataset, spec, kw, root_path, download) for name, kw in _split_args(spec).items()}
    parts = {name: _items(dataset, spec, ds) for name, ds in raw.items()}
    classes = _classes(dataset, raw["train"], parts["train"][1])
    parts = {name: _remap(dataset, name, part, raw[name], classes) for name, part in parts.items()}
    for name, part in parts.items():
        _check(dataset, name, part, classes, spec)
    flip = spec.flip if flip is None else flip
    if not spec.arrays:
        if spec.test is None:  # SUN397 lists its files in the file system's order: sorted, the hold-out is seeded
            pairs = sorted(zip(*parts["train"], strict=True))
            parts = {"train": ([path for path, _ in pairs], [label for _, label in pairs])}
        return splits_from_files(
            classes,
            parts,
            ctx,
            f"dataset torchvision {dataset}",
            in_memory=in_memory,
            test_ratio=test_ratio if spec.test is None else 0.0,
            crop_padding=crop_padding,
            flip=flip,
        )
    sets = {name: _array_set(x, y) for name, (x, y) in parts.items()}
    height = int(sets["train"].images.shape[-2])
    return DataSplits(
        classes=classes,
        train=sets["train"],
        val=sets.get("val"),
        test=sets.get("test"),
        augment=Augment(crop_padding=round(height / 8) if crop_padding is None else crop_padding, flip=flip),
    )


cast(Any, torchvision).validate_options = validate_options  # a function attribute sftcore reads
torchvision.__doc__ = (
    "torchvision's classification datasets, read by torchvision's own classes from root "
    "(dataset: the class name; download: true uses torchvision's downloader). Supported, with their splits:\n\n"
    + "\n".join(f"  {name:<14} {_splits_text(spec)}" for name, spec in DATASETS.items())
)


def _split_args(spec: _Spec) -> dict[str, dict]:
    out = {"train": {**spec.extra, **spec.train}}
    if spec.val is not None:
        out["val"] = {**spec.extra, **spec.val}
    if spec.test is not None:
        out["test"] = {**spec.extra, **spec.test}
    return out


# --------------------------------------------------------------------------- torchvision's readers
def _build(dataset: str, spec: _Spec, kwargs: dict, root: Path, download: bool):
    """torchvision's dataset object for one split; anything it raises becomes one line naming the files."""
    from torchvision import datasets as tv

    where = f"dataset torchvision {dataset}"
    expected = f"torchvision expects {root.resolve()}/{spec.layout}"
    if not download and not root.is_dir():  # before torchvision, which makes folders there (Caltech101)
        raise SftError(
            f"{where} not found: {root.resolve()} is not a folder; {expected}; set download: true (needs "
            "internet) or copy the files there"
        )
    try:
        return getattr(tv, dataset)(root=str(root), download=download, **kwargs)
    except (MemoryError, KeyboardInterrupt):
        raise
    except ModuleNotFoundError as exc:
        raise SftError(f"{where} needs the package {exc.name} to read its files: pip install {exc.name}") from None
    except Exception as exc:  # noqa: BLE001 - torchvision's readers raise anything for a missing or broken file
        why = " ".join(str(exc).split()) or type(exc).__name__
        if download:
            raise SftError(
                f"{where}: could not download or read it into {root.resolve()} ({why}); download: true needs "
                f"internet; offline, copy the files there: {expected}"
            ) from None
        if isinstance(exc, RuntimeError) and "not found" in why.lower():
            raise SftError(
                f"{where} not found or incomplete under {root.resolve()}: {expected} (torchvision also checks "
                "the md5 of some files); set download: true (needs internet) or copy the files there"
            ) from None
        raise SftError(
            f"{where}: cannot read its files under {root.resolve()} ({type(exc).__name__}: {why}); they are "
            f"incomplete or corrupt: {expected}; delete them and download again"
        ) from None


_NUMBERED = ("SVHN", "GTSRB")  # torchvision has no names for these classes: named by their number


def _classes(dataset: str, ds, labels: list[int]) -> list[str]:
    """Class names as torchvision knows them (``classes``, Caltech-101's ``categories``), else numbers."""
    names = None if dataset in _NUMBERED else getattr(ds, "classes", None) or getattr(ds, "categories", None)
    if names:
        return [str(n) for n in names]
    return [str(i) for i in range(max(labels, default=-1) + 1)]


def _items(dataset: str, spec: _Spec, ds) -> tuple[Any, list[int]]:
    """(images or file paths, labels) of one torchvision dataset object, from where torchvision keeps them."""
    import numpy as np

    if spec.arrays:
        labels = getattr(ds, "targets", None)
        labels = getattr(ds, "labels", None) if labels is None else labels
        return ds.data, np.asarray(labels).astype(np.int64).tolist()
    samples = getattr(ds, "_samples", None)
    samples = getattr(ds, "samples", None) if samples is None else samples
    if samples is not None:
        return [str(p) for p, _ in samples], [int(y) for _, y in samples]
    files = getattr(ds, "_image_files", None)
    files = getattr(ds, "_images", None) if files is None else files
    if files is not None:
        return [str(p) for p in files], [int(y) for y in ds._labels]
    if dataset == "Caltech101":
        folder = os.path.join(ds.root, "101_ObjectCategories")
        paths = [os.path.join(folder, ds.categories[y], f"image_{i:04d}.jpg") for i, y in zip(ds.index, ds.y)]
        return paths, [int(y) for y in ds.y]
    raise SftError(
        f"dataset torchvision {dataset}: this torchvision keeps {dataset}'s file list where sftcore does not "
        "look (_samples, samples, _image_files, _images); use the torchvision version sftcore pins"
    )


def _remap(dataset: str, split: str, part: tuple[Any, list[int]], ds, classes: list[str]):
    """Labels onto the training split's classes by name: DTD, Food-101 and the folder-based datasets number
    each split's classes from that split's own files, so a split lacking a class would shift every label."""
    own = getattr(ds, "classes", None)
    if split == "train" or dataset in _NUMBERED or not own or [str(c) for c in own] == classes:
        return part
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(own[y]) for y in set(part[1]) if str(own[y]) not in index})
    if unknown:
        raise SftError(
            f"dataset torchvision {dataset}: the {split} split has class(es) {', '.join(unknown[:5])} that the "
            "train split lacks; every class needs training images: the files are incomplete, download them again"
        )
    return part[0], [index[str(own[y])] for y in part[1]]


def _check(dataset: str, split: str, part: tuple[Any, list[int]], classes: list[str], spec: _Spec) -> None:
    """Labels in range, every class with training images, every listed image file present: one line each,
    before anything trains."""
    x, labels = part
    where = f"dataset torchvision {dataset}"
    if not labels:
        raise SftError(f"{where}: the {split} split holds no images; the annotation files are empty or truncated")
    bad = [y for y in labels if not 0 <= y < len(classes)]
    if bad:
        raise SftError(
            f"{where}: the {split} split has label {bad[0]}, outside 0..{len(classes) - 1} (its "
            f"{len(classes)} classes); the annotation files do not belong together; download them again"
        )
    empty = sorted(set(range(len(classes))) - set(labels)) if split == "train" else []
    if empty:
        raise SftError(
            f"{where}: class(es) {', '.join(classes[i] for i in empty[:5])} have no training images; the "
            "files are incomplete: download them again"
        )
    if not spec.arrays:
        missing = [p for p in x if not os.path.isfile(p)]
        if missing:
            raise SftError(
                f"{where}: {len(missing)} image file(s) of the {split} split are missing, the first "
                f"{missing[0]}; the files are incomplete: download them again"
            )


def _array_set(data, labels: list[int]):
    """torchvision's uint8 array ([N, H, W] grey or [N, 3, H, W]) as an ImageSet, without a copy per image."""
    import numpy as np
    import torch

    from sftcore.api import ImageSet

    a = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if a.dtype != np.uint8 or a.ndim not in (3, 4):
        raise SftError(f"dataset torchvision: expected uint8 images, got {a.dtype} {tuple(a.shape)}")
    a = a[:, None] if a.ndim == 3 else a
    return ImageSet(images=torch.from_numpy(np.ascontiguousarray(a)), labels=torch.tensor(labels, dtype=torch.int64))
