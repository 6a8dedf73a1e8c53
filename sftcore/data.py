"""The data path: few-label subsets, validation hold-out, batches on the device, per-batch transforms.

In-memory datasets stay uint8 (on the GPU when training there); crop, flip, normalise and resize
run per batch on the training device with no per-sample Python. FileSets go through a
DataLoader with workers and then the same per-batch transform.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from .api import Augment, FileSet, ImageSet


# --------------------------------------------------------------------------- splits
def _per_class(labels: torch.Tensor, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        yield idx[torch.randperm(len(idx), generator=g)]


def few_label_index(labels: torch.Tensor, seed: int, labels_per_class: int | None = None,
                    fraction: float | None = None) -> torch.Tensor | None:
    """A stratified, seeded subset: N per class, or a fraction of each class (at least one)."""
    if labels_per_class is None and fraction is None:
        return None
    keep = []
    for idx in _per_class(labels, seed):
        n = labels_per_class if labels_per_class is not None else max(1, round(len(idx) * fraction))
        keep.append(idx[:n])
    return torch.sort(torch.cat(keep)).values


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
    """uint8 ``[B, C, H, W]`` on the device -> normalised float for the model (augmented if training)."""

    def __init__(self, mean, std, augment: Augment | None, in_shape, out_shape, device,
                 channels_last: bool = False):
        self.augment = augment or Augment()
        self.in_channels, self.out_channels = in_shape[0], out_shape[0]
        self.out_hw = tuple(out_shape[1:])
        self.resize = tuple(in_shape[1:]) != self.out_hw
        self.channels_last = channels_last
        c = self.out_channels
        self.mean, self.std = _fit_channels(mean, c), _fit_channels(std, c)  # recorded with checkpoints
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device).view(1, c, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=device).view(1, c, 1, 1)
        # (x/255 - mean)/std as one multiply-add
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is not None and (self.augment.crop_padding or self.augment.flip):
            x = self._crop_flip(x, generator)
        x = x.float()  # a fresh copy of the uint8 batch: safe to normalise in place
        if self.in_channels != self.out_channels:
            x = x.repeat(1, self.out_channels, 1, 1) if self.in_channels == 1 else x.mean(1, keepdim=True)
        if self.resize:
            down = self.out_hw[0] < x.shape[2]
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False, antialias=down)
        x = x.mul_(self.scale).add_(self.shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _crop_flip(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Zero-padded random crop and horizontal flip as one gather over flattened pixels."""
        b, c, h, w = x.shape
        p = self.augment.crop_padding
        dev = x.device
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if p:
            x = F.pad(x, (p, p, p, p))
            rows = rows + torch.randint(0, 2 * p + 1, (b, 1), generator=g, device=dev)
            cols = cols + torch.randint(0, 2 * p + 1, (b, 1), generator=g, device=dev)
        if self.augment.flip:
            flip = torch.rand((b, 1), generator=g, device=dev) < 0.5
            cols = torch.where(flip, cols.flip(1), cols)
        index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return x.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


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
    """Batches of ``(uint8 images, labels)`` on ``device``; shuffled per epoch from ``seed`` and the epoch."""

    def __init__(self, data: ImageSet | FileSet, batch_size: int, device: torch.device, shuffle: bool,
                 seed: int = 0, workers: int | None = None):
        self.data, self.batch_size, self.device, self.shuffle, self.seed = data, batch_size, device, shuffle, seed
        self.epoch = 0
        self.in_memory = isinstance(data, ImageSet)
        if self.in_memory:
            self.images = data.images.to(device, non_blocking=True)
            self.labels = data.labels.to(device, non_blocking=True)
        else:
            self.workers = min(4, os.cpu_count() or 1) if workers is None else workers

    def __len__(self) -> int:
        n = len(self.data)
        if self.shuffle and n > 1 and n % self.batch_size == 1:
            n -= 1  # the final batch of one that _order drops
        return math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.data), generator=g)
        if len(order) % self.batch_size == 1 and len(order) > 1:
            order = order[:-1]  # a batch of one breaks batch norm in training
        return order

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, batch: int):
        """This epoch's batches from number ``batch`` on (a run resumed mid-epoch skips the ones done)."""
        order = self._order()
        first = batch * self.batch_size
        if self.in_memory:
            n = len(self.data) if order is None else len(order)
            if order is not None:
                order = order.to(self.device)
            for start in range(first, n, self.batch_size):
                if order is None:
                    sl = slice(start, start + self.batch_size)
                    yield self.images[sl], self.labels[sl]
                else:
                    idx = order[start:start + self.batch_size]
                    yield self.images[idx], self.labels[idx]
            return
        if order is None:
            order = torch.arange(len(self.data))
        sampler = order[first:].tolist()
        loader = torch.utils.data.DataLoader(
            _FileDataset(self.data), batch_size=self.batch_size, sampler=sampler, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
        )
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
