"""The data path: few-label subsets, validation hold-out, batches on the device, per-batch transforms.

In-memory datasets stay uint8 (on the GPU when training there); the stage's augmentations, resizing
and normalisation run per batch on the training device with no per-sample Python. FileSets go through a
DataLoader with workers and then the same per-batch transform.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sftcore._plugins.contracts import Augmentation, AugmentBatch, FileSet, ImageSet
from sftcore._runtime import distributed


# --------------------------------------------------------------------------- splits
def _per_class(labels: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        yield idx[torch.randperm(len(idx), generator=g)]


def few_label_index(
    labels: torch.Tensor,
    seed: int,
    labels_per_class: int | None = None,
    fraction: float | None = None,
    train_examples: int | None = None,
) -> torch.Tensor | None:
    """A stratified, seeded subset: N per class, a fraction of each class (at least one), or N in all."""
    if labels_per_class is None and fraction is None and train_examples is None:
        return None
    shuffled = list(_per_class(labels, seed))
    if train_examples is not None:
        counts = stratified_counts([len(idx) for idx in shuffled], train_examples)
    else:
        counts = [
            labels_per_class if labels_per_class is not None else max(1, round(len(idx) * (fraction or 0.0)))
            for idx in shuffled
        ]
    return torch.sort(torch.cat([idx[:n] for idx, n in zip(shuffled, counts, strict=True)])).values


def stratified_counts(sizes: list[int], total: int) -> list[int]:
    """How many of each class a stratified sample of ``total`` keeps: the classes' shares of ``total``, rounded
    by largest remainder (ties to the earlier class), then one for any class left at none, taken from the
    largest. VTAB's fixed 1000 training examples, kept in the dataset's class proportions. ``total`` must be at
    least the number of non-empty classes (the stage's data check says so first)."""
    if total >= sum(sizes):
        return list(sizes)
    quotas = [total * n / sum(sizes) for n in sizes]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    for i, n in enumerate(sizes):
        if n and not counts[i]:
            counts[max(range(len(counts)), key=lambda k: (counts[k], -k))] -= 1
            counts[i] = 1
    return counts


def holdout_index(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified train/val indices; every class with two or more examples gives at least one to val."""
    train, val = [], []
    for idx in _per_class(labels, seed):
        n = 0
        if val_fraction > 0 and len(idx) >= 2:
            n = min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val.append(idx[:n])
        train.append(idx[n:])
    return torch.sort(torch.cat(train)).values, torch.sort(torch.cat(val)).values


# --------------------------------------------------------------------------- batches
class BatchTransform:
    """uint8 ``[B, C, H, W]`` on the device -> normalised float for the model; for training, the stage's
    augmentations run in between, in their configured order (docs/augmentations.md)."""

    def __init__(
        self,
        mean,
        std,
        augment: Sequence[Augmentation] | None,
        in_shape,
        out_shape,
        device,
        channels_last: bool = False,
        num_classes: int = 0,
    ):
        augment = list(augment or [])
        lead = next((i for i, a in enumerate(augment) if not a.moves_pixels_only), len(augment))
        self.on_uint8, self.on_float = augment[:lead], augment[lead:]  # crop and flip: on the cheap uint8 batch
        self.mixes_labels = any(a.mixes_labels for a in augment)
        self.augments = bool(augment)  # False: the training inputs are a fixed function of the images
        self.num_classes = num_classes
        self.in_channels, self.out_channels = in_shape[0], out_shape[0]
        self.out_hw = tuple(out_shape[1:])
        self.channels_last = channels_last
        c = self.out_channels
        self.mean, self.std = _fit_channels(mean, c), _fit_channels(std, c)  # recorded with checkpoints
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        # (x/255 - mean)/std as one multiply-add; after a float augmentation (x in [0, 1]): x/std - mean/std
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std
        self.unit_scale = 1.0 / std

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, part: tuple[int, int, int] | None = None
    ) -> torch.Tensor:
        """The model's inputs (augmented when a generator is given; targets are left alone)."""
        return self.augmented(x, None, generator, part)[0]

    def augmented(
        self,
        x: torch.Tensor,
        y: torch.Tensor | None,
        generator: torch.Generator | None = None,
        part: tuple[int, int, int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(inputs, targets)``: targets become class probabilities if an augmentation mixes labels.

        ``part=(lo, hi, size)``: ``x`` is rows ``[lo, hi)`` of a global batch of ``size`` (one rank's
        share); the random draws are made for the whole batch, so every rank augments its rows exactly as
        a single process would."""
        batch = None
        if generator is not None and (self.on_uint8 or self.on_float):
            batch = AugmentBatch(
                x,
                y if y is not None else torch.zeros(len(x), dtype=torch.long, device=x.device),
                self.num_classes,
                self.out_hw,
                self.mean,
                self.std,
                generator,
                part or (0, len(x), len(x)),
            )
            for aug in self.on_uint8:
                aug(batch)
            x = batch.images
        unit = bool(batch is not None and self.on_float)
        if unit and self.in_channels == self.out_channels:
            x = torch.mul(x, 1.0 / 255.0)  # uint8 -> float in [0, 1] as one op: a fresh tensor, safe to change
        else:
            x = self._channels(x.float())  # a fresh copy of the uint8 batch: safe to change in place
            x = x.mul_(1.0 / 255.0) if unit else x
        if unit:
            assert batch is not None  # unit implies a batch
            batch.images = x
            for aug in self.on_float:
                aug(batch)
            x = batch.images
            y = batch.targets if y is not None else None
        if tuple(x.shape[2:]) != self.out_hw:
            down = self.out_hw[0] < x.shape[2]
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False, antialias=down)
        x = x.mul_(self.unit_scale).add_(self.shift) if unit else x.mul_(self.scale).add_(self.shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def _channels(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels != self.out_channels:
            x = x.repeat(1, self.out_channels, 1, 1) if self.in_channels == 1 else x.mean(1, keepdim=True)
        return x


CHUNK_PIXELS = 1 << 19  # augment_chunk: auto augments batches together up to this many pixels (at most 4)


def augment_chunk(setting: int | str, transform: BatchTransform, batch_size: int, world: int) -> int:
    """How many training batches are augmented as one: ``augment_chunk``, or for ``auto`` as many as
    hold 2^19 pixels (at most 4: CIFAR-sized batches of 100 or 128). Per-operation overhead, not
    arithmetic, is what augmentation costs on small images, so one set of tensor ops for several
    batches is cheaper. One batch at a time without float augmentations (crop and flip are a gather
    each) and under torch.distributed (each rank draws its share of each global batch)."""
    if world > 1 or not transform.on_float:
        return 1
    if setting != "auto":
        return int(setting)
    h, w = transform.out_hw
    return max(1, min(4, CHUNK_PIXELS // (batch_size * h * w)))


def augment_together(transform: BatchTransform, batches: list, generator: torch.Generator) -> list:
    """``[(inputs, targets), ...]``: the batches augmented as one batch (their concatenation), split back."""
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    inputs, targets = transform.augmented(x, y, generator)
    assert targets is not None  # targets in, targets out
    sizes = [len(b[1]) for b in batches]
    return list(zip(inputs.split(sizes), targets.split(sizes)))


def _fit_channels(values, channels: int) -> list[float]:
    values = list(values)
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values) / len(values)]
    return (values * channels)[:channels] if len(values) == 1 else values[:channels]


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, data: FileSet):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data.item(i), self.data.labels[i]


class Batches:
    """Batches of ``(uint8 images, labels)`` on ``device``; shuffled per epoch from ``seed`` and the epoch.

    Under torch.distributed (``sharded``), every rank walks the same global order and takes its
    contiguous slice of each global batch, so that ``batch_size`` stays the global batch size and
    every example is used once per epoch across the ranks. An evaluation set (not shuffled) is cut
    into one contiguous share per rank instead.
    """

    def __init__(
        self,
        data: ImageSet | FileSet,
        batch_size: int,
        device: torch.device,
        shuffle: bool,
        seed: int = 0,
        workers: int | None = None,
        sharded: bool = False,
    ):
        self.data, self.batch_size, self.device, self.shuffle, self.seed = data, batch_size, device, shuffle, seed
        self.epoch = 0
        self.in_memory = isinstance(data, ImageSet)
        self.rank, self.world = (distributed.rank(), distributed.world_size()) if sharded else (0, 1)
        if isinstance(data, ImageSet):
            self.images = data.images.to(device, non_blocking=True)
            self.labels = data.labels.to(device, non_blocking=True)
        else:
            self.workers = min(4, os.cpu_count() or 1) if workers is None else workers

    def _count(self) -> int:
        """Examples per epoch: a shuffled epoch drops a final batch too small to give each rank two
        (a batch of one breaks batch norm in training)."""
        n = len(self.data)
        if self.shuffle and n > 2 * self.world and 0 < n % self.batch_size < 2 * self.world:
            n -= n % self.batch_size
        return n

    def __len__(self) -> int:
        if not self.shuffle and self.world > 1:
            lo, hi = distributed.shard(len(self.data), self.rank, self.world)
            return math.ceil((hi - lo) / self.batch_size)
        return math.ceil(self._count() / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def part(self, batch: int) -> tuple[int, int, int]:
        """``(lo, hi, size)``: this rank's rows ``[lo, hi)`` of global batch ``batch`` of ``size`` rows."""
        size = min(self.batch_size, self._count() - batch * self.batch_size)
        lo, hi = distributed.shard(size, self.rank, self.world)
        return lo, hi, size

    def _indices(self, first: int):
        """This rank's example indices for each batch from ``first`` on (None: contiguous, unsharded)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(len(self.data), generator=g)[: self._count()]
        elif self.world > 1:
            lo, hi = distributed.shard(len(self.data), self.rank, self.world)
            order = torch.arange(lo, hi)
        else:
            return None
        if self.in_memory:
            order = order.to(self.device)  # one copy per epoch; batches are slices of it
        out = []
        for b in range(first, math.ceil(len(order) / self.batch_size) if not self.shuffle else len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if self.shuffle and self.world > 1:
                lo, hi, _ = self.part(b)
                idx = idx[lo:hi]
            out.append(idx)
        return out

    def __iter__(self):
        return self.iter_from(0)

    def batch_indices(self, first: int) -> list[torch.Tensor]:
        """The example indices of this epoch's batches from number ``first`` on, in the order ``iter_from``
        yields them (a stage training on cached features walks the same order)."""
        index = self._indices(first)
        if index is None:
            everything = torch.arange(len(self.data))
            index = [
                everything[s : s + self.batch_size]
                for s in range(first * self.batch_size, len(self.data), self.batch_size)
            ]
        return index

    def iter_from(self, batch: int):
        """This epoch's batches from number ``batch`` on (a run resumed mid-epoch skips the ones done)."""
        index = self._indices(batch)
        if self.in_memory:
            if index is None:
                for start in range(batch * self.batch_size, len(self.data), self.batch_size):
                    sl = slice(start, start + self.batch_size)
                    yield self.images[sl], self.labels[sl]
                return
            for idx in index:
                yield self.images[idx], self.labels[idx]
            return
        if index is None:
            index = self.batch_indices(batch)
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.data),  # type: ignore[arg-type]  # not in memory: a FileSet
            batch_sampler=[i.tolist() for i in index],
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
