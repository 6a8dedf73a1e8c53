"""torchvision datasets: each one faked in its exact on-disk layout (as torchvision's own test suite fakes them),
read by torchvision's readers through sftcore; splits, class names, subsets, hostile files as one line."""

import json
import os
from pathlib import Path
import struct

import numpy as np
import pytest
import torch

from fakedata import write_image
from sftcore.api import DatasetContext, FileSet, ImageSet
from sftcore.errors import ConfigError, SftError
from sftcore_plugins.datasets.torchvision_datasets import DATASETS, torchvision

pytest.importorskip("torchvision")


def ctx(c=3, h=16, w=16, seed=0, max_memory=4 << 30):
    return DatasetContext(seed=seed, input_size=(c, h, w), stage="finetune", max_memory_bytes=max_memory)


def color(label: int):
    return (40 + 50 * (label % 4), 200 - 30 * (label % 5), 90)


@pytest.fixture
def no_md5(monkeypatch):
    """torchvision md5-checks Flowers102's, SVHN's and STL-10's files: fakes pass if they exist (as in its tests)."""
    from torchvision.datasets import flowers102, stl10, svhn

    for module in (flowers102, stl10, svhn):
        monkeypatch.setattr(module, "check_integrity", lambda path, md5=None: os.path.isfile(path))


# --------------------------------------------------------------------------- fakes, one per on-disk format
def write_mnist(root, folder="MNIST", n_train=20, n_test=10):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


def write_svhn(root, n_train=20, n_test=10):
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # 1..10, 10 is the digit 0
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
    return root


def write_stl10(root, n_train=20, n_test=10):
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(folder / f"{split}_X.bin")
        (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")  # 1..10 on disk
    rng.integers(0, 256, 2 * 3 * 96 * 96, dtype=np.uint8).tofile(folder / "unlabeled_X.bin")  # checked, unused
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return root


def write_flowers102(root, per_split=1):
    from scipy.io import savemat

    base = root / "flowers-102"
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    image_id = 0
    for key in ids:
        for cls in range(102):
            for _ in range(per_split):
                image_id += 1
                write_image(base / "jpg" / f"image_{image_id:05d}.jpg", (12 + image_id % 7, 10), "RGB", color(cls))
                labels.append(cls + 1)
                ids[key].append(image_id)
    savemat(base / "imagelabels.mat", {"labels": np.array(labels)})
    savemat(base / "setid.mat", {k: np.array(v) for k, v in ids.items()})
    return root


def write_dtd(root, classes=("banded", "dotted", "zigzagged"), per_split=2):
    data = root / "dtd" / "dtd"
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, cls in enumerate(classes):
        for split in lines:
            for i in range(per_split):
                name = f"{cls}_{split}_{i:04d}.jpg"
                write_image(data / "images" / cls / name, (20, 14), "RGB", color(c))
                lines[split].append(f"{cls}/{name}")
    (data / "labels").mkdir(parents=True)
    for split, entries in lines.items():
        for partition in range(1, 11):
            (data / "labels" / f"{split}{partition}.txt").write_text("\n".join(entries) + "\n")
    return root


def write_eurosat(root, classes=("AnnualCrop", "Forest", "River"), per_class=5):
    for c, cls in enumerate(classes):
        for i in range(per_class):
            write_image(root / "eurosat" / "2750" / cls / f"{cls}_{i + 1}.jpg", (64, 64), "RGB", color(c))
    return root


def write_gtsrb(root, classes=3, per_class=3):
    base = root / "gtsrb"
    for c in range(classes):
        for i in range(per_class):
            write_image(base / "GTSRB" / "Training" / f"{c:05d}" / f"00000_{i:05d}.ppm", (30, 31), "RGB", color(c))
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for i in range(classes * 2):
        name = f"{i:05d}.ppm"
        write_image(base / "GTSRB" / "Final_Test" / "Images" / name, (33, 29), "RGB", color(i % classes))
        rows.append(f"{name};33;29;5;5;28;24;{i % classes}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


def write_food101(root, classes=("apple_pie", "pizza", "sushi"), per_split=2):
    base = root / "food-101"
    meta: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    n = 0
    for c, cls in enumerate(classes):
        for split in meta:
            for _ in range(per_split):
                n += 1
                write_image(base / "images" / cls / f"{n}.jpg", (24, 18), "RGB", color(c))
                meta[split].setdefault(cls, []).append(f"{cls}/{n}")
    (base / "meta").mkdir(parents=True)
    for split, entries in meta.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(entries))
    return root


def write_pets(root, breeds=("Abyssinian", "american_bulldog", "Bengal"), per_split=2):
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    n = 0
    for split in ("trainval", "test"):
        lines = []
        for b, breed in enumerate(breeds):
            for _ in range(per_split):
                n += 1
                write_image(base / "images" / f"{breed}_{n}.jpg", (30, 22), "RGB", color(b))
                lines.append(f"{breed}_{n} {b + 1} {1 + b % 2} 1")  # id, class 1..37, species 1..2, breed id
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_aircraft(root, variants=("707-320", "A300B4", "Cessna 172"), per_split=2):
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 1000000
    for split in ("train", "val", "test"):
        lines = []
        for v, variant in enumerate(variants):
            for _ in range(per_split):
                n += 1
                write_image(data / "images" / f"{n}.jpg", (40, 26), "RGB", color(v))
                lines.append(f"{n} {variant}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_cars(root, names=("AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"), per_split=2):
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array(names, dtype=object)})
    for split, annos in (("train", base / "devkit" / "cars_train_annos.mat"),
                         ("test", base / "cars_test_annos_withlabels.mat")):
        rows = []
        for c in range(len(names)):
            for i in range(per_split):
                fname = f"{c:03d}{i:02d}.jpg"
                write_image(base / f"cars_{split}" / fname, (36, 24), "RGB", color(c))
                rows.append((fname, c + 1))
        savemat(annos, {"annotations": np.array(rows, dtype=[("fname", "O"), ("class", "O")])})
    return root


def write_caltech101(root, classes=("accordion", "airplanes", "anchor"), per_class=4):
    base = root / "caltech101" / "101_ObjectCategories"
    for c, cls in enumerate(("BACKGROUND_Google", *classes)):
        for i in range(per_class):
            write_image(base / cls / f"image_{i + 1:04d}.jpg", (30, 20), "RGB", color(c))
    return root


def write_country211(root, codes=("AD", "AE", "AF"), per_split=2):
    for c, code in enumerate(codes):
        for split in ("train", "valid", "test"):
            for i in range(per_split):
                write_image(root / "country211" / split / code / f"{i}.jpg", (20, 20), "RGB", color(c))
    return root


def write_sun397(root, classes=("a/abbey", "b/bakery/shop", "c/canyon"), per_class=4):
    data = root / "SUN397"
    data.mkdir(parents=True)
    (data / "ClassName.txt").write_text("".join(f"/{c}\n" for c in classes))
    for c, cls in enumerate(classes):
        for i in range(per_class):
            write_image(data / cls / f"sun_{c}{i:03d}.jpg", (26, 20), "RGB", color(c))
    return root


WRITERS = {"MNIST": write_mnist, "FashionMNIST": lambda root: write_mnist(root, "FashionMNIST"),
           "SVHN": write_svhn, "STL10": write_stl10, "Flowers102": write_flowers102, "DTD": write_dtd,
           "EuroSAT": write_eurosat, "GTSRB": write_gtsrb, "Food101": write_food101, "OxfordIIITPet": write_pets,
           "FGVCAircraft": write_aircraft, "StanfordCars": write_cars, "Caltech101": write_caltech101,
           "Country211": write_country211, "SUN397": write_sun397,
           "KMNIST": lambda root: write_mnist(root, "KMNIST")}
# dataset -> (train, val or None, test) sizes, the first class names, channels and native size (arrays only)
EXPECTED = {
    "MNIST": ((20, None, 10), ["0 - zero", "1 - one"], (1, 28, 28)),
    "FashionMNIST": ((20, None, 10), ["T-shirt/top", "Trouser"], (1, 28, 28)),
    "SVHN": ((20, None, 10), ["0", "1"], (3, 32, 32)),
    "STL10": ((20, None, 10), ["airplane", "bird"], (3, 96, 96)),
    "Flowers102": ((102, 102, 102), ["pink primrose", "hard-leaved pocket orchid"], None),
    "DTD": ((6, 6, 6), ["banded", "dotted", "zigzagged"], None),
    "EuroSAT": ((12, None, 3), ["AnnualCrop", "Forest", "River"], None),
    "GTSRB": ((9, None, 6), ["0", "1", "2"], None),
    "Food101": ((6, None, 6), ["apple_pie", "pizza", "sushi"], None),
    "OxfordIIITPet": ((6, None, 6), ["Abyssinian", "American Bulldog", "Bengal"], None),
    "FGVCAircraft": ((6, 6, 6), ["707-320", "A300B4", "Cessna 172"], None),
    "StanfordCars": ((6, None, 6), ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"], None),
    "Caltech101": ((9, None, 3), ["accordion", "airplanes", "anchor"], None),
    "Country211": ((6, 6, 6), ["AD", "AE", "AF"], None),
    "SUN397": ((9, None, 3), ["abbey", "bakery/shop", "canyon"], None),
    "KMNIST": ((20, None, 10), ["o", "ki"], (1, 28, 28)),
}


def test_every_supported_dataset_is_faked_here():
    assert sorted(WRITERS) == sorted(DATASETS)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_dataset_loads_maps_splits_names_classes_and_subsets(name, tmp_path, no_md5):
    from sftcore._data.batches import few_label_index

    root = WRITERS[name](tmp_path / "data")
    s = torchvision(ctx(), dataset=name, root=str(root))
    (n_train, n_val, n_test), first, native = EXPECTED[name]
    assert len(s.train) == n_train and len(s.test) == n_test
    assert (s.val is None) if n_val is None else len(s.val) == n_val
    assert s.classes[: len(first)] == first
    shape = native or (3, 16, 16)
    for part in (s.train, s.val, s.test):
        if part is not None:
            assert isinstance(part, ImageSet) and part.images.dtype == torch.uint8
            assert tuple(part.images.shape[1:]) == shape and part.labels.dtype == torch.int64
            assert 0 <= int(part.labels.min()) and int(part.labels.max()) < len(s.classes)
    assert set(s.train.labels.tolist()) == set(range(min(len(s.classes), n_train)))
    present = len(set(s.train.labels.tolist()))
    for protocol, size in (({"labels_per_class": 1}, present), ({"fraction": 1.0}, n_train),
                           ({"train_examples": present}, present), ({"train_examples": n_train}, n_train)):
        sub = s.train.subset(few_label_index(s.train.labels, seed=0, **protocol))
        assert len(sub) == size and len(set(sub.labels.tolist())) == present, protocol  # every class kept


def test_labels_and_pixels_follow_the_annotations(tmp_path, no_md5):
    """SVHN's 10 is the digit 0; Flowers102's 1-based labels; DTD's images land in their class."""
    s = torchvision(ctx(), dataset="SVHN", root=str(write_svhn(tmp_path / "svhn")))
    assert s.train.labels[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    f = torchvision(ctx(), dataset="Flowers102", root=str(write_flowers102(tmp_path / "fl")))
    assert f.train.labels.tolist() == list(range(102)) and f.test.labels.tolist() == list(range(102))
    d = torchvision(ctx(), dataset="DTD", root=str(write_dtd(tmp_path / "dtd")))
    for label in range(3):
        mean = d.train.images[d.train.labels == label].float().mean((0, 2, 3))
        assert abs(float(mean[0]) - color(label)[0]) < 12
    assert d.augment.flip and d.augment.crop_padding == 2
    m = torchvision(ctx(), dataset="MNIST", root=str(write_mnist(tmp_path / "mnist")))
    assert not m.augment.flip and m.augment.crop_padding == 4  # round(28 / 8): digits are never mirrored


def test_a_split_lacking_a_class_keeps_the_training_numbering(tmp_path):
    """DTD numbers each split's classes from its own file: without a class in test, labels are mapped by name."""
    root = write_dtd(tmp_path / "data")
    labels = root / "dtd" / "dtd" / "labels" / "test1.txt"
    labels.write_text("".join(line + "\n" for line in labels.read_text().split() if not line.startswith("banded")))
    s = torchvision(ctx(), dataset="DTD", root=str(root))
    assert s.test.labels.tolist() == [1, 1, 2, 2]


def test_no_official_test_split_is_a_seeded_stratified_hold_out(tmp_path):
    root = write_eurosat(tmp_path / "data", per_class=10)
    a = torchvision(ctx(seed=1), dataset="EuroSAT", root=str(root), in_memory=False)
    b = torchvision(ctx(seed=1), dataset="EuroSAT", root=str(root), in_memory=False)
    c = torchvision(ctx(seed=2), dataset="EuroSAT", root=str(root), in_memory=False, test_ratio=0.5)
    assert isinstance(a.train, FileSet) and a.test.load.paths == b.test.load.paths
    assert a.test.labels.tolist() == [0, 0, 1, 1, 2, 2] and len(c.test) == 15
    assert not set(a.train.load.paths) & set(a.test.load.paths)


def test_streams_when_it_does_not_fit_in_memory(tmp_path):
    root = write_food101(tmp_path / "data")
    small = torchvision(ctx(max_memory=100), dataset="Food101", root=str(root))
    mem = torchvision(ctx(), dataset="Food101", root=str(root))
    assert isinstance(small.train, FileSet) and isinstance(mem.train, ImageSet)
    assert all(torch.equal(small.train.load(i), mem.train.images[i]) for i in range(len(mem.train)))
    grey = torchvision(ctx(c=1, h=8, w=10), dataset="Food101", root=str(root))
    assert grey.train.images.shape[1:] == (1, 8, 10)


def test_the_docstring_lists_every_dataset_with_its_splits():
    for name in DATASETS:
        assert name in torchvision.__doc__
    assert "Flowers102     train, val, test" in torchvision.__doc__


# --------------------------------------------------------------------------- hostile
def one_line(exc_info, *parts):
    msg = str(exc_info.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg
    return msg


def test_options_are_checked(tmp_path):
    for bad, says in (({}, "needs dataset"), ({"dataset": "flowers102"}, "did you mean Flowers102"),
                      ({"dataset": "ImageNet"}, "use one of"), ({"dataset": "MNIST", "download": "yes"}, "download"),
                      ({"dataset": "MNIST", "in_memory": 2}, "in_memory"),
                      ({"dataset": "MNIST", "test_ratio": 1.5}, "test_ratio"),
                      ({"dataset": "MNIST", "flip": "no"}, "flip")):
        with pytest.raises(ConfigError) as exc:
            torchvision(ctx(), root=str(tmp_path), **bad)
        one_line(exc, says)


def test_missing_root_names_the_expected_files_and_download(tmp_path, no_md5):
    for name in ("Flowers102", "MNIST", "DTD", "SVHN", "Caltech101"):
        with pytest.raises(SftError) as exc:
            torchvision(ctx(), dataset=name, root=str(tmp_path / "nothing"))
        one_line(exc, str((tmp_path / "nothing").resolve()), DATASETS[name].layout, "download: true")
        assert not (tmp_path / "nothing").exists()  # torchvision's Caltech101 would make folders there
        with pytest.raises(SftError) as exc:  # the root is there, the dataset is not
            torchvision(ctx(), dataset=name, root=str(tmp_path))
        one_line(exc, str(tmp_path.resolve()), DATASETS[name].layout, "download: true")


def test_missing_annotation_file_is_one_line(tmp_path, no_md5):
    root = write_dtd(tmp_path / "dtd")
    (root / "dtd" / "dtd" / "labels" / "val1.txt").unlink()
    with pytest.raises(SftError) as exc:
        torchvision(ctx(), dataset="DTD", root=str(root))
    one_line(exc, "val1.txt")
    root = write_flowers102(tmp_path / "fl")
    (root / "flowers-102" / "setid.mat").unlink()
    with pytest.raises(SftError) as exc:
        torchvision(ctx(), dataset="Flowers102", root=str(root))
    one_line(exc, "flowers-102/{jpg")
    root = write_food101(tmp_path / "food")
    (root / "food-101" / "meta" / "test.json").write_text("{not json")
    with pytest.raises(SftError) as exc:
        torchvision(ctx(), dataset="Food101", root=str(root))
    one_line(exc, "cannot read its files", "JSONDecodeError")


def test_corrupt_and_missing_images_are_one_line_naming_them(tmp_path):
    root = write_gtsrb(tmp_path / "data")
    broken = root / "gtsrb" / "GTSRB" / "Final_Test" / "Images" / "00003.ppm"
    broken.write_bytes(b"P6\nnot really a ppm")
    with pytest.raises(SftError) as exc:
        torchvision(ctx(), dataset="GTSRB", root=str(root))
    one_line(exc, "00003.ppm")
    broken.unlink()
    with pytest.raises(SftError) as exc:
        torchvision(ctx(), dataset="GTSRB", root=str(root))
    one_line(exc, "missing", "00003.ppm")


def test_empty_class_and_label_out_of_range_are_one_line(tmp_path):
    root = write_eurosat(tmp_path / "eu")
    for f in (root / "eurosat" / "2750" / "Forest").iterdir():
        f.unlink()
    with pytest.raises(SftError) as exc:
        torchvision(ctx(), dataset="EuroSAT", root=str(root))
    one_line(exc, "Forest")
    root = write_gtsrb(tmp_path / "gt")
    csv = root / "gtsrb" / "GT-final_test.csv"
    csv.write_text(csv.read_text().replace(";2\n", ";7\n", 1))
    with pytest.raises(SftError) as exc:
        torchvision(ctx(), dataset="GTSRB", root=str(root))
    one_line(exc, "label 7", "outside 0..2")


def test_download_offline_is_one_line(tmp_path, monkeypatch):
    import urllib.error

    from torchvision.datasets import utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(utils, "_get_redirect_url", offline)
    monkeypatch.setattr(utils, "_urlretrieve", offline)
    with pytest.raises(SftError) as exc:
        torchvision(ctx(), dataset="DTD", root=str(tmp_path), download=True)
    one_line(exc, "could not download", "needs internet", "dtd/dtd/{images")


def test_download_true_fetches_and_extracts_through_torchvisions_downloader(tmp_path, monkeypatch):
    """`download: true` goes through torchvision's own downloader (download_and_extract_archive): here its one
    network call serves a local archive of the fake DTD, so the extraction and the reading after it are real."""
    import tarfile

    from torchvision.datasets import utils

    fake = write_dtd(tmp_path / "fake")
    archive = tmp_path / "dtd-r1.0.1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(fake / "dtd" / "dtd", arcname="dtd")  # the archive's layout: dtd/{images,labels}
    fetched = []

    def serve(url, path, *args, **kwargs):
        fetched.append(url)
        Path(path).write_bytes(archive.read_bytes())

    monkeypatch.setattr(utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(utils, "_urlretrieve", serve)
    monkeypatch.setattr(utils, "check_integrity", lambda path, md5=None: os.path.isfile(path))  # a fake's md5
    root = tmp_path / "data"
    s = torchvision(ctx(), dataset="DTD", root=str(root), download=True)
    assert fetched and fetched[0].endswith("dtd-r1.0.1.tar.gz")
    assert s.classes == ["banded", "dotted", "zigzagged"] and (len(s.train), len(s.val), len(s.test)) == (6, 6, 6)
    assert (root / "dtd" / "dtd" / "labels" / "train1.txt").is_file()
    fetched.clear()
    torchvision(ctx(), dataset="DTD", root=str(root), download=True)
    assert not fetched  # present: torchvision does not fetch it again


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_dataset_trains_a_tiny_stage(name, tmp_path, no_md5, one_thread):
    """Issue 27: every supported dataset loads, subsets (one label per class) and trains a stage, evaluated on
    its test split, through `sftcore.run` as a user's config would."""
    import sftcore

    root = WRITERS[name](tmp_path / "data")
    summary = sftcore.run({
        "backbone": {"name": "lenet", "img_size": 16},
        "finetune": {"dataset": {"name": "torchvision", "dataset": name, "root": str(root), "labels_per_class": 1,
                                 "val_fraction": 0}, "epochs": 1, "batch_size": 8},
        "device": "cpu", "checkpoints": False,
    }, out=tmp_path / "run")
    stage = summary["finetune"]
    present = len(set(torchvision(ctx(), dataset=name, root=str(root)).train.labels.tolist()))
    assert stage["train_examples"] == present  # one per class
    assert 0.0 <= stage["test_accuracy"] <= 1.0 and stage["image_shape"][0] in (1, 3)
