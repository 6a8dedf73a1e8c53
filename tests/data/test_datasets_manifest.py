"""manifest: CSV tables of image paths (relative to the table) and labels; splits, classes, hostile rows."""

import pytest
import torch

from fakedata import write_image
from sftcore.api import DatasetContext, FileSet, ImageSet
from sftcore.errors import ConfigError, SftError
from sftcore_plugins.datasets.manifest import manifest


def ctx(c=3, h=16, w=16, seed=0, max_memory=4 << 30):
    return DatasetContext(seed=seed, input_size=(c, h, w), stage="finetune", max_memory_bytes=max_memory)


COLORS = {"cat": (220, 20, 20), "dog": (20, 20, 220), "owl": (20, 200, 20)}


def write_table(folder, name, rows, header="path,class"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(header + "\n" + "".join(f"{p},{c}\n" for p, c in rows), encoding="utf-8")
    return folder / name


def make(folder, per_class=3, splits=("train", "test")):
    """Images under folder/img/<split>/, one table per split in folder."""
    tables = {}
    for split in splits:
        rows = []
        for cls, color in COLORS.items():
            for i in range(per_class):
                rel = f"img/{split}/{cls}_{i}.png"
                write_image(folder / rel, (20 + i, 16), "RGB", color)
                rows.append((rel, cls))
        tables[split] = str(write_table(folder, f"{split}.csv", rows))
    return tables


def test_train_and_test_tables(tmp_path):
    t = make(tmp_path / "data")
    s = manifest(ctx(), train=t["train"], test=t["test"], image="path", label="class")
    assert s.classes == ["cat", "dog", "owl"]
    assert isinstance(s.train, ImageSet) and len(s.train) == 9 and len(s.test) == 9 and s.val is None
    assert s.train.images.shape[1:] == (3, 16, 16) and s.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    dog = s.test.images[s.test.labels == 1].float().mean((0, 2, 3))
    assert dog[2] > 150 and dog[0] < 100


def test_val_table_hold_out_and_streaming(tmp_path):
    t = make(tmp_path / "data", per_class=5, splits=("train", "val"))
    s = manifest(ctx(seed=3), train=t["train"], val=t["val"], label="class", in_memory=False)
    assert isinstance(s.train, FileSet) and len(s.val) == 15
    assert len(s.test) == 3 and len(s.train) == 12  # round(5 * 0.2) = 1 per class held out as test
    again = manifest(ctx(seed=3), train=t["train"], val=t["val"], label="class", in_memory=False)
    assert again.test.load.paths == s.test.load.paths
    assert not set(s.test.load.paths) & set(s.train.load.paths)
    none = manifest(ctx(), train=t["train"], label="class", test_ratio=0)
    assert none.test is None and len(none.train) == 15


def test_paths_are_relative_to_the_table_and_numeric_labels_sort_as_numbers(tmp_path, monkeypatch):
    folder = tmp_path / "deep" / "set"
    rows = []
    for i, label in enumerate(["10", "2", "2", "10", "1"]):
        write_image(folder / "pics" / f"{i}.jpg", (12, 12), "RGB", (10 * i, 0, 0))
        rows.append((f"pics/{i}.jpg", label))
    table = write_table(folder, "all.csv", rows, header="\ufefffile , y")  # a BOM and padded names, as Excel writes
    monkeypatch.chdir(tmp_path)
    s = manifest(ctx(), train="deep/set/all.csv", image="file", label="y", test_ratio=0)
    assert s.classes == ["1", "2", "10"] and s.train.labels.tolist() == [2, 1, 1, 2, 0]
    assert table.is_file()


def test_parquet_needs_an_optional_reader(tmp_path, monkeypatch):
    import sys

    table = tmp_path / "t.parquet"
    table.write_bytes(b"PAR1")
    for module in ("pyarrow", "pyarrow.parquet", "pandas"):
        monkeypatch.setitem(sys.modules, module, None)  # neither installed
    with pytest.raises(SftError) as exc:
        manifest(ctx(), train=str(table))
    assert "\n" not in str(exc.value) and "pip install pyarrow" in str(exc.value)


def test_a_parquet_table_reads_as_its_csv_does(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import csv

    import pyarrow as pa

    t = make(tmp_path / "data")
    for split in ("train", "test"):
        with open(t[split], newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        pq.write_table(pa.table({"path": [r["path"] for r in rows], "class": [r["class"] for r in rows]}),
                       str(tmp_path / "data" / f"{split}.parquet"))
    from_csv = manifest(ctx(), train=t["train"], test=t["test"], image="path", label="class")
    from_parquet = manifest(ctx(), train=str(tmp_path / "data" / "train.parquet"),
                            test=str(tmp_path / "data" / "test.parquet"), image="path", label="class")
    assert from_parquet.classes == from_csv.classes
    assert torch.equal(from_parquet.train.images, from_csv.train.images)
    assert torch.equal(from_parquet.test.labels, from_csv.test.labels)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SftError, match=r"cannot read parquet table .*broken.parquet"):
        manifest(ctx(), train=str(tmp_path / "broken.parquet"))


# --------------------------------------------------------------------------- hostile
def one_line(call, *parts, kind=SftError):
    with pytest.raises(kind) as exc:
        call()
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for part in parts:
        assert part in msg, msg


def test_hostile_tables_are_one_line(tmp_path):
    t = make(tmp_path / "data")
    folder = tmp_path / "data"
    one_line(lambda: manifest(ctx(), train=t["train"], label="label"), "no column(s) label", "path, class")
    one_line(lambda: manifest(ctx(), train=str(folder / "nope.csv")), "nope.csv", "not found")
    for bad, says in (("../outside.png", "stay inside"), ("/etc/passwd", "no absolute"),
                      ("img/../../x.png", "'..'"), ("C:\\\\x.png", "no absolute")):
        table = write_table(folder, "bad.csv", [("img/train/cat_0.png", "cat"), (bad, "dog")])
        one_line(lambda table=table: manifest(ctx(), train=str(table), label="class"), "bad.csv line 3", says)
    table = write_table(folder, "gone.csv", [("img/train/cat_0.png", "cat"), ("img/train/lost.png", "dog")])
    one_line(lambda: manifest(ctx(), train=str(table), label="class"), "lost.png", "not found")
    test = write_table(folder, "t2.csv", [("img/test/cat_0.png", "zebra")])
    one_line(lambda: manifest(ctx(), train=t["train"], test=str(test), label="class"), "zebra", "train table")
    empty = write_table(folder, "empty.csv", [])
    one_line(lambda: manifest(ctx(), train=str(empty), label="class"), "lists no images")
    hole = write_table(folder, "hole.csv", [("img/train/cat_0.png", "cat"), ("", "dog")])
    one_line(lambda: manifest(ctx(), train=str(hole), label="class"), "line 3", "empty")
    (folder / "latin.csv").write_bytes("path,class\nimg/train/cat_0.png,caf\xe9\n".encode("latin-1"))
    one_line(lambda: manifest(ctx(), train=str(folder / "latin.csv"), label="class"), "UTF-8")


def test_corrupt_image_is_one_line_naming_it(tmp_path):
    t = make(tmp_path / "data")
    (tmp_path / "data" / "img" / "train" / "dog_1.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    one_line(lambda: manifest(ctx(), train=t["train"], label="class"), "dog_1.png")


def test_options_are_checked(tmp_path):
    one_line(lambda: manifest(ctx()), "needs train", kind=ConfigError)
    for bad in ({"train": 3}, {"train": "x.csv", "image": ""}, {"train": "x.csv", "test_ratio": 1},
                {"train": "x.csv", "in_memory": "no"}, {"train": "x.csv", "flip": 1}):
        one_line(lambda bad=bad: manifest(ctx(), **bad), f"config: finetune.dataset.{list(bad)[-1]}", kind=ConfigError)


@pytest.mark.slow
def test_end_to_end_finetune_from_a_manifest(tmp_path, one_thread):
    import sftcore

    t = make(tmp_path / "data", per_class=4)
    summary = sftcore.run({
        "backbone": {"name": "lenet", "img_size": 16},
        "finetune": {"dataset": {"name": "manifest", "train": t["train"], "test": t["test"], "label": "class"},
                     "epochs": 1},
        "device": "cpu",
    }, out=tmp_path / "run")
    assert 0.0 <= summary["finetune"]["test_accuracy"] <= 1.0
