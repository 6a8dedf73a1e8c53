"""Writers of tiny fake datasets in the real on-disk formats, so tests never download anything."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _batch(rng, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path: Path, obj: dict, str_keys: bool) -> None:
    if not str_keys:  # what Python 2's pickles look like when read with encoding="bytes"
        obj = {k.encode(): v for k, v in obj.items()}
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar10(root, per_batch: int = 4, n_test: int = 10, seed: int = 0, str_keys: bool = False) -> dict:
    """torchvision's cifar-10-batches-py folder: 5 training batches, a test batch, batches.meta.

    Labels cycle through the 10 classes so every class appears. Returns what was written.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train, train_labels = [], []
    for b in range(1, 6):
        data = _batch(rng, per_batch)
        labels = [(b * per_batch + i) % 10 for i in range(per_batch)]
        _dump(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5", "data": data,
                                            "labels": labels, "filenames": [f"{b}_{i}.png" for i in range(per_batch)]},
              str_keys)
        train.append(data)
        train_labels += labels
    test = _batch(rng, n_test)
    test_labels = [i % 10 for i in range(n_test)]
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": test, "labels": test_labels}, str_keys)
    names = [n.encode() for n in CIFAR10_NAMES] if not str_keys else list(CIFAR10_NAMES)
    _dump(folder / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names, "num_vis": 3072},
          str_keys)
    return {"folder": folder, "train": np.concatenate(train), "train_labels": train_labels, "test": test,
            "test_labels": test_labels, "classes": list(CIFAR10_NAMES)}


def write_cifar100(root, n_train: int = 40, n_test: int = 20, seed: int = 1) -> dict:
    """torchvision's cifar-100-python folder (train, test, meta) with 100 fine and 20 coarse classes."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    out = {"folder": folder}
    for split, n in (("train", n_train), ("test", n_test)):
        data = _batch(rng, n)
        fine = [int(x) for x in rng.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        _dump(folder / split, {"data": data, "fine_labels": fine, "coarse_labels": coarse}, str_keys=False)
        out[split], out[f"{split}_fine"], out[f"{split}_coarse"] = data, fine, coarse
    out["fine_names"] = [f"fine_{i:02d}" for i in range(100)]
    out["coarse_names"] = [f"coarse_{i:02d}" for i in range(20)]
    _dump(folder / "meta", {"fine_label_names": [n.encode() for n in out["fine_names"]],
                            "coarse_label_names": [n.encode() for n in out["coarse_names"]]}, str_keys=False)
    return out


def cifar_archive(written: dict, path) -> Path:
    """A .tar.gz holding the written folder at its top level, as the real download does."""
    path = Path(path)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(written["folder"], arcname=written["folder"].name)
    return path


def write_image(path, size=(40, 30), mode: str = "RGB", color=(200, 30, 60)) -> Path:
    """One image file of ``size`` (W, H) and PIL ``mode``, filled with ``color``; format from the suffix."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L" and isinstance(color, tuple):
        color = color[0]
    elif mode == "RGBA" and len(color) == 3:
        color = (*color, 255)
    Image.new(mode, size, color).save(path)
    return path
