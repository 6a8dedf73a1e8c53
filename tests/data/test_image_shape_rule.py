"""Issue 27: the one rule for the size file-backed datasets hold their images at (``image_shape_for``): the
images' own size when they share one and the backbone takes any size, else the backbone's input size."""

import pytest
from PIL import Image

import sftcore
import tiny
from fakedata import write_image
from sftcore.api import DatasetContext, image_shape_for
from sftcore.errors import SftError
from sftcore_plugins.datasets.image_folder import image_folder


def ctx(fixed, c=3, size=24):
    return DatasetContext(seed=0, input_size=(c, size, size), stage="finetune", fixed_input_size=fixed)


def folder(root, sizes, classes=("a", "b")):
    for cls in classes:
        for i, size in enumerate(sizes):
            write_image(root / cls / f"{i}.png", size)
    return root


def test_files_of_one_size_are_held_at_it_when_the_backbone_takes_any_size(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", (20, 12))) for i in range(5)]
    assert image_shape_for(paths, ctx(fixed=False)) == (3, 12, 20)  # (C, H, W) of 20 wide x 12 high
    assert image_shape_for(paths, ctx(fixed=False, c=1)) == (1, 12, 20)


def test_a_fixed_input_size_or_mixed_sizes_take_the_backbones_size(tmp_path):
    same = [str(write_image(tmp_path / f"{i}.png", (20, 12))) for i in range(3)]
    mixed = [*same, str(write_image(tmp_path / "big.png", (40, 30)))]
    assert image_shape_for(same, ctx(fixed=True)) == (3, 24, 24)
    assert image_shape_for(mixed, ctx(fixed=False)) == (3, 24, 24)
    assert image_shape_for([], ctx(fixed=False)) == (3, 24, 24)


def test_images_larger_than_the_backbones_input_take_its_size(tmp_path):
    """A folder of same-size phone photos must not train a CNN at 4032x3024: larger than the input, its size."""
    photos = [str(write_image(tmp_path / f"p{i}.jpg", (40, 30))) for i in range(3)]
    assert image_shape_for(photos, ctx(fixed=False, size=24)) == (3, 24, 24)
    wide = [str(write_image(tmp_path / f"w{i}.png", (30, 10))) for i in range(2)]  # one side larger
    assert image_shape_for(wide, ctx(fixed=False, size=24)) == (3, 24, 24)
    assert image_shape_for(photos, ctx(fixed=False, size=40)) == (3, 30, 40)  # both sides within: kept


def test_an_exif_rotation_by_90_degrees_swaps_the_size(tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    Image.new("RGB", (40, 10), (10, 200, 10)).save(path, exif=exif)
    plain = write_image(tmp_path / "plain.png", (10, 40))
    assert image_shape_for([str(path), str(plain)], ctx(fixed=False, size=48)) == (3, 40, 10)


def test_the_header_scan_fails_in_one_line_on_a_broken_file_or_a_bad_channel_count(tmp_path):
    good = str(write_image(tmp_path / "a.png", (8, 8)))
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(SftError, match=r"cannot read image .*junk.png of dataset x .*fix or remove it"):
        image_shape_for([good, str(tmp_path / "junk.png")], ctx(fixed=False), "dataset x")
    with pytest.raises(SftError, match="makes 1- or 3-channel images, but the backbone takes 4"):
        image_shape_for([good], ctx(fixed=False, c=4))


def test_image_folder_follows_the_rule(tmp_path):
    root = folder(tmp_path / "same", [(18, 18)] * 4)
    flexible = image_folder(ctx(fixed=False), root=str(root), test_ratio=0.25)
    assert flexible.train.image_shape == (3, 18, 18) and flexible.test.image_shape == (3, 18, 18)
    assert flexible.augment.crop_padding == 2  # round(18 / 8): the padding follows the size held
    fixed = image_folder(ctx(fixed=True), root=str(root), test_ratio=0.25)
    assert fixed.train.image_shape == (3, 24, 24) and fixed.augment.crop_padding == 3
    mixed = image_folder(ctx(fixed=False), root=str(folder(tmp_path / "mixed", [(18, 18), (30, 20)])), test_ratio=0)
    assert mixed.train.image_shape == (3, 24, 24)


@pytest.mark.slow
def test_a_folder_of_small_images_trains_a_cnn_at_their_own_size(tmp_path):
    """The issue's case: 32 px images with timm resnet18 (configured for 224) decoded at 224 cost 50 times the
    compute; a CNN takes any size, so the run holds and trains them at their own size and says so."""
    root = folder(tmp_path / "digits", [(20, 20)] * 6, classes=("zero", "one", "two"))
    lines: list[str] = []
    cfg = tiny.config(pretrain=False, baseline=False,
                      finetune={"dataset": {"name": "image_folder", "root": str(root), "test_ratio": 0.34},
                                "epochs": 1})
    cfg["backbone"] = {"name": "timm", "model": "resnet10t"}
    summary = sftcore.run(cfg, out=tmp_path / "r", echo=lines.append)
    assert summary["finetune"]["image_shape"] == [3, 20, 20] and summary["finetune"]["input_shape"] == [3, 20, 20]
    assert [line for line in lines if line.startswith("finetune: images")] == [
        "finetune: images 3x20x20, the model sees 3x20x20"]


@pytest.mark.parametrize("suffix", ["jpg", "png", "tif", "webp"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_the_header_scan_gives_the_size_decoding_gives(tmp_path, suffix, orientation):
    """The size scan reads headers only; it must agree with what decode_image makes of the file, whatever the
    format does with its EXIF orientation (a TIFF's size comes turned already; a PNG's eXIf sits before IDAT)."""
    import numpy as np

    from sftcore.api import decode_image

    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # 40 wide, 20 high: left half white
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"turned.{suffix}"
    Image.fromarray(pixels).save(path, exif=exif)
    shape = image_shape_for([str(path)], ctx(fixed=False, size=48))
    decoded = decode_image(str(path), shape)
    assert tuple(decoded.shape) == shape
    with Image.open(path) as img:
        from PIL import ImageOps

        upright = ImageOps.exif_transpose(img)
        assert shape[1:] == (upright.size[1], upright.size[0])
    assert decoded.float().std() > 50  # the halves survive: not a 2x crop of one of them
