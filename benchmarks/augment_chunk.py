"""What augmenting several training batches as one (`augment_chunk`) saves, in one process.

Batches of 100 random uint8 CIFAR-sized images go through sft's own augmentation path (BatchTransform,
and augment_together for chunks of K > 1 batches) with `random_resized_crop` (scale 0.35-1),
`trivial_augment` and `mixup`, each chunk followed by one LeNet training step per batch, as in the
training loop (the steps keep the caches as a real run leaves them: augmentation alone in a tight loop
runs faster than it does between training steps). Chunk sizes alternate within each round; it prints the
median over rounds of the augmentation milliseconds per batch and of the whole step (augmentation +
training) per batch, for each K.

    python benchmarks/augment_chunk.py                 # K = 1, 2, 4, 8; 5 rounds of 48 batches
    python benchmarks/augment_chunk.py --chunks 1,4 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import build_model  # noqa: E402

from sftcore._plugins import components  # noqa: E402
from sftcore._data.batches import BatchTransform, augment_together  # noqa: E402
from sftcore._plugins.manager import get_registry  # noqa: E402

AUGMENT = [{"name": "random_resized_crop", "scale": [0.35, 1.0]}, {"name": "trivial_augment"}, {"name": "mixup"}]


def one_round(chunk: int, transform, data, labels, model, optimizer, generator) -> tuple[float, float]:
    """(augmentation ms per batch, augmentation + training step ms per batch) over all the batches."""
    augment, t0 = 0.0, time.perf_counter()
    for c in range(0, len(data), chunk):
        t = time.perf_counter()
        done = augment_together(transform, list(zip(data[c:c + chunk], labels[c:c + chunk])), generator)
        augment += time.perf_counter() - t
        for inputs, targets in done:
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()
    return 1e3 * augment / len(data), 1e3 * (time.perf_counter() - t0) / len(data)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", default="1,2,4,8", help="comma-separated chunk sizes (batches augmented as one)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batches", type=int, default=48, help="batches of 100 per round (a multiple of every chunk)")
    args = p.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",")]
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (args.batches, 100, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.batches, 100), generator=g)
    augs = [components.build_augmentation(get_registry(), a, f"augment[{i}]") for i, a in enumerate(AUGMENT)]
    transform = BatchTransform([0.5] * 3, [0.5] * 3, augs, (3, 32, 32), (3, 32, 32), torch.device("cpu"),
                               num_classes=10)
    model = build_model("lenet")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    one_round(4, transform, data[:8], labels[:8], model, optimizer, generator)  # warm-up
    results: dict[int, list] = {k: [] for k in chunks}
    for _ in range(args.rounds):
        for k in chunks:
            results[k].append(one_round(k, transform, data, labels, model, optimizer, generator))
    print(f"torch threads: {torch.get_num_threads()}; {args.rounds} rounds of {args.batches} batches of 100")
    print("| chunk | augmentation ms / batch | augmentation + step ms / batch |")
    print("|---|---|---|")
    for k, rows in results.items():
        print(f"| {k} | {statistics.median(r[0] for r in rows):.2f} | {statistics.median(r[1] for r in rows):.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
