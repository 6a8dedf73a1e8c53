"""Images per second of sftcore's dataset loaders against torchvision's DataLoader on the same image files.

Issue 27 asks how long a transfer-suite dataset takes to load. This writes an image folder of photo-sized JPEGs
(``--images`` files of ``--size`` pixels, as Flowers102, Pets, Food-101 and DTD ship them) and times, over
``--epochs`` epochs of batches of 64 at ``--out-size`` px (224: ImageNet weights at their resolution):

- ``sftcore in-memory``: the ``image_folder`` dataset (``images_from_files``, ``in_memory: true``: each file
  decoded once, in a thread pool, then batches are slices of one uint8 tensor) iterated by the runner's Batches;
- ``sftcore streamed``: the same files as a FileSet (``in_memory: false``, what a dataset too big for memory
  gets) through the runner's Batches and its DataLoader workers, decoding every epoch;
- ``torchvision``: ``torchvision.datasets.ImageFolder`` with ``Resize(out) + CenterCrop(out) + PILToTensor()``
  through ``torch.utils.data.DataLoader`` with the same number of workers, decoding every epoch; ``torchvision
  bicubic`` resamples as sftcore does (bicubic, as timm's eval transforms), torchvision's default is bilinear.

Each is timed as a whole (epoch 1 includes sftcore's decode-once), on the same files, in one process, in
alternating rounds; medians are reported. Nothing trains: this is the loader alone.

    python benchmarks/loader_throughput.py                      # 1,000 images of 500x375, 3 epochs, 2 rounds
    python benchmarks/loader_throughput.py --images 4000 --workers 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def write_folder(root: Path, images: int, size: tuple[int, int], classes: int = 10) -> None:
    """``images`` JPEGs of noise-textured colour fields (real JPEG entropy, not flat colour), ``classes`` folders."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / f"class{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, 3)
        noise = rng.normal(0, 40, (size[1] // 4, size[0] // 4, 3))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR).save(folder / f"{i:05d}.jpg", quality=90)


def sftcore_epochs(root: Path, out: int, epochs: int, in_memory: bool, workers: int) -> list[float]:
    """Seconds per epoch through the image_folder dataset and the runner's Batches (epoch 1 includes loading)."""
    from sftcore._data.batches import Batches
    from sftcore.api import DatasetContext
    from sftcore_plugins.datasets.image_folder import image_folder

    ctx = DatasetContext(seed=0, input_size=(3, out, out), stage="finetune", fixed_input_size=True)
    t0 = time.perf_counter()
    train = image_folder(ctx, root=str(root), test_ratio=0.0, in_memory=in_memory).train
    times = []
    batches = Batches(train, 64, torch.device("cpu"), shuffle=True, seed=0, workers=workers)
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        for x, _ in batches:
            assert x.shape[1:] == (3, out, out)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return times


def torchvision_epochs(root: Path, out: int, epochs: int, workers: int, bicubic: bool = False) -> list[float]:
    """Seconds per epoch of torchvision's ImageFolder through a DataLoader (decoding every epoch); ``bicubic``:
    resample as sftcore does (and timm's eval transforms), instead of torchvision's default bilinear."""
    from torchvision import datasets, transforms

    mode = transforms.InterpolationMode.BICUBIC if bicubic else transforms.InterpolationMode.BILINEAR
    tf = transforms.Compose([transforms.Resize(out, mode), transforms.CenterCrop(out), transforms.PILToTensor()])
    t0 = time.perf_counter()
    data = datasets.ImageFolder(str(root), transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, num_workers=workers)
    times = []
    for _ in range(epochs):
        for x, _ in loader:
            assert x.shape[1:] == (3, out, out)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--size", default="500x375", help="W x H of the JPEGs written (default 500x375)")
    p.add_argument("--out-size", type=int, default=224, help="the side the loaders deliver (default 224)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="DataLoader workers (both)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    runs: dict[str, list[list[float]]] = {
        "sftcore in-memory": [],
        "sftcore streamed": [],
        "torchvision": [],
        "torchvision bicubic": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        write_folder(root, args.images, (width, height))
        for _ in range(args.rounds):
            runs["sftcore in-memory"].append(sftcore_epochs(root, args.out_size, args.epochs, True, args.workers))
            runs["sftcore streamed"].append(sftcore_epochs(root, args.out_size, args.epochs, False, args.workers))
            runs["torchvision"].append(torchvision_epochs(root, args.out_size, args.epochs, args.workers))
            runs["torchvision bicubic"].append(
                torchvision_epochs(root, args.out_size, args.epochs, args.workers, bicubic=True)
            )
    report(runs, args)


def report(runs: dict[str, list[list[float]]], args) -> None:
    """Median seconds per epoch and images/s: the first epoch, the later ones, and all epochs together."""
    results = {}
    print(
        f"{args.images} JPEGs of {args.size} -> {args.out_size}px, batch 64, {args.workers} workers, "
        f"{args.epochs} epochs, median of {args.rounds} rounds, torch threads {torch.get_num_threads()}"
    )
    print(f"{'loader':<22}{'epoch 1 img/s':>15}{'later img/s':>14}{'all epochs s':>14}{'vs torchvision':>16}")
    base = statistics.median(sum(r) for r in runs["torchvision"])
    for name, rounds in runs.items():
        first = statistics.median(r[0] for r in rounds)
        later = statistics.median(statistics.mean(r[1:]) for r in rounds) if args.epochs > 1 else float("nan")
        total = statistics.median(sum(r) for r in rounds)
        results[name] = {
            "epoch1_images_per_s": args.images / first,
            "later_images_per_s": args.images / later,
            "total_s": total,
            "speedup_vs_torchvision": base / total,
        }
        print(f"{name:<22}{args.images / first:>15.0f}{args.images / later:>14.0f}{total:>14.2f}{base / total:>15.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
