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

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")  # files a folder gives
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
        from sftcore._data.images import fit_image

        return fit_image(image, tuple(shape))  # as a file of that image is decoded
    if image.dtype != torch.uint8 or image.ndim not in (2, 3):
        raise SftError(f"an image tensor must be uint8 [C, H, W] or [H, W], got {image.dtype} {tuple(image.shape)}")
    if image.ndim == 3 and image.shape[0] not in (1, 2, 3, 4):
        hint = "; it looks like [H, W, C]: pass image.permute(2, 0, 1)" if image.shape[-1] in (1, 3, 4) else ""
        raise SftError(f"an image tensor must be [C, H, W] with 1 to 4 channels, got {tuple(image.shape)}{hint}")
    image = image[None] if image.ndim == 2 else image
    from PIL import Image

    from sftcore._data.images import fit_image

    array = (
        image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    )  # PIL reads H x W x 2 as LA, x 3 as RGB, x 4 as RGBA
    # through PIL, as a file of that image would be: the same resize, to the last bit
    return fit_image(Image.fromarray(array[..., 0] if array.shape[2] == 1 else array), tuple(shape))


def read_image(path, shape) -> torch.Tensor:
    """uint8 ``[C, H, W]`` of ``shape`` from an image file, decoded as the run's datasets decoded theirs (the one
    path, ``sftcore.api.decode_image``): EXIF orientation applied, transparency onto white, 16 bits scaled to 8,
    grey from colour with PIL's weights, resized (bicubic) to cover H x W and centre-cropped."""
    from sftcore._data.images import decode_image

    p = Path(path)
    if not p.exists():
        raise SftError(f"image '{p}' not found; check the path")
    if p.is_dir():
        raise SftError(f"image '{p}' is a folder; pass image files (a shell glob such as '{p}/*.jpg' works)")
    if p.is_file() and p.stat().st_size == 0:
        raise SftError(f"image '{p}' is an empty file")
    return decode_image(str(p), tuple(shape), "sft predict")


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
