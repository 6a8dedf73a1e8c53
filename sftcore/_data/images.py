"""Image files to the backbone's input size: the one decoding path every file-backed dataset shares
(image_folder, torchvision, manifest), public as ``sftcore.api.decode_image`` and ``images_from_files``.

Resizing happens once per image, rather than per batch: user images come in any size and mode, and
decoding a 4000x3000 JPEG every epoch would dominate training. Images are held in memory as uint8 when
the caller says they fit; otherwise a FileSet decodes them on demand in the runner's DataLoader workers.
Imports no torch at module level (``sftcore.api`` stays light)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from sftcore._fileio.reader import image_size, open_image
from sftcore._plugins.contracts import Augment, DatasetContext, DataSplits, FileSet, ImageSet
from sftcore.errors import SftError

if TYPE_CHECKING:  # pragma: no cover
    import torch


class Indexed(Protocol):
    """What the image functions take as ``paths``: a list, or any lazy sequence (``len`` and ``[i]``)."""

    def __len__(self) -> int: ...
    def __getitem__(self, i: int, /) -> Any: ...


def decode_image(
    path: str, shape: tuple[int, int, int], who: str = "dataset", data: bytes | None = None
) -> torch.Tensor:
    """One image file -> uint8 [C, H, W]: upright, RGB or L, shorter side scaled to cover H x W, center crop.
    ``who`` names the dataset in the one-line error a broken file gives; ``data``: the file's bytes when they are
    already at hand (an image stored in a table), ``path`` then only names it."""
    from PIL import Image, ImageOps

    channels, height, width = shape
    img: Image.Image
    try:
        with open_image(path, f"image {path} of {who}", data) as img:
            # JPEG can decode at 1/2, 1/4, 1/8 scale, never below the requested size: far faster for
            # photos. The scale covers the target whichever way the EXIF orientation turns the image.
            w0, h0 = img.size
            k = max(height, width) / min(w0, h0)
            img.draft("RGB" if channels == 3 else "L", (round(w0 * k), round(h0 * k)))
            img = ImageOps.exif_transpose(img)
            img = _to_mode(img, "RGB" if channels == 3 else "L")
    except (MemoryError, SftError):
        raise
    except Exception as exc:  # PIL raises many types for broken files  # noqa: BLE001
        raise SftError(f"{who}: cannot read image {path} ({exc}); fix or remove it") from None
    return _fitted(img, height, width)


def fit_image(img, shape: tuple[int, int, int]) -> torch.Tensor:
    """An opened PIL image (one a caller already has, as ``sftcore.load``'s ``predict`` is given) -> uint8
    ``[C, H, W]`` exactly as ``decode_image`` makes a file's: upright, RGB or L, cover and centre-crop."""
    from PIL import ImageOps

    img = _to_mode(ImageOps.exif_transpose(img), "RGB" if shape[0] == 3 else "L")
    return _fitted(img, shape[1], shape[2])


def _fitted(img, height: int, width: int) -> torch.Tensor:
    """An upright RGB or L image, its shorter side scaled (bicubic) to cover H x W and centre-cropped."""
    import numpy as np
    import torch
    from PIL import Image

    w0, h0 = img.size
    scale = max(height / h0, width / w0)
    w1, h1 = max(width, round(w0 * scale)), max(height, round(h0 * scale))
    left, top = (w1 - width) // 2, (h1 - height) // 2
    if (w1, h1) != (w0, h0):
        img = img.resize((w1, h1), Image.Resampling.BICUBIC)
    img = img.crop((left, top, left + width, top + height))
    array = np.asarray(img, dtype=np.uint8)  # read-only view of PIL's buffer: copied once below
    array = array[None].copy() if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
    return torch.from_numpy(array)


def _to_mode(img, mode: str):
    """Convert to RGB or L. Transparent images go onto white (PIL's convert would expose whatever lies
    under alpha 0); 16-bit and float images are scaled to 8 bits (PIL's convert clips them to white)."""
    import numpy as np
    from PIL import Image

    if img.mode.startswith("I") or img.mode == "F":
        a = np.asarray(img, dtype=np.float32)
        if img.mode.startswith("I;16") or (img.mode == "I" and a.size and a.max() > 255):
            a = a / 257.0
        elif img.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255.0
        img = Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8))  # 2-D uint8: mode L
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img if img.mode == mode else img.convert(mode)


def image_shape_for(paths: Indexed, ctx: DatasetContext, who: str = "dataset") -> tuple[int, int, int]:
    """The (C, H, W) a file-backed dataset holds its images at, the one rule every dataset follows: the images'
    own size when they all share one, no larger than the backbone's input size, and the backbone takes any size
    (a folder of 32 px digits trains a ResNet at 32 px, not at its configured 224), else the backbone's input
    size (a ViT's fixed size, a backbone's ``img_size``, mixed sizes, or photos larger than it: a folder of
    4032x3024 phone photos trains at 224). C is the backbone's channels: 1 or 3."""
    channels, height, width = ctx.input_size
    if channels not in (1, 3):
        raise SftError(
            f"{who} makes 1- or 3-channel images, but the backbone takes {channels}; "
            "choose a backbone with 1 or 3 input channels"
        )
    if ctx.fixed_input_size or len(paths) == 0:
        return channels, height, width
    shared = _shared_size(paths, who)
    if shared is None or shared[1] > height or shared[0] > width:  # larger than the backbone's: its size
        return channels, height, width
    return channels, shared[1], shared[0]


def _shared_size(paths: Indexed, who: str) -> tuple[int, int] | None:
    """(width, height) that every file has, read from headers in chunks (stopping at the first other size)."""
    from concurrent.futures import ThreadPoolExecutor

    first: tuple[int, int] | None = None
    chunk = 512
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), chunk):
            part = [paths[i] for i in range(start, min(start + chunk, len(paths)))]
            for size in pool.map(lambda item: _size(item, who), part):
                first = first or size
                if size != first:
                    return None
    return first


def _source(item) -> tuple[str, bytes | None]:
    """A path, or a ``(name, bytes)`` pair (bytes None: read the file ``name``), as (name, bytes or None)."""
    if isinstance(item, tuple):
        return str(item[0]), item[1]
    return str(item), None


def _size(item, who: str) -> tuple[int, int]:
    name, data = _source(item)
    return image_size(name, f"image {name} of {who}", data)


class ImageLoader:
    """``load(i)`` for a FileSet; a plain class so DataLoader workers can pickle it. ``paths`` is any sequence of
    image sources (paths, or ``(name, bytes)`` pairs: a lazy sequence reading them from a table works too)."""

    def __init__(self, paths: Indexed, shape: tuple[int, int, int], who: str = "dataset"):
        self.paths, self.shape = paths, cast("tuple[int, int, int]", tuple(shape))
        self.who = who

    def __call__(self, i: int):
        name, data = _source(self.paths[i])
        return decode_image(name, self.shape, self.who, data)


def images_from_files(
    paths: Indexed,
    labels: Sequence[int],
    shape: tuple[int, int, int],
    in_memory: bool,
    who: str = "dataset",
) -> ImageSet | FileSet:
    """Files and their labels as a split: decoded now into one uint8 tensor (``in_memory``, a thread pool:
    PIL releases the GIL while decoding), or a FileSet that decodes on demand in DataLoader workers. A path may
    also be a ``(name, bytes)`` pair, an image stored in a table, and ``paths`` a lazy sequence of them."""
    import torch

    if isinstance(paths, list):
        paths = [p if isinstance(p, tuple) else str(p) for p in paths]
    if len(paths) != len(labels):
        raise ValueError(f"images_from_files: {len(paths)} paths but {len(labels)} labels")
    label_t = torch.tensor([int(y) for y in labels], dtype=torch.int64)
    shape = cast("tuple[int, int, int]", tuple(shape))
    if not in_memory:
        return FileSet(load=ImageLoader(paths, shape, who), labels=label_t, image_shape=shape)
    from concurrent.futures import ThreadPoolExecutor

    images = torch.empty((len(paths), *shape), dtype=torch.uint8)

    load = ImageLoader(paths, shape, who)

    def one(i: int) -> None:
        images[i] = load(i)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(one, range(len(paths))))
    return ImageSet(images=images, labels=label_t)


def splits_from_files(
    classes: list[str],
    parts: dict,
    ctx: DatasetContext,
    who: str = "dataset",
    *,
    in_memory: bool | str = "auto",
    test_ratio: float = 0.0,
    crop_padding: int | None = None,
    flip: bool = False,
) -> DataSplits:
    """A file-backed dataset's DataSplits from ``parts`` (``{"train"|"val"|"test": (paths, labels)}``, labels
    indexing ``classes``): without a test part, a stratified share ``test_ratio`` of train held out with the run
    seed; every split decoded at the one size (``image_shape_for``), in memory when they fit; the random-crop
    padding an eighth of that size unless given. What image_folder, torchvision, manifest and hf share."""
    parts = {name: part for name, part in parts.items() if part is not None and len(part[1])}
    if "test" not in parts and test_ratio > 0:
        sources, labels = parts["train"]
        train, test = stratified_split(labels, test_ratio, ctx.seed)
        parts["train"] = (_picked(sources, train), [labels[i] for i in train])
        if test:
            parts["test"] = (_picked(sources, test), [labels[i] for i in test])
    shape = image_shape_for(_Chained([sources for sources, _ in parts.values()]), ctx, who)
    memory = fits_in_memory(sum(len(labels) for _, labels in parts.values()), shape, ctx.max_memory_bytes, in_memory)
    sets = {name: images_from_files(sources, labels, shape, memory, who) for name, (sources, labels) in parts.items()}
    return DataSplits(
        classes=classes,
        train=sets["train"],
        val=sets.get("val"),
        test=sets.get("test"),
        augment=Augment(crop_padding=round(shape[1] / 8) if crop_padding is None else crop_padding, flip=flip),
    )


def _picked(items, keep: list[int]):
    return [items[i] for i in keep] if isinstance(items, list) else _Picked(items, keep)


class _Picked:
    """Some items of a sequence, by index, read lazily (a lazy table stays a table); pickles."""

    def __init__(self, items: Indexed, keep: list[int]):
        self.items, self.keep = items, keep

    def __len__(self) -> int:
        return len(self.keep)

    def __getitem__(self, i: int):
        return self.items[self.keep[i]]


class _Chained:
    """Several sequences read as one (every split's images, for the one size rule)."""

    def __init__(self, parts: list):
        self.parts = parts

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i: int):
        for part in self.parts:
            if i < len(part):
                return part[i]
            i -= len(part)
        raise IndexError(i)


def fits_in_memory(count: int, shape: Sequence[int], max_memory_bytes: int, in_memory: bool | str = "auto") -> bool:
    """Whether ``count`` uint8 images of ``shape`` go in memory: ``in_memory`` true/false decides, ``auto``
    compares their size with the dataset context's ``max_memory_bytes``."""
    if in_memory != "auto":
        return bool(in_memory)
    c, h, w = shape
    return count * c * h * w <= max_memory_bytes


def stratified_split(labels: Sequence[int], test_ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, test) of a hold-out: per class, in label order, a seeded shuffle; round(n * test_ratio)
    to test and at least one left for training. For datasets that come without a test split."""
    import torch

    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    train: list[int] = []
    test: list[int] = []
    for c in sorted(by_class):
        members = by_class[c]
        order = torch.randperm(len(members), generator=g).tolist()
        n = len(members)
        k = min(n - 1, max(1, round(n * test_ratio))) if test_ratio > 0 and n > 1 else 0
        test.extend(members[i] for i in sorted(order[:k]))
        train.extend(members[i] for i in sorted(order[k:]))
    return train, test
