"""The one way to read a file sftcore did not just write: a regular file only (a FIFO blocks a read forever and a
device such as /dev/zero never ends it; a link is followed to what it names and checked there), bounded in size,
UTF-8 text with a clear error otherwise, and images bounded in pixels before they are decoded (as Pillow's
decompression-bomb guard). Every failure is one line (``StorageError``, exit code 2)."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

from .storage import StorageError

MAX_TEXT_BYTES = 64 << 20  # a config, a summary, a metrics log: far below this
MAX_FILE_BYTES = 1 << 30  # an image file
# Pillow's own default (Image.MAX_IMAGE_PIXELS): about a 9459 x 9459 image, 256 MiB as RGB uint8. A 100 KB PNG
# can claim 30000 x 30000 pixels and take gigabytes to decode. SFT_MAX_IMAGE_PIXELS raises or lowers it.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485


def max_image_pixels() -> int:
    value = os.environ.get("SFT_MAX_IMAGE_PIXELS", "")
    if not value:
        return DEFAULT_MAX_IMAGE_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise StorageError(f"SFT_MAX_IMAGE_PIXELS must be a whole number of pixels >= 1, got {value!r}")
    return int(value)


def regular(path, what: str, fix: str = "") -> Path:
    """``path`` if it names a regular file (through any link); otherwise one line saying what it is."""
    p = Path(path)
    hint = f"; {fix}" if fix else ""
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise StorageError(f"{what} '{p}' not found{hint}") from None
    except OSError as exc:
        raise StorageError(f"cannot read {what} '{p}': {exc.strerror or exc}{hint}") from None
    if stat.S_ISDIR(mode):
        raise StorageError(f"{what} '{p}' is a folder, not a file{hint}")
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
        )
        raise StorageError(f"{what} '{p}' is {kind}, not a regular file; sftcore reads only regular files{hint}")
    return p


def _within(path, what: str, limit: int) -> Path:
    """``path``, a regular file of at most ``limit`` bytes."""
    p = regular(path, what)
    size = p.stat().st_size
    if size > limit:
        raise StorageError(f"{what} '{p}' is {size} bytes, more than the {limit} sftcore reads")
    return p


def read_bytes(path, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    p = _within(path, what, limit)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise StorageError(f"cannot read {what} '{p}': {exc.strerror or exc}") from None


def read_text(path, what: str, limit: int = MAX_TEXT_BYTES) -> str:
    """The file as UTF-8 text (what sftcore writes); any other encoding is one line naming the byte."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(
            f"{what} '{path}' is not UTF-8 text (byte {exc.start} is {data[exc.start : exc.start + 1]!r}); "
            "save it as UTF-8"
        ) from None


def read_json(path, what: str) -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StorageError(f"{what} '{path}' is not valid JSON (line {exc.lineno}: {exc.msg})") from None


_PIL_GUARD = threading.Lock()  # Pillow's own pixel guard is a module global: set aside one open at a time


def _open_unguarded(data: bytes):
    """PIL's ``Image.open`` (the header only: decoding waits for ``load``) without Pillow's own pixel guard:
    ``max_image_pixels()`` decides, and Pillow's DecompressionBombWarning never leaks on stderr."""
    from PIL import Image  # torchvision's own dependency

    with _PIL_GUARD:
        guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        finally:
            Image.MAX_IMAGE_PIXELS = guard


def _check_size(width: int, height: int, what: str) -> None:
    limit = max_image_pixels()
    if width * height > limit:
        raise StorageError(
            f"{what} is {width} x {height} = {width * height} pixels, more than the {limit} sftcore decodes "
            "(set SFT_MAX_IMAGE_PIXELS to allow more)"
        )


def open_image(path, what: str, data: bytes | None = None):
    """An image file sftcore did not write, opened by PIL (``PIL.Image.Image``, not yet decoded): a regular file
    of at most ``MAX_FILE_BYTES``, whose header claims at most ``max_image_pixels()`` pixels. A file PIL cannot
    read is one line naming ``what``. ``data``: the file's bytes, already read (an image stored in a table)."""
    data = read_bytes(path, what) if data is None else _bounded(data, path, what)
    try:
        img = _open_unguarded(data)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for files it cannot read
        raise StorageError(f"cannot read {what} ({exc}); fix or remove it") from None
    try:
        width, height = img.size
        _check_size(width, height, what)
    except StorageError:
        img.close()
        raise
    return img


def _bounded(data: bytes, path, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise StorageError(f"{what} is {type(data).__name__}, not the bytes of an image file")
    if len(data) > MAX_FILE_BYTES:
        raise StorageError(f"{what} '{path}' is {len(data)} bytes, more than the {MAX_FILE_BYTES} sftcore reads")
    return bytes(data)


def image_size(path, what: str, data: bytes | None = None) -> tuple[int, int]:
    """(width, height) of an image file (or its bytes, ``data``) as it will be decoded (upright: an EXIF rotation
    by 90 degrees swaps them), from its header alone; the same checks and one-line errors as ``open_image``."""
    source = _within(path, what, MAX_FILE_BYTES) if data is None else io.BytesIO(_bounded(data, path, what))
    from PIL import Image

    try:
        with _PIL_GUARD:
            guard, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                img = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = guard
        with img:
            width, height = img.size
            turned = _turned(img)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for files it cannot read
        raise StorageError(f"cannot read {what} ({exc}); fix or remove it") from None
    _check_size(width, height, what)
    return (height, width) if turned else (width, height)


def _turned(img) -> bool:
    """Whether decoding turns the image by 90 degrees (EXIF orientation 5 to 8, as ``ImageOps.exif_transpose``
    applies it), read without decoding: Pillow gives a TIFF's size already turned; a PNG's EXIF counts when it
    comes before the pixels (where Pillow writes it: later, reading it would decode them)."""
    if img.format == "TIFF" or (img.format == "PNG" and "exif" not in img.info):
        return False
    return img.getexif().get(0x0112) in (5, 6, 7, 8)
