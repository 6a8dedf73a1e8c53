"""The npz dataset on files written in tmp: both naming styles, layouts, class names, normalisation,
every error as one line, and a tiny run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sftcore.api import Augment, DatasetContext
from sftcore.errors import ConfigError
from sftcore.testing import create, run_tiny

CTX = DatasetContext(seed=0, input_size=(3, 16, 16), stage="finetune")


def images(n: int, shape=(8, 8, 3), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def load(path, **options):
    return create("datasets", "npz", CTX, path=str(path), **options)


def error(path, **options) -> str:
    with pytest.raises(ConfigError) as err:
        load(path, **options)
    message = str(err.value)
    assert "\n" not in message and message.startswith("config: finetune.dataset npz")
    return message


# --------------------------------------------------------------------------- what it reads
def test_keras_style_nhwc_with_test_split_and_class_names(tmp_path):
    x_train, x_test = images(6), images(4, seed=1)
    y_train, y_test = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8), np.array([2, 1, 0, 0])
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             classes=np.array(["cat", "dog", "fox"]))
    splits = load(path)
    assert splits.classes == ["cat", "dog", "fox"]
    assert splits.train.images.dtype == torch.uint8 and splits.train.image_shape == (3, 8, 8)
    assert torch.equal(splits.train.images, torch.from_numpy(x_train).permute(0, 3, 1, 2))
    assert splits.train.labels.dtype == torch.int64 and splits.train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert torch.equal(splits.test.images, torch.from_numpy(x_test).permute(0, 3, 1, 2))
    assert splits.test.labels.tolist() == [2, 1, 0, 0]
    assert splits.val is None  # the runner holds validation out of train
    pixels = x_train.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(splits.mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(splits.std, pixels.std(0), rtol=1e-9)
    assert splits.augment == Augment(crop_padding=1, flip=True)  # round(8 / 8), as image_folder


def test_medmnist_style_grayscale_with_val_and_column_labels(tmp_path):
    path = tmp_path / "pathmnist.npz"
    np.savez(path, train_images=images(5, (6, 6)), train_labels=np.array([[0], [1], [0], [1], [1]]),
             val_images=images(2, (6, 6), seed=2), val_labels=np.array([[1], [0]]),
             test_images=images(3, (6, 6), seed=3), test_labels=np.array([[0], [0], [1]]))
    splits = load(path, classes=["normal", "tumour"], flip=False, crop_padding=0)
    assert splits.classes == ["normal", "tumour"]
    assert splits.train.image_shape == (1, 6, 6)
    assert splits.val.labels.tolist() == [1, 0] and len(splits.test) == 3
    assert splits.augment == Augment(crop_padding=0, flip=False)


def test_layouts_nchw_detected_and_forced(tmp_path):
    nchw = images(4, (3, 8, 8))
    path = tmp_path / "nchw.npz"
    np.savez(path, x_train=nchw, y_train=np.arange(4))
    splits = load(path)
    assert torch.equal(splits.train.images, torch.from_numpy(nchw))
    assert splits.classes == ["0", "1", "2", "3"]  # no names anywhere: the label indices
    square = images(4, (3, 3, 3))  # 3x3 RGB: both dims could be channels
    np.savez(path, x_train=square, y_train=np.arange(4))
    assert torch.equal(load(path).train.images, torch.from_numpy(square).permute(0, 3, 1, 2))  # channels last
    assert torch.equal(load(path, layout="nchw").train.images, torch.from_numpy(square))


def test_a_tiny_run_on_an_npz_file(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    x = rng.integers(0, 80, (30, 16, 16, 3), dtype=np.uint8)
    x[np.arange(30), :, :, labels] += 150  # the class is the brightest colour channel
    path = tmp_path / "colours.npz"
    np.savez(path, x_train=x, y_train=labels, x_test=x[::3], y_test=labels[::3], classes=np.array(["r", "g", "b"]))
    summary = run_tiny(tmp_path / "run", dataset={"name": "npz", "path": str(path)}, epochs=1)
    finetune = summary["finetune"]
    assert finetune["dataset"] == "npz" and finetune["classes"] == 3
    assert finetune["train_examples"] + finetune["val_examples"] == 30 and finetune["test_examples"] == 10


# --------------------------------------------------------------------------- errors, one line each
def test_missing_file_and_path(tmp_path):
    assert "file '" in error(tmp_path / "nope.npz") and "not found; set path to a .npz file" in error(
        tmp_path / "nope.npz")
    with pytest.raises(ConfigError, match="npz needs path: a .npz file written with numpy.savez"):
        create("datasets", "npz", CTX)


def test_files_that_are_not_npz(tmp_path):
    single = tmp_path / "one.npy"
    np.save(single, images(2))
    assert "is a single array, not an .npz archive" in error(single)
    text = tmp_path / "notes.npz"
    text.write_text("not a zip file")
    assert "cannot read" in error(text)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x_train=images(2), y_train=np.arange(2), classes=np.array(["a", None], dtype=object))
    assert "holds object arrays" in error(objects)


def test_wrong_or_missing_arrays(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=images(2), labels=np.arange(2))
    assert "has no training images: save them as x_train and y_train" in error(path)
    assert "it has ['images', 'labels']" in error(path)
    np.savez(path, x_train=images(2), labels=np.arange(2))
    assert "the file has x_train but no y_train" in error(path)
    np.savez(path, x_train=images(2).astype(np.float32) / 255, y_train=np.arange(2))
    assert "x_train is float32; save pixels as uint8" in error(path)
    np.savez(path, x_train=images(2), y_train=np.eye(2))
    assert "y_train is float64 of shape (2, 2); labels must be integers" in error(path)
    np.savez(path, x_train=images(3), y_train=np.arange(2))
    assert "x_train has 3 images but y_train has 2 labels" in error(path)
    np.savez(path, x_train=images(2), y_train=np.array([0, -1]))
    assert "negative label" in error(path)
    np.savez(path, x_train=images(2, (8, 8, 4)), y_train=np.arange(2))
    assert "cannot tell the channels" in error(path)
    assert "has 4 channels; sftcore takes 1 (gray) or 3 (RGB)" in error(path, layout="nhwc")
    np.savez(path, x_train=images(2), y_train=np.arange(2), x_test=images(2, (4, 4, 3)), y_test=np.arange(2))
    assert "x_test images are (3, 4, 4) (C, H, W) but the training images are (3, 8, 8)" in error(path)


def test_class_names_must_cover_the_labels(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=images(3), y_train=np.array([0, 1, 2]))
    assert "a label is 2 but there are 2 class names" in error(path, classes=["a", "b"])
    assert "classes has duplicate names" in error(path, classes=["a", "a", "b"])
    np.savez(path, x_train=images(3), y_train=np.array([0, 1, 2]), classes=np.array([[1, 2, 3]]))
    assert "the file's classes array is int64 (1, 3)" in error(path)


@pytest.mark.parametrize("options, message", [
    ({"layout": "hwc"}, "layout must be auto, nhwc or nchw"),
    ({"flip": "yes"}, "flip must be true or false"),
    ({"crop_padding": -2}, "crop_padding must be an integer >= 0"),
])
def test_options_are_checked(tmp_path, options, message):
    assert message in error(tmp_path / "unused.npz", **options)
