"""CIFAR-10/100 from fake files in torchvision's real on-disk format; nothing is downloaded."""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from fakedata import cifar_archive, md5, write_cifar10, write_cifar100
from sftcore.api import Augment, DatasetContext, DataSplits, ImageSet
from sftcore.errors import ConfigError, SftError
from sftcore_plugins.datasets import cifar
from sftcore_plugins.datasets.cifar import cifar10, cifar100

CTX = DatasetContext(seed=0, input_size=(3, 32, 32), stage="finetune")


def test_cifar10_shapes_labels_and_pixels(tmp_path):
    w = write_cifar10(tmp_path, per_batch=4, n_test=10)
    s = cifar10(CTX, root=str(tmp_path), verify=False)
    assert isinstance(s, DataSplits) and s.classes == w["classes"]
    assert isinstance(s.train, ImageSet) and isinstance(s.test, ImageSet) and s.val is None
    assert s.train.images.shape == (20, 3, 32, 32) and s.test.images.shape == (10, 3, 32, 32)
    assert s.train.images.dtype == torch.uint8 and s.train.labels.dtype == torch.int64
    assert s.train.images.is_contiguous()
    assert s.train.labels.tolist() == w["train_labels"] and s.test.labels.tolist() == w["test_labels"]
    # A row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major over 32x32.
    row = w["train"][13]  # batch 4, image 1: checks batches are concatenated in order
    for c, y, x in [(0, 0, 0), (0, 5, 7), (1, 31, 0), (2, 17, 30), (2, 31, 31)]:
        assert int(s.train.images[13, c, y, x]) == int(row[c * 1024 + y * 32 + x])
    assert torch.equal(s.train.images, torch.from_numpy(w["train"].reshape(-1, 3, 32, 32)))
    assert torch.equal(s.test.images, torch.from_numpy(w["test"].reshape(-1, 3, 32, 32)))


def test_cifar10_defaults_and_options(tmp_path):
    write_cifar10(tmp_path)
    s = cifar10(CTX, root=str(tmp_path), verify=False)
    assert s.augment == Augment(crop_padding=4, flip=True)
    assert s.mean == pytest.approx((0.4914, 0.4822, 0.4465)) and s.std == pytest.approx((0.2470, 0.2435, 0.2616))
    s = cifar10(CTX, root=str(tmp_path), verify=False, mean=[0.5, 0.5, 0.5], std=0.5, augment=False)
    assert tuple(s.mean) == (0.5, 0.5, 0.5) and tuple(s.std) == (0.5, 0.5, 0.5) and s.augment == Augment()
    for bad in ({"std": [0.5, 0]}, {"mean": [1, 2]}, {"mean": "x"}, {"augment": "yes"}, {"verify": 1}):
        with pytest.raises(ConfigError) as exc:
            cifar10(CTX, root=str(tmp_path), **{"verify": False, **bad})
        assert "\n" not in str(exc.value) and str(exc.value).startswith(f"config: finetune.dataset.{next(iter(bad))}")


def test_cifar10_python3_str_keys(tmp_path):
    """Pickles written by Python 3 with str keys (some conversion tools do this) read the same."""
    w = write_cifar10(tmp_path, str_keys=True)
    s = cifar10(CTX, root=str(tmp_path), verify=False)
    assert s.classes == w["classes"] and s.train.labels.tolist() == w["train_labels"]


def test_cifar100_fine_and_coarse(tmp_path):
    w = write_cifar100(tmp_path, n_train=40, n_test=20)
    fine = cifar100(CTX, root=str(tmp_path), verify=False)
    assert fine.classes == w["fine_names"] and len(fine.classes) == 100
    assert fine.train.images.shape == (40, 3, 32, 32) and fine.test.images.shape == (20, 3, 32, 32)
    assert fine.train.labels.tolist() == w["train_fine"] and fine.test.labels.tolist() == w["test_fine"]
    assert int(fine.test.images[3, 1, 2, 9]) == int(w["test"][3][1024 + 2 * 32 + 9])
    assert fine.mean == pytest.approx((0.5071, 0.4865, 0.4409))
    coarse = cifar100(CTX, root=str(tmp_path), verify=False, labels="coarse")
    assert coarse.classes == w["coarse_names"] and coarse.train.labels.tolist() == w["train_coarse"]
    assert torch.equal(coarse.train.images, fine.train.images)
    with pytest.raises(ConfigError, match="fine.*coarse"):
        cifar100(CTX, root=str(tmp_path), verify=False, labels="superclass")


def test_verify_rejects_fake_files_with_one_line(tmp_path):
    w = write_cifar10(tmp_path)
    with pytest.raises(SftError) as exc:
        cifar10(CTX, root=str(tmp_path))
    msg = str(exc.value)
    assert "\n" not in msg and "md5 mismatch" in msg and "verify: false" in msg
    assert str(w["folder"].resolve()) in msg


def test_verify_passes_when_md5_matches(tmp_path, monkeypatch):
    """Faked: the md5 table, set to the fake files' own sums; the check itself runs for real."""
    w = write_cifar100(tmp_path)
    sums = {n: md5(w["folder"] / n) for n in ("train", "test", "meta")}
    monkeypatch.setitem(cifar.FILE_MD5, "cifar-100-python", sums)
    assert len(cifar100(CTX, root=str(tmp_path)).train) == 40
    (w["folder"] / "test").write_bytes((w["folder"] / "test").read_bytes() + b"x")
    with pytest.raises(SftError, match=r"md5 mismatch for .*cifar-100-python/test:"):
        cifar100(CTX, root=str(tmp_path))


def test_missing_data_says_where_and_how(tmp_path):
    with pytest.raises(SftError) as exc:
        cifar10(CTX, root=str(tmp_path / "nowhere"))
    msg = str(exc.value)
    assert "\n" not in msg and "CIFAR-10 not found" in msg
    assert str((tmp_path / "nowhere" / "cifar-10-batches-py").resolve()) in msg
    assert "download: true" in msg and "cifar-10-batches-py" in msg
    w = write_cifar10(tmp_path / "partial")
    (w["folder"] / "data_batch_3").unlink()
    with pytest.raises(SftError, match="incomplete: missing data_batch_3"):
        cifar10(CTX, root=str(tmp_path / "partial"), verify=False)


def test_bad_contents_are_clear_errors(tmp_path):
    w = write_cifar10(tmp_path)
    (w["folder"] / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(SftError, match="test_batch is not a CIFAR pickle"):
        cifar10(CTX, root=str(tmp_path), verify=False)
    (w["folder"] / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(SftError, match="does not hold CIFAR images"):
        cifar10(CTX, root=str(tmp_path), verify=False)
    (w["folder"] / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}))
    with pytest.raises(SftError, match=r"outside 0\.\.9"):
        cifar10(CTX, root=str(tmp_path), verify=False)


def test_unpickler_refuses_code(tmp_path):
    """A pickle that would run code on load is refused, not executed."""
    w = write_cifar10(tmp_path)
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (w["folder"] / "batches.meta").write_bytes(pickle.dumps({b"label_names": Evil()}))
    with pytest.raises(SftError, match="refusing to load"):
        cifar10(CTX, root=str(tmp_path), verify=False)
    assert not marker.exists()


@pytest.fixture
def fake_network(monkeypatch, tmp_path):
    """Faked: only torchvision's network calls (redirect lookup and urlretrieve), which copy a local
    archive instead. torchvision's download_url md5 check and tar extraction run for real."""
    from torchvision.datasets import utils

    served = {}

    def urlretrieve(url, filename, chunk_size=None):
        served.setdefault("urls", []).append(url)
        with open(filename, "wb") as f:
            f.write(served["archive"].read_bytes())

    monkeypatch.setattr(utils, "_get_redirect_url", lambda url, max_hops=3: url)
    monkeypatch.setattr(utils, "_urlretrieve", urlretrieve)
    return served


def test_download_cifar10_through_torchvision(tmp_path, monkeypatch, fake_network):
    w = write_cifar10(tmp_path / "src", per_batch=2, n_test=4)
    fake_network["archive"] = cifar_archive(w, tmp_path / "cifar-10-python.tar.gz")
    # Faked: the md5 constants, set to the fake archive's and files' own sums.
    monkeypatch.setitem(cifar.ARCHIVE_MD5, "cifar-10-python.tar.gz", md5(fake_network["archive"]))
    monkeypatch.setitem(cifar.FILE_MD5, "cifar-10-batches-py",
                        {p.name: md5(p) for p in w["folder"].iterdir()})
    root = tmp_path / "data"
    s = cifar10(CTX, root=str(root), download=True)
    assert fake_network["urls"] == [cifar.CIFAR10.url]
    assert (root / "cifar-10-batches-py" / "test_batch").is_file()
    assert s.train.images.shape == (10, 3, 32, 32) and s.test.labels.tolist() == w["test_labels"]
    assert torch.equal(s.test.images, torch.from_numpy(w["test"].reshape(-1, 3, 32, 32)))
    cifar10(CTX, root=str(root), download=True)  # files present: no second download
    assert len(fake_network["urls"]) == 1


def test_download_checks_archive_md5(tmp_path, fake_network):
    """With verify on, the real torchvision md5 of the archive rejects the fake one."""
    w = write_cifar100(tmp_path / "src")
    fake_network["archive"] = cifar_archive(w, tmp_path / "fake.tar.gz")
    with pytest.raises(SftError, match="fails its md5 check") as exc:
        cifar100(CTX, root=str(tmp_path / "data"), download=True)
    assert "\n" not in str(exc.value)
    s = cifar100(CTX, root=str(tmp_path / "data2"), download=True, verify=False)
    assert s.train.labels.tolist() == w["train_fine"]


def test_download_offline_is_one_clear_line(tmp_path, monkeypatch):
    """Faked: the network fetch fails as it does with no connection."""
    import urllib.error

    from torchvision.datasets import utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(utils, "_get_redirect_url", offline)
    with pytest.raises(SftError) as exc:
        cifar10(CTX, root=str(tmp_path), download=True)
    msg = str(exc.value)
    assert "\n" not in msg and "could not download CIFAR-10" in msg and "needs internet" in msg


@pytest.mark.slow
def test_import_does_not_load_torchvision(tmp_path):
    write_cifar10(tmp_path)
    code = ("import sys; from sftcore.api import DatasetContext; "
            "from sftcore_plugins.datasets.cifar import cifar10; "
            f"s = cifar10(DatasetContext(0, (3, 32, 32), 'finetune'), root={str(tmp_path)!r}, verify=False); "
            "assert len(s.train) == 20; print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_end_to_end_finetune_on_cifar10(tmp_path):
    import sftcore

    write_cifar10(tmp_path / "data", per_batch=4, n_test=10)
    summary = sftcore.run({
        "backbone": {"name": "lenet"},
        "finetune": {"dataset": {"name": "cifar10", "root": str(tmp_path / "data"), "verify": False}, "epochs": 1},
        "device": "cpu",
    }, out=tmp_path / "run")
    acc = summary["finetune"]["test_accuracy"]
    assert 0.0 <= acc <= 1.0
    assert (tmp_path / "run" / "summary.json").is_file()
