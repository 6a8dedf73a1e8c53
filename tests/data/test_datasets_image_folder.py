"""image_folder: both layouts, mixed sizes/modes/formats, resize+crop, memory modes, clear errors."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from fakedata import write_image
from sftcore.api import Augment, DatasetContext, FileSet, ImageSet
from sftcore.errors import ConfigError, SftError
from sftcore._data.images import ImageLoader
from sftcore_plugins.datasets.image_folder import decode, image_folder


def ctx(c=3, h=16, w=16, seed=0, max_memory=4 << 30):
    return DatasetContext(seed=seed, input_size=(c, h, w), stage="finetune", max_memory_bytes=max_memory)


RED, BLUE = (220, 20, 20), (20, 20, 220)


def make_flat(root, per_class=5):
    """Layout B: root/<class>/*, mixed formats, modes and sizes."""
    kinds = [("png", "RGB", (40, 30)), ("jpg", "RGB", (25, 60)), ("png", "L", (16, 16)),
             ("png", "RGBA", (50, 50)), ("jpeg", "RGB", (100, 20))]
    for cls, color in (("cat", RED), ("dog", BLUE)):
        for i in range(per_class):
            ext, mode, size = kinds[i % len(kinds)]
            write_image(root / cls / f"{i}.{ext}", size, mode, color)
    return root


def test_flat_layout_split_and_shapes(tmp_path):
    root = make_flat(tmp_path / "imgs")
    (root / "notes.txt").write_text("not a class")
    (root / "cat" / "readme.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    s = image_folder(ctx(), root=str(root), test_ratio=0.4)
    assert s.classes == ["cat", "dog"]
    assert isinstance(s.train, ImageSet) and isinstance(s.test, ImageSet) and s.val is None
    assert len(s.train) == 6 and len(s.test) == 4  # round(5 * 0.4) = 2 per class to test
    assert s.train.labels.tolist().count(0) == 3 and s.test.labels.tolist().count(1) == 2
    assert s.train.images.shape == (6, 3, 16, 16) and s.train.images.dtype == torch.uint8
    assert s.train.labels.dtype == torch.int64
    # Solid colours survive decode, resize and crop (JPEG within a small error); grey stays grey.
    red = s.train.images[s.train.labels == 0].float().mean((0, 2, 3))
    assert red[0] > 150 and red[2] < 100
    assert s.augment == Augment(crop_padding=2, flip=False)  # round(16 / 8); no flips unless asked for


def test_split_is_seeded_and_stratified(tmp_path):
    root = make_flat(tmp_path / "imgs", per_class=10)
    a = image_folder(ctx(seed=1), root=str(root), in_memory=False)
    b = image_folder(ctx(seed=1), root=str(root), in_memory=False)
    c = image_folder(ctx(seed=2), root=str(root), in_memory=False)
    assert a.test.load.paths == b.test.load.paths
    assert a.test.load.paths != c.test.load.paths
    assert a.test.labels.tolist() == [0, 0, 1, 1]  # 10 * 0.2 = 2 per class
    assert not set(a.test.load.paths) & set(a.train.load.paths)
    none = image_folder(ctx(), root=str(root), test_ratio=0, in_memory=False)
    assert none.test is None and len(none.train) == 20


def test_train_val_test_layout(tmp_path):
    root = tmp_path / "imgs"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for cls, color in (("a", RED), ("b", BLUE), ("c", (0, 200, 0))):
            if split == "val" and cls == "c":
                continue  # val may cover only some classes
            for i in range(n):
                write_image(root / split / cls / f"{i}.png", (20, 24), "RGB", color)
    s = image_folder(ctx(), root=str(root))
    assert s.classes == ["a", "b", "c"]
    assert len(s.train) == 9 and len(s.val) == 2 and len(s.test) == 6
    assert s.val.labels.tolist() == [0, 1] and s.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.test.images[4, 1].float().mean() > 150  # class c is green
    only_train = tmp_path / "only"
    write_image(only_train / "train" / "x" / "0.png")
    write_image(only_train / "train" / "y" / "0.png")  # one class alone is an error (tests/test_hostile_config.py)
    s = image_folder(ctx(), root=str(only_train))
    assert s.test is None and s.val is None and s.classes == ["x", "y"]


def test_unknown_test_class_is_an_error(tmp_path):
    root = tmp_path / "imgs"
    write_image(root / "train" / "a" / "0.png")
    write_image(root / "train" / "b" / "0.png")
    write_image(root / "test" / "a" / "0.png")
    write_image(root / "test" / "zebra" / "0.png")
    with pytest.raises(SftError) as exc:
        image_folder(ctx(), root=str(root))
    msg = str(exc.value)
    assert "\n" not in msg and "zebra" in msg and "train" in msg


def test_resize_then_center_crop(tmp_path):
    """A wide image: shorter side scaled to the target height, centre kept, sides cut off."""
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # blue middle third
    img.save(tmp_path / "wide.png")
    out = decode(str(tmp_path / "wide.png"), (3, 10, 10))
    assert out.shape == (3, 10, 10) and out.dtype == torch.uint8
    assert out[2].min() > 200 and out[0].max() < 50  # only the blue centre remains
    out = decode(str(tmp_path / "wide.png"), (3, 10, 30))  # non-square target: aspect kept
    assert out.shape == (3, 10, 30)
    assert out[0, :, 1].min() > 200 and out[2, :, 15].min() > 200 and out[0, :, 28].min() > 200


def test_grayscale_target_and_modes(tmp_path):
    rgb = write_image(tmp_path / "rgb.png", (30, 40), "RGB", (255, 255, 255))
    gray = write_image(tmp_path / "gray.jpg", (8, 8), "L", (77,))
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(clear)  # fully transparent black
    assert decode(str(rgb), (1, 12, 12)).shape == (1, 12, 12)
    assert int(decode(str(rgb), (1, 12, 12)).min()) == 255
    g = decode(str(gray), (3, 12, 12))
    assert g.shape == (3, 12, 12) and abs(int(g[0, 6, 6]) - 77) <= 3 and torch.equal(g[0], g[2])
    assert int(decode(str(clear), (3, 4, 4)).min()) == 255  # composited onto white, not black
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((6, 6), 51400, np.uint16)).save(deep)  # 16-bit grey: 51400 / 257 = 200
    with Image.open(deep) as im:
        assert im.mode.startswith("I")
    assert decode(str(deep), (1, 6, 6)).unique().tolist() == [200]  # scaled, not clipped to 255
    s = image_folder(ctx(c=1, h=8, w=12), root=str(make_flat(tmp_path / "imgs")))
    assert s.train.images.shape[1:] == (1, 8, 12)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # blue left half as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the blue half ends up on top
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    out = decode(str(tmp_path / "phone.jpg"), (3, 20, 10))
    assert out[2, 2, 5] > 180 and out[0, 17, 5] > 180


def test_file_set_loads_and_pickles(tmp_path):
    root = make_flat(tmp_path / "imgs")
    mem = image_folder(ctx(h=12, w=12), root=str(root), in_memory=True)
    files = image_folder(ctx(h=12, w=12), root=str(root), in_memory=False)
    assert isinstance(files.train, FileSet) and isinstance(files.test, FileSet)
    assert files.train.image_shape == (3, 12, 12) and files.train.labels.dtype == torch.int64
    assert torch.equal(files.train.labels, mem.train.labels)
    for i in range(len(files.train)):  # decoded on demand == decoded up front
        assert torch.equal(files.train.load(i), mem.train.images[i])
    load = pickle.loads(pickle.dumps(files.train.load))
    assert isinstance(load, ImageLoader) and torch.equal(load(0), mem.train.images[0])
    sub = files.train.subset(torch.tensor([2, 0]))
    assert torch.equal(sub.item(0), mem.train.images[2])


def test_auto_memory_switches_on_size(tmp_path):
    root = make_flat(tmp_path / "imgs")  # 10 images of 3x16x16 = 7,680 bytes
    assert isinstance(image_folder(ctx(max_memory=7680), root=str(root)).train, ImageSet)
    small = image_folder(ctx(max_memory=7679), root=str(root))
    assert isinstance(small.train, FileSet) and isinstance(small.test, FileSet)


def test_extensions_and_options(tmp_path):
    root = make_flat(tmp_path / "imgs")
    s = image_folder(ctx(), root=str(root), extensions=["PNG"], test_ratio=0, crop_padding=0, flip=False)
    assert len(s.train) == 6 and s.augment == Augment()  # 3 png per class
    with pytest.raises(SftError, match="hold no images"):
        image_folder(ctx(), root=str(root), extensions=[".gif"])
    for bad in ({"in_memory": "yes"}, {"test_ratio": 1.0}, {"crop_padding": -1}, {"flip": "no"},
                {"extensions": []}):
        with pytest.raises(ConfigError) as exc:
            image_folder(ctx(), root=str(root), **bad)
        assert "\n" not in str(exc.value) and str(exc.value).startswith(f"config: finetune.dataset.{next(iter(bad))}")


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(ConfigError, match="needs root"):
        image_folder(ctx())
    with pytest.raises(SftError, match="is not a folder"):
        image_folder(ctx(), root=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SftError) as exc:
        image_folder(ctx(), root=str(tmp_path / "empty"))
    msg = str(exc.value)
    assert "no class folders" in msg and str((tmp_path / "empty").resolve()) in msg and "root/<class>" in msg
    (tmp_path / "empty" / "cat").mkdir()
    with pytest.raises(SftError, match="cat .*hold no images"):
        image_folder(ctx(), root=str(tmp_path / "empty"))


def test_an_image_claiming_too_many_pixels_is_one_line_before_it_is_decoded(tmp_path, recwarn):
    """The image folder reads through ``sftcore.api.open_image``: a 100-byte PNG claiming 30000 x 30000 pixels is
    refused by its header (SFT_MAX_IMAGE_PIXELS), without Pillow's warning and without allocating it."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    root = make_flat(tmp_path / "imgs", per_class=2)
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
    bomb = root / "cat" / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    with pytest.raises(SftError, match=r"image .*bomb.png of dataset image_folder is 30000 x 30000") as exc:
        image_folder(ctx(), root=str(root))
    assert "\n" not in str(exc.value) and "SFT_MAX_IMAGE_PIXELS" in str(exc.value)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_broken_image_names_the_file(tmp_path):
    root = make_flat(tmp_path / "imgs", per_class=2)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(SftError, match="cannot read image .*broken.jpg") as exc:
        image_folder(ctx(), root=str(root))
    assert "\n" not in str(exc.value)


@pytest.mark.slow
@pytest.mark.parametrize("in_memory", [True, False])  # False: FileSet through the runner's DataLoader workers
def test_end_to_end_finetune_on_image_folder(tmp_path, in_memory):
    import sftcore

    root = make_flat(tmp_path / "imgs", per_class=6)
    summary = sftcore.run({
        "backbone": {"name": "lenet"},
        "finetune": {"dataset": {"name": "image_folder", "root": str(root), "in_memory": in_memory}, "epochs": 1},
        "device": "cpu",
    }, out=tmp_path / "run")
    acc = summary["finetune"]["test_accuracy"]
    assert 0.0 <= acc <= 1.0
