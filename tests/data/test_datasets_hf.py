"""Issue 27: Hugging Face datasets (``{name: hf, path: ...}``) from a save_to_disk folder, parquet files and a
folder of them, made here (no network): splits mapped, ClassLabel names as classes, the one image path and
size rule, and every hostile case one line."""

import io
import pickle

import pytest
import torch
from PIL import Image

import sftcore
import tiny
from sftcore.api import DatasetContext, FileSet, ImageSet
from sftcore.errors import ConfigError, SftError

datasets = pytest.importorskip("datasets")
from sftcore_plugins.datasets.hf import hf  # noqa: E402

NAMES = ["cat", "dog", "emu"]
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]


def ctx(fixed=False, size=16, max_memory=4 << 30, seed=0):
    return DatasetContext(seed=seed, input_size=(3, size, size), stage="finetune", max_memory_bytes=max_memory,
                          fixed_input_size=fixed)


def png(colour, size=(12, 12)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def table(per_class, label_names=True, size=(12, 12)):
    """A datasets.Dataset of PNG bytes in an Image column ``img`` and a label column ``y``."""
    labels = [c for c in range(len(NAMES)) for _ in range(per_class)]
    features = datasets.Features({
        "img": datasets.Image(),
        "y": datasets.ClassLabel(names=NAMES) if label_names else datasets.Value("string"),
        "extra": datasets.Value("int64"),
    })
    rows = {"img": [{"bytes": png(COLOURS[c], size), "path": None} for c in labels],
            "y": labels if label_names else [NAMES[c] for c in labels], "extra": list(range(len(labels)))}
    return datasets.Dataset.from_dict(rows, features=features)


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": table(4), "validation": table(2), "test": table(3)}).save_to_disk(str(folder))
    return folder


def test_a_save_to_disk_folder_maps_its_splits_and_class_names(saved):
    s = hf(ctx(), path=str(saved), image="img", label="y")
    assert s.classes == NAMES
    assert (len(s.train), len(s.val), len(s.test)) == (12, 6, 9)
    assert isinstance(s.train, ImageSet) and s.train.image_shape == (3, 12, 12)  # their own size: the rule
    assert s.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    red = s.train.images[0]
    assert red[0].float().mean() > 200 and red[2].float().mean() < 40  # decoded RGB, channel order kept
    assert hf(ctx(fixed=True), path=str(saved), image="img", label="y").train.image_shape == (3, 16, 16)


def test_a_parquet_file_without_a_test_split_holds_one_out(tmp_path):
    path = tmp_path / "train.parquet"
    table(5, label_names=False).to_parquet(str(path))
    s = hf(ctx(), path=str(path), image="img", label="y", test_ratio=0.4)
    assert s.classes == NAMES and s.val is None
    assert len(s.train) == 9 and len(s.test) == 6 and sorted(s.test.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    again = hf(ctx(), path=str(path), image="img", label="y", test_ratio=0.4)
    assert torch.equal(again.test.images, s.test.images)  # seeded: the same hold-out
    assert len(hf(ctx(), path=str(path), image="img", label="y", test_ratio=0).train) == 15


def test_a_folder_of_parquet_files_named_by_split(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    table(3).to_parquet(str(folder / "train-00000.parquet"))
    table(1).to_parquet(str(folder / "test-00000.parquet"))
    s = hf(ctx(), path=str(folder), image="img", label="y")
    assert s.classes == NAMES and (len(s.train), len(s.test)) == (9, 3)


def test_a_dataset_too_big_for_memory_streams_from_the_arrow_table(saved):
    s = hf(ctx(max_memory=100), path=str(saved), image="img", label="y")
    assert isinstance(s.train, FileSet) and s.train.image_shape == (3, 12, 12)
    load = pickle.loads(pickle.dumps(s.train.load))  # DataLoader workers get it pickled
    whole = hf(ctx(), path=str(saved), image="img", label="y")
    assert torch.equal(load(5), whole.train.images[5])


def test_named_splits_and_columns(saved):
    s = hf(ctx(), path=str(saved), image="img", label="y", train="validation", val=None, test="test")
    assert len(s.train) == 6 and s.val is None and len(s.test) == 9
    with pytest.raises(SftError, match=r"has no split 'dev' \(it has: test, train, validation\); set val: to one"):
        hf(ctx(), path=str(saved), image="img", label="y", val="dev")
    with pytest.raises(SftError, match=r"has no column\(s\) picture .*it has: img, y, extra.*set image: and label:"):
        hf(ctx(), path=str(saved), image="picture", label="y")
    with pytest.raises(SftError, match="column 'extra' of split 'train' holds Value, not images"):
        hf(ctx(), path=str(saved), image="extra", label="y")
    with pytest.raises(SftError, match="train, val and test must be different splits; val is 'train' too"):
        hf(ctx(), path=str(saved), image="img", label="y", val="train")


def test_hostile_tables_are_one_line(tmp_path):
    train = datasets.Dataset.from_dict({"img": [{"bytes": png(c), "path": None} for c in COLOURS], "y": [0, 1, 2]},
                                       features=datasets.Features({"img": datasets.Image(),
                                                                   "y": datasets.Value("int64")}))
    bad_label = datasets.Dataset.from_dict({"img": [{"bytes": png(COLOURS[0]), "path": None}], "y": [7]},
                                           features=train.features)
    datasets.DatasetDict({"train": train, "test": bad_label}).save_to_disk(str(tmp_path / "labels"))
    with pytest.raises(SftError, match=r"row 0 of split 'test' has label 7, not one of the 3 training classes"):
        hf(ctx(), path=str(tmp_path / "labels"), image="img", label="y")
    corrupt = datasets.Dataset.from_dict({"img": [{"bytes": b"junk" * 10, "path": None}] * 2, "y": [0, 1]},
                                         features=train.features)
    corrupt.save_to_disk(str(tmp_path / "corrupt"))
    with pytest.raises(SftError, match=r"cannot read image .*row 0\) of dataset hf .*fix or remove it"):
        hf(ctx(), path=str(tmp_path / "corrupt"), image="img", label="y", test_ratio=0)
    with pytest.raises(SftError, match=r"dataset hf: .*nowhere not found; set path to a save_to_disk folder"):
        hf(ctx(), path=str(tmp_path / "nowhere"))
    with pytest.raises(SftError, match=r"cannot load 'someone/no-such-set' .*save_to_disk\(FOLDER\)"):
        hf(ctx(), path="someone/no-such-set")  # HF_HUB_OFFLINE=1 (conftest): no network, one line


def test_bad_options_are_config_errors_and_a_missing_library_says_how_to_install(monkeypatch):
    for options, match in (({}, "hf needs path"), ({"path": 3}, "path must be a string"),
                           ({"path": "x", "test_ratio": 1.5}, "test_ratio must be"),
                           ({"path": "x", "in_memory": "yes"}, "in_memory must be auto")):
        with pytest.raises(ConfigError, match=match):
            hf(ctx(), **options)
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(SftError, match=r"needs the datasets library: pip install 'sftcore\[hf\]'"):
        hf(ctx(), path="someone/set")


@pytest.mark.slow
def test_a_run_finetunes_on_a_hugging_face_dataset(saved, tmp_path):
    cfg = tiny.config(pretrain=False, baseline=False,
                      finetune={"dataset": {"name": "hf", "path": str(saved), "image": "img", "label": "y"},
                                "epochs": 1})
    summary = sftcore.run(cfg, out=tmp_path / "r")
    assert summary["finetune"]["image_shape"] == [3, 16, 16]  # lenet img_size 16: a fixed input size
    assert 0.0 <= summary["finetune"]["test_accuracy"] <= 1.0


def test_the_cli_says_a_broken_dataset_in_one_line_with_exit_2(tmp_path):
    corrupt = datasets.Dataset.from_dict({"img": [{"bytes": b"junk" * 10, "path": None}] * 4, "y": [0, 1, 0, 1]},
                                         features=datasets.Features({"img": datasets.Image(),
                                                                     "y": datasets.Value("int64")}))
    corrupt.save_to_disk(str(tmp_path / "corrupt"))
    for path, message in ((tmp_path / "corrupt", "cannot read image"), (tmp_path / "absent", "not found")):
        cfg = tiny.config(pretrain=False, baseline=False,
                          finetune={"dataset": {"name": "hf", "path": str(path), "image": "img", "label": "y"}})
        config = tiny.write_yaml(tmp_path / "c.yaml", cfg)
        assert message in tiny.one_error_line(tiny.invoke("run", config, "--out", tmp_path / f"r-{path.name}"))


def test_each_splits_own_class_names_map_its_labels(tmp_path):
    """A split whose ClassLabel lists the names in another order (splits built apart) keeps its images' classes."""
    flipped = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["emu", "dog", "cat"])})
    test = datasets.Dataset.from_dict({"img": [{"bytes": png(COLOURS[c]), "path": None} for c in (0, 1, 2)],
                                       "y": [2, 1, 0]}, features=flipped)  # cat, dog, emu in its own numbering
    datasets.DatasetDict({"train": table(2).select_columns(["img", "y"]), "test": test}).save_to_disk(
        str(tmp_path / "d"))
    s = hf(ctx(), path=str(tmp_path / "d"), image="img", label="y")
    assert s.classes == NAMES and s.test.labels.tolist() == [0, 1, 2]  # by name: cat, dog, emu
    red = s.test.images[0].float().mean((1, 2))
    assert red[0] > 200  # the cat image (red) is labelled cat


def test_an_unlabelled_test_split_is_skipped_and_named_splits_come_first(tmp_path):
    """The hub's train / validation / test layout with a test split of -1s (ImageNet-1k): the automatic test is
    skipped; `test: validation` then takes validation as the test split, and val goes to the runner's hold-out."""
    unlabelled = datasets.Dataset.from_dict({"img": [{"bytes": png(COLOURS[0]), "path": None}] * 3, "y": [-1] * 3},
                                            features=table(1).select_columns(["img", "y"]).features)
    datasets.DatasetDict({"train": table(3), "validation": table(2), "test": unlabelled}).save_to_disk(
        str(tmp_path / "d"))
    auto = hf(ctx(), path=str(tmp_path / "d"), image="img", label="y", test_ratio=0.0)
    assert len(auto.val) == 6 and auto.test is None  # no labelled test split, no hold-out asked for
    named = hf(ctx(), path=str(tmp_path / "d"), image="img", label="y", test="validation")
    assert named.val is None and len(named.test) == 6 and len(named.train) == 9
    off = hf(ctx(), path=str(tmp_path / "d"), image="img", label="y", val=False, test=False, test_ratio=0.34)
    assert off.val is None and len(off.test) == 3 and len(off.train) == 6  # held out of train instead
    with pytest.raises(SftError, match=r"row 0 of split 'test' has label -1"):
        hf(ctx(), path=str(tmp_path / "d"), image="img", label="y", test="test")
    with pytest.raises(ConfigError, match="test must be a split name, null .* or false"):
        hf(ctx(), path=str(tmp_path / "d"), test=True)


def test_a_class_without_training_rows_is_one_line(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=["cat", "dog", "emu"])})
    train = datasets.Dataset.from_dict({"img": [{"bytes": png(COLOURS[c]), "path": None} for c in (0, 1, 0, 1)],
                                        "y": [0, 1, 0, 1]}, features=features)
    train.save_to_disk(str(tmp_path / "d"))
    with pytest.raises(SftError, match=r"class\(es\) emu of the label column have no rows in split 'train'"):
        hf(ctx(), path=str(tmp_path / "d"), image="img", label="y")
