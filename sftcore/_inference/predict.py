"""Classifying new image files with a run's saved model, prepared the way the run prepared its test split.

An image is decoded, given the channels and the size of the dataset's images (covering it and cropping
the centre, as image_folder does), then goes through the run's own evaluation transform: resize to the
model's input, normalise with the checkpoint's mean/std. An image already at the dataset's size is not
resized before that, so a test image written to a file gets exactly the prediction the run gave it.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sftcore.errors import SftError

from .load import Prediction

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")  # what read_image decodes
WILDCARDS = "*?["

if TYPE_CHECKING:  # pragma: no cover
    import torch


def to_uint8(image, shape) -> torch.Tensor:
    """uint8 ``[C, H, W]`` of ``shape`` from a PIL image or a uint8 ``[C, H, W]`` / ``[H, W]`` tensor,
    prepared as a decoded file is (channels, then cover and centre-crop)."""
    import torch

    if not isinstance(image, torch.Tensor):
        try:
            from PIL import Image

            is_pil = isinstance(image, Image.Image)
        except ImportError:  # pragma: no cover - no PIL, so no PIL images either
            is_pil = False
        if not is_pil:
            raise SftError(
                f"cannot read {type(image).__name__} as an image; pass file paths, PIL images or "
                "uint8 tensors [C, H, W]"
            )
        import numpy as np

        array = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB"))
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
    if image.dtype != torch.uint8 or image.ndim not in (2, 3):
        raise SftError(f"an image tensor must be uint8 [C, H, W] or [H, W], got {image.dtype} {tuple(image.shape)}")
    if image.ndim == 3 and image.shape[0] not in (1, 2, 3, 4):
        hint = "; it looks like [H, W, C]: pass image.permute(2, 0, 1)" if image.shape[-1] in (1, 3, 4) else ""
        raise SftError(f"an image tensor must be [C, H, W] with 1 to 4 channels, got {tuple(image.shape)}{hint}")
    return _prepared(image[None] if image.ndim == 2 else image, shape)


def read_image(path, shape) -> torch.Tensor:
    """uint8 ``[C, H, W]`` of ``shape`` from a JPEG, PNG, WebP or GIF file.

    As image_folder reads files: EXIF orientation applied, transparency onto white, 16 bits scaled to 8,
    grey from colour with PIL's weights, resized (bicubic) to cover H x W and centre-cropped.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_image

    from sftcore._fileio import reader

    p = Path(path)
    if not p.exists():
        raise SftError(f"image '{p}' not found; check the path")
    if p.is_dir():
        raise SftError(f"image '{p}' is a folder; pass image files (a shell glob such as '{p}/*.jpg' works)")
    data = reader.read_bytes(p, "image")  # a regular file only: a FIFO or /dev/zero is one line, not a hang
    if not data:
        raise SftError(f"image '{p}' is an empty file")
    reader.check_image_pixels(data, f"image '{p}'")  # before decoding: a small file can claim 30000 x 30000
    mode = ImageReadMode.RGB if data[:3] == b"\xff\xd8\xff" else ImageReadMode.RGB_ALPHA  # JPEG has no alpha
    try:
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode, apply_exif_orientation=True)
    except (RuntimeError, ValueError):
        raise SftError(
            f"cannot decode image '{p}': damaged, or not a JPEG, PNG, WebP or GIF file (what torchvision "
            "decodes); convert it to PNG or JPEG"
        ) from None
    if img.ndim == 4:  # an animated GIF: its first frame
        img = img[0]
    return _prepared(img, shape)


def _prepared(img, shape) -> torch.Tensor:
    """A decoded image (uint8 or 16-bit, grey, RGB or RGBA) at ``shape``: alpha onto white, grey with
    PIL's weights, resized (bicubic) to cover H x W and centre-cropped."""
    import torch
    import torch.nn.functional as F

    x = img.float()
    if img.dtype != torch.uint8:  # 16-bit PNG
        x = x / 257.0
    if x.shape[0] in (2, 4):
        alpha = x[-1:] / 255.0
        x = x[:-1] * alpha + 255.0 * (1.0 - alpha)
    x = x.round()
    if shape[0] == 1 and x.shape[0] == 3:
        x = torch.floor((x[0] * 19595 + x[1] * 38470 + x[2] * 7471 + 0x8000) / 65536)[None]  # PIL's "L"
    elif shape[0] == 3 and x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    height, width = shape[1:]
    h0, w0 = x.shape[1:]
    if (h0, w0) != (height, width):
        scale = max(height / h0, width / w0)
        h1, w1 = max(height, round(h0 * scale)), max(width, round(w0 * scale))
        x = F.interpolate(x[None], size=(h1, w1), mode="bicubic", align_corners=False, antialias=True)[0]
        top, left = (h1 - height) // 2, (w1 - width) // 2
        x = x[:, top : top + height, left : left + width].round()
    return x.clamp(0, 255).to(torch.uint8).contiguous()


def expand_images(args) -> list[Path]:
    """``sft predict``'s IMAGES as files: a file as it is; a folder as every image file in it and its
    subfolders (by suffix, sorted by path, hidden files and folders skipped); a pattern with ``*``, ``?``
    or ``[`` that names no file is a glob (``**`` for any depth), its matches sorted, folders expanded."""
    out: list[Path] = []
    for arg in map(str, args):
        p = Path(arg)
        if p.is_dir():
            found = _folder_images(p)
            if not found:
                raise SftError(
                    f"folder '{p}' holds no image files ({', '.join(IMAGE_SUFFIXES)}, in it or "
                    "its subfolders); pass image files or a folder of them"
                )
            out.extend(found)
        elif p.exists() or not any(c in arg for c in WILDCARDS):
            if not p.exists():
                raise SftError(f"image '{p}' not found; check the path")
            out.append(p)
        else:
            matches = sorted(glob.glob(arg, recursive=True))
            found = []
            for m in map(Path, matches):
                found.extend(_folder_images(m) if m.is_dir() else [m] if m.suffix.lower() in IMAGE_SUFFIXES else [])
            if not found:
                raise SftError(
                    f"no image file matches '{arg}'; check the pattern (quoted, sftcore expands it: "
                    "'photos/*.jpg', 'photos/**/*.png')"
                )
            out.extend(found)
    return out


def _folder_images(folder: Path) -> list[Path]:
    found = []
    for f in folder.rglob("*"):
        rel = f.relative_to(folder).parts
        if any(part.startswith(".") for part in rel):
            continue
        if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
            found.append(f)
    return sorted(found)


CSV_HEADER = ("image", "rank", "class", "probability")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula (OWASP)


def csv_text(value: str) -> str:
    """A text cell that a spreadsheet shows as text: one starting like a formula gets a leading apostrophe."""
    return "'" + value if value.startswith(FORMULA_START) else value


def render(predictions: list[Prediction], fmt: str) -> str:
    """``text``: the image, then one ``  NN.N%  class`` line per rank; ``json``: a list of
    ``{image, top: [{class, probability}]}``; ``csv``: one row per image per rank, columns CSV_HEADER."""
    if fmt == "json":
        return json.dumps([p.as_dict() for p in predictions], indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(CSV_HEADER)
        # every text cell quoted: a carriage return in a file name stays inside its cell (the csv module quotes
        # only the line terminator's own characters otherwise)
        writer = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_NONNUMERIC)
        for pred in predictions:
            for rank, (c, p) in enumerate(pred.top, 1):
                writer.writerow((csv_text(pred.image), rank, csv_text(c), float(p)))
        return buf.getvalue()
    text = format_predictions(predictions)
    return text + "\n" if text else ""


def format_predictions(predictions: list[Prediction]) -> str:
    lines = []
    for pred in predictions:
        lines.append(pred.image)
        lines.extend(f"  {100 * p:5.1f}%  {c}" for c, p in pred.top)
    return "\n".join(lines)
