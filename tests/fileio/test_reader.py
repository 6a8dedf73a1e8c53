"""The one reader of files sftcore did not write: regular files only, bounded, UTF-8, images bounded in pixels."""


import os
import zlib
import struct

import pytest

from sftcore._fileio import reader
from sftcore._fileio.storage import StorageError


def _one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_fifo_a_device_and_a_folder_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a read would block forever
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")  # a read would never end
    for path, expect in [(fifo, "is a FIFO"), (link, "is a device"), (tmp_path, "is a folder"),
                         (tmp_path / "missing", "not found")]:
        with pytest.raises(StorageError) as err:
            reader.read_text(path, "config file")
        assert expect in _one_line(err) and str(path) in str(err.value)


def test_text_must_be_utf8_and_bounded(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(StorageError, match="not UTF-8 text") as err:
        reader.read_text(latin, "config file")
    _one_line(err)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 100)
    with pytest.raises(StorageError, match="more than the 10"):
        reader.read_text(big, "summary", limit=10)
    good = tmp_path / "ok.json"
    good.write_text('{"a": 1}')
    assert reader.read_json(good, "summary") == {"a": 1}
    good.write_text('{"a": ')
    with pytest.raises(StorageError, match="not valid JSON"):
        reader.read_json(good, "summary")


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (the pixel data is one tiny compressed row: a bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_an_image_claiming_too_many_pixels_is_refused_before_decoding(monkeypatch):
    with pytest.raises(StorageError, match="30000 x 30000") as err:
        reader.open_image("bomb.png", "image 'bomb.png'", data=_png_header(30000, 30000))
    assert "SFT_MAX_IMAGE_PIXELS" in _one_line(err)
    reader.open_image("ok.png", "image 'ok.png'", data=_png_header(64, 64)).close()  # within the limit: no error
    monkeypatch.setenv("SFT_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(StorageError, match="more than the 1000"):
        reader.open_image("ok.png", "image 'ok.png'", data=_png_header(64, 64))
    monkeypatch.setenv("SFT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(StorageError, match="whole number"):
        reader.max_image_pixels()



def test_open_image_is_the_reader_of_image_files(tmp_path, monkeypatch, recwarn):
    """``sftcore.api.open_image``: regular files only, the pixel limit before decoding, one line for what PIL
    cannot read, and Pillow's own DecompressionBombWarning never shown (sftcore's limit decides)."""
    from PIL import Image

    from sftcore.api import open_image

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header(30000, 30000))
    with pytest.raises(StorageError, match=r"image bomb.png is 30000 x 30000 = 900000000 pixels") as err:
        open_image(bomb, "image bomb.png")
    _one_line(err)
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="is a FIFO"):
        open_image(fifo, "image fifo.png")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    with pytest.raises(StorageError, match="cannot read image junk.png .*fix or remove it"):
        open_image(junk, "image junk.png")
    big = tmp_path / "big.png"
    Image.new("L", (200, 100)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow would warn (and refuse past twice its limit)
    monkeypatch.setenv("SFT_MAX_IMAGE_PIXELS", "20000")
    with open_image(big, "image big.png") as img:
        assert img.size == (200, 100) and img.load() is not None
    assert Image.MAX_IMAGE_PIXELS == 1000  # Pillow's guard is put back
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    monkeypatch.setenv("SFT_MAX_IMAGE_PIXELS", "19999")
    with pytest.raises(StorageError, match="more than the 19999"):
        open_image(big, "image big.png")
