"""An embedded dataset: shapes rendered procedurally from a seed in about a second, no files.

The source task and the target task have different classes built from the same primitives
(straight strokes, corners, curves, fills and outlines) under random position, scale, rotation,
colour and background noise, so that features learned on the source really help the target.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch

from sftcore.api import MAX_SEED, Augment, DatasetContext, DataSplits, ImageSet, check_option
from sftcore.errors import ConfigError, show


# --------------------------------------------------------------------------- signed distances
# Each takes local coordinates x, y (shape scaled to about the unit disk) and returns a signed
# distance in the same units: negative inside.
def _box(x, y, cx, cy, hx, hy):
    qx, qy = (x - cx).abs() - hx, (y - cy).abs() - hy
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2)
    return outside + torch.maximum(qx, qy).clamp_max(0)


def _polygon(x, y, n, radius=1.0):
    sector = 2 * math.pi / n
    phi = torch.remainder(torch.atan2(y, x) + math.pi / 2, sector) - sector / 2
    return torch.sqrt(x * x + y * y) * torch.cos(phi) - radius * math.cos(math.pi / n)


def _circle(x, y, cx=0.0, cy=0.0, r=0.9):
    return torch.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


def _star(x, y, points=5):
    t = torch.remainder(torch.atan2(y, x) + math.pi / 2, 2 * math.pi / points) / (2 * math.pi / points)
    boundary = 0.42 + 0.58 * (2 * t - 1).abs()
    return (torch.sqrt(x * x + y * y) - boundary) * 0.6


def _plus(x, y):
    return torch.minimum(_box(x, y, 0, 0, 0.95, 0.3), _box(x, y, 0, 0, 0.3, 0.95))


def _semicircle(x, y):
    return torch.maximum(_circle(x, y + 0.35, r=0.95), -(y + 0.35))


def _crescent(x, y):
    return torch.maximum(_circle(x, y), -_circle(x, y, cx=0.45, r=0.75))


def _arrow(x, y):
    shaft = _box(x, y, -0.35, 0.0, 0.55, 0.16)
    head = torch.maximum(torch.maximum(0.1 - x, (x - 1.0) * 0.6 + y.abs() * 0.8), -x - 10)
    return torch.minimum(shaft, head)


def _ell(x, y):
    return torch.minimum(_box(x, y, -0.55, 0.0, 0.25, 0.9), _box(x, y, 0.0, 0.65, 0.8, 0.25))


def _ellipse(x, y):
    return (torch.sqrt((x / 1.0) ** 2 + (y / 0.5) ** 2) - 1.0) * 0.5


SOURCE_SHAPES = {
    "circle": _circle,
    "triangle": lambda x, y: _polygon(x, y, 3),
    "square": lambda x, y: _polygon(x, y, 4, 0.95),
    "plus": _plus,
    "semicircle": _semicircle,
}
TARGET_SHAPES = {
    "star": _star,
    "crescent": _crescent,
    "arrow": _arrow,
    "ell": _ell,
    "ellipse": _ellipse,
}
STYLES = ("filled", "outline")


def classes(task: str) -> list[tuple[str, str, str | None]]:
    """``(class name, shape, style)``; source classes are shape x style, target classes are shapes."""
    if task == "source":
        return [(f"{s} {st}", s, st) for s in SOURCE_SHAPES for st in STYLES]
    return [(s, s, None) for s in TARGET_SHAPES]


# --------------------------------------------------------------------------- rendering
def render(
    shape_fns,
    labels: torch.Tensor,
    styles: torch.Tensor,
    size: int,
    g: torch.Generator,
    noise: float = 0.03,
    rotation: float = 360.0,
) -> torch.Tensor:
    """uint8 [N, 3, size, size] images; styles: 0 filled, 1 outline."""
    n = len(labels)
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    radius = size * (0.22 + 0.16 * u(n))  # pixels
    cx = size / 2 + (u(n) - 0.5) * (size - 2 * radius) * 0.8
    cy = size / 2 + (u(n) - 0.5) * (size - 2 * radius) * 0.8
    angle = (u(n) - 0.5) * math.radians(rotation)
    pix = torch.arange(size, dtype=torch.float32) + 0.5
    py, px = pix.view(1, size, 1), pix.view(1, 1, size)
    dx = (px - cx.view(n, 1, 1)) / radius.view(n, 1, 1)
    dy = (py - cy.view(n, 1, 1)) / radius.view(n, 1, 1)
    cos, sin = torch.cos(angle).view(n, 1, 1), torch.sin(angle).view(n, 1, 1)
    x, y = cos * dx + sin * dy, -sin * dx + cos * dy
    dist = torch.empty(n, size, size)
    for k, fn in enumerate(shape_fns):
        idx = torch.nonzero(labels == k).flatten()
        if len(idx):
            dist[idx] = fn(x[idx], y[idx])
    dist_px = dist * radius.view(n, 1, 1)
    thickness = (1.0 + 1.2 * u(n)).view(n, 1, 1)
    outline = styles.view(n, 1, 1).bool()
    edge = torch.where(outline, dist_px.abs() - thickness / 2, dist_px)
    alpha = (0.5 - edge).clamp(0, 1).unsqueeze(1)  # anti-aliased coverage
    fg = u(n, 3, 1, 1)
    bg = u(n, 3, 1, 1)
    # keep foreground and background apart in brightness so every shape is visible
    far = (fg.mean(1, keepdim=True) - bg.mean(1, keepdim=True)).abs() < 0.3
    fg = torch.where(far, 1 - bg, fg)
    img = bg + alpha * (fg - bg) + torch.randn(n, 3, size, size, generator=g) * (noise * u(n, 1, 1, 1))
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


def generate(task: str, split: str, per_class: int, seed: int, size: int, noise: float, rotation: float) -> ImageSet:
    table = classes(task)
    fns = [(SOURCE_SHAPES if task == "source" else TARGET_SHAPES)[shape] for _, shape, _ in table]
    stream = ["source-train", "source-test", "target-train", "target-test"].index(f"{task}-{split}")
    g = torch.Generator().manual_seed(seed * 4 + stream)  # one stream per (seed, task, split), never shared
    labels = torch.arange(len(table)).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=g)]
    if task == "source":
        styles = torch.tensor([0 if st == "filled" else 1 for _, _, st in table])[labels]
    else:
        styles = (torch.rand(len(labels), generator=g) < 0.5).long()
    images = torch.cat(
        [
            render(fns, labels[i : i + 4096], styles[i : i + 4096], size, g, noise, rotation)
            for i in range(0, len(labels), 4096)
        ]
    )
    return ImageSet(images, labels)


MAX_PER_CLASS = 100_000
MAX_BYTES = 4 << 30  # the rendered images, train and test, are held in memory


def validate_options(
    where: str,
    task: str = "source",
    train_per_class: int = 1000,
    test_per_class: int = 300,
    seed: int = 0,
    size: int = 32,
    noise: float = 0.03,
    rotation: float = 360.0,
) -> None:
    """Every option's type and range, called when the config is resolved and again by the factory: a
    bad value names itself in one line instead of failing in torch (``size: big``) or allocating far
    more memory than exists (``size: 1000000`` asks for 160 TB)."""
    if task not in ("source", "target"):
        raise ConfigError(f"{where}.task must be 'source' or 'target', got {show(task)}")
    check_option("size", size, int, low=16, high=512, where=where)
    check_option("train_per_class", train_per_class, int, low=1, high=MAX_PER_CLASS, where=where)
    check_option("test_per_class", test_per_class, int, low=0, high=MAX_PER_CLASS, where=where)
    check_option("seed", seed, int, low=0, high=MAX_SEED, where=where)
    check_option("noise", noise, float, low=0.0, high=1.0, where=where)
    check_option("rotation", rotation, float, low=0.0, high=360.0, where=where)
    total = (train_per_class + test_per_class) * len(classes(task)) * 3 * size * size
    if total > MAX_BYTES:
        raise ConfigError(
            f"{where}: shapes with size {size} and {train_per_class} + {test_per_class} images per "
            f"class need {total / 2**30:.1f} GiB; at most {MAX_BYTES >> 30} GiB: lower size or the "
            "per-class counts"
        )


def shapes(
    ctx: DatasetContext,
    task: str = "source",
    train_per_class: int = 1000,
    test_per_class: int = 300,
    seed: int = 0,
    size: int = 32,
    noise: float = 0.03,
    rotation: float = 360.0,
) -> DataSplits:
    """Procedural shapes; ``task: source`` (10 classes) or ``task: target`` (5 other classes)."""
    validate_options(f"config: {ctx.stage}.dataset", task, train_per_class, test_per_class, seed, size, noise, rotation)
    train = generate(task, "train", train_per_class, seed, size, noise, rotation)
    test = generate(task, "test", test_per_class, seed, size, noise, rotation) if test_per_class else None
    return DataSplits(
        classes=[name for name, _, _ in classes(task)],
        train=train,
        test=test,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        augment=Augment(crop_padding=2, flip=True),
    )


cast(Any, shapes).validate_options = validate_options  # a function attribute sftcore reads
