"""``npz``: your images as numpy arrays in one ``.npz`` file.

Arrays are the common way small image sets travel: ``keras.datasets`` files (``x_train``,
``y_train``, ...) and MedMNIST downloads (``train_images``, ``train_labels``, ...) both load as they
are. Every problem with the file is one line that names the array and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sftcore.api import Augment, DatasetContext, DataSplits, ImageSet
from sftcore.errors import ConfigError

# split -> (image array names, label array names), Keras style first, then MedMNIST style
NAMES = {
    "train": (("x_train", "train_images"), ("y_train", "train_labels")),
    "val": (("x_val", "val_images"), ("y_val", "val_labels")),
    "test": (("x_test", "test_images"), ("y_test", "test_labels")),
}
LAYOUTS = ("auto", "nhwc", "nchw")
_SAVE = "numpy.savez(path, x_train=images, y_train=labels, x_test=..., y_test=..., classes=names)"


def npz(ctx: DatasetContext, path: str | None = None, layout: str = "auto", classes: list[str] | None = None,
        crop_padding: int | None = None, flip: bool = True) -> DataSplits:
    """Your images as numpy arrays in a .npz file (x_train/y_train or train_images/train_labels)"""
    where = f"config: {ctx.stage}.dataset npz"
    if path is None:
        raise ConfigError(f"{where} needs path: a .npz file written with {_SAVE}")
    if layout not in LAYOUTS:
        raise ConfigError(f"{where}: layout must be auto, nhwc or nchw, got {layout!r}")
    if not isinstance(flip, bool):
        raise ConfigError(f"{where}: flip must be true or false, got {flip!r}")
    if crop_padding is not None and (isinstance(crop_padding, bool) or not isinstance(crop_padding, int)
                                     or crop_padding < 0):
        raise ConfigError(f"{where}: crop_padding must be an integer >= 0, got {crop_padding!r}")
    arrays = _read(Path(path).expanduser(), where)
    found = {split: _pair(arrays, split, where) for split in NAMES}
    if found["train"] is None:
        raise ConfigError(f"{where}: '{path}' has no training images: save them as x_train and y_train "
                          f"(or train_images and train_labels); it has {sorted(arrays) or 'no arrays'}")
    sets = {split: _image_set(arrays, names, layout, where) if names else None for split, names in found.items()}
    names = _class_names(classes, arrays, sets, where)
    shape = sets["train"].image_shape
    for split, images in sets.items():
        if images is not None and images.image_shape != shape:
            raise ConfigError(f"{where}: {found[split][0]} images are {images.image_shape} (C, H, W) but the "
                              f"training images are {shape}; all splits must have one size")
    mean, std = _mean_std(sets["train"].images)
    pad = round(shape[1] / 8) if crop_padding is None else crop_padding
    return DataSplits(classes=names, train=sets["train"], val=sets["val"], test=sets["test"], mean=mean, std=std,
                      augment=Augment(crop_padding=pad, flip=flip))


def _read(path: Path, where: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise ConfigError(f"{where}: file '{path}' not found; set path to a .npz file written with {_SAVE}")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ConfigError(f"{where}: '{path}' is a single array, not an .npz archive; write it with {_SAVE}")
        with data:
            return {name: data[name] for name in data.files}
    except ConfigError:
        raise
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise ConfigError(f"{where}: '{path}' holds object arrays; save numbers and strings only, e.g. "
                              "classes=numpy.array(names, dtype=str)") from None
        raise ConfigError(f"{where}: cannot read '{path}': {str(exc).splitlines()[0]}; write it with "
                          f"{_SAVE}") from None
    except Exception as exc:  # a truncated or foreign file: BadZipFile, OSError, EOFError ...
        raise ConfigError(f"{where}: cannot read '{path}' as .npz ({type(exc).__name__}); write it with "
                          f"{_SAVE}") from None


def _pair(arrays: dict, split: str, where: str) -> tuple[str, str] | None:
    """The (images, labels) array names of a split present in the file, or None."""
    image_names, label_names = NAMES[split]
    for x, y in zip(image_names, label_names):
        if x in arrays and y in arrays:
            return x, y
        if x in arrays or y in arrays:
            have, missing = (x, y) if x in arrays else (y, x)
            raise ConfigError(f"{where}: the file has {have} but no {missing}; save both or neither")
    return None


def _image_set(arrays: dict, names: tuple[str, str], layout: str, where: str) -> ImageSet:
    x_name, y_name = names
    images, labels = arrays[x_name], arrays[y_name]
    if images.dtype != np.uint8:
        raise ConfigError(f"{where}: {x_name} is {images.dtype}; save pixels as uint8 0..255, e.g. "
                          "(x * 255).round().astype('uint8') for floats in [0, 1]")
    if images.ndim == 3:  # [N, H, W] grayscale
        images = images[:, None]
    elif images.ndim == 4:
        images = _to_nchw(images, layout, x_name, where)
    else:
        raise ConfigError(f"{where}: {x_name} has shape {images.shape}; images must be [N, H, W], [N, H, W, C] "
                          "or [N, C, H, W]")
    if images.shape[1] not in (1, 3):
        raise ConfigError(f"{where}: {x_name} has {images.shape[1]} channels; sftcore takes 1 (gray) or 3 (RGB)")
    if labels.ndim == 2 and labels.shape[1] == 1:  # MedMNIST's [N, 1]
        labels = labels[:, 0]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"{where}: {y_name} is {labels.dtype} of shape {labels.shape}; labels must be integers "
                          "[N] (class indices, not one-hot)")
    if len(labels) != len(images):
        raise ConfigError(f"{where}: {x_name} has {len(images)} images but {y_name} has {len(labels)} labels")
    if len(labels) and labels.min() < 0:
        raise ConfigError(f"{where}: {y_name} has a negative label ({labels.min()}); labels are class indices 0..K-1")
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64)))


def _to_nchw(images: np.ndarray, layout: str, name: str, where: str) -> np.ndarray:
    if layout == "auto":
        last, second = images.shape[3] in (1, 3), images.shape[1] in (1, 3)
        if not last and not second:
            raise ConfigError(f"{where}: cannot tell the channels of {name} {images.shape}: neither dim 1 nor "
                              "dim 3 is 1 or 3; set layout: nhwc or nchw")
        layout = "nhwc" if last else "nchw"  # both: the numpy/PIL convention, channels last
    return images.transpose(0, 3, 1, 2) if layout == "nhwc" else images


def _class_names(classes, arrays: dict, sets: dict, where: str) -> list[str]:
    top = max((int(s.labels.max()) for s in sets.values() if s is not None and len(s)), default=-1)
    if classes is None and "classes" in arrays:
        stored = arrays["classes"]
        if stored.ndim != 1 or stored.dtype.kind not in "US":
            raise ConfigError(f"{where}: the file's classes array is {stored.dtype} {stored.shape}; save "
                              "classes=numpy.array(names, dtype=str)")
        classes = [str(c) for c in stored]
    if classes is None:
        return [str(i) for i in range(top + 1)]
    if isinstance(classes, str) or not isinstance(classes, (list, tuple)) or not all(
            isinstance(c, str) for c in classes):
        raise ConfigError(f"{where}: classes must be a list of names, got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"{where}: classes has duplicate names; each class needs its own")
    if top >= len(classes):
        raise ConfigError(f"{where}: a label is {top} but there are {len(classes)} class names; "
                          f"give one name per class index 0..{top}")
    return list(classes)


def _mean_std(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel statistics of the training pixels (the normalisation, unless the backbone brings its own),
    a chunk at a time so that a large set is never copied as floats."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].double().div_(255)
        total += x.sum((0, 2, 3))
        squares += x.pow_(2).sum((0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count
    std = (squares / count - mean.pow(2)).clamp_min(0).sqrt()
    return mean.tolist(), [s if s > 1e-6 else 1.0 for s in std.tolist()]
