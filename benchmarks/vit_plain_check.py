"""sftcore's ViT-Tiny pretraining on the shapes source, beside the same model in a plain PyTorch loop.

timm ``vit_tiny_patch16_224`` built for 32 px (``--patch 16``: 2x2 patches), random init, on the shapes source
rendered by sftcore's embedded generator (``--per-class`` images per class, of which 90 % train as in sftcore,
normalised with its mean/std, no augmentation), AdamW (weight decay 0.05) with a linear warmup of one epoch and a
cosine decay, one seed. Prints each epoch's training accuracy and, at the end, the accuracy on the source's 3,000
test images: the reference for ``benchmarks/configs/adapters-vit-tiny-base.yaml``'s pretraining (the defaults
are that config's recipe).

    OMP_NUM_THREADS=2 python benchmarks/vit_plain_check.py [--per-class 10000] [--epochs 12] [--stop-after 3]
"""

from __future__ import annotations

import argparse
import math
import time

import timm
import torch
import torch.nn.functional as F

from sftcore.api import DatasetContext, stratified_split
from sftcore_plugins.datasets.shapes import shapes


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """The learning rate's factor at ``step``: linear to 1 over ``warmup`` steps, then a cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def accuracy(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, scale) -> float:
    net.eval()
    with torch.no_grad():
        hits = sum(
            int((net(scale(images[s : s + 256])).argmax(1) == labels[s : s + 256]).sum())
            for s in range(0, len(images), 256)
        )
    net.train()
    return hits / len(images)


def main(per_class: int, epochs: int, batch: int, lr: float, patch: int, stop_after: int) -> None:
    torch.manual_seed(0)
    ctx = DatasetContext(seed=0, input_size=(3, 32, 32), stage="pretrain")
    data = shapes(ctx, task="source", train_per_class=per_class)
    keep, _ = stratified_split(data.train.labels.tolist(), 0.1, 0)  # sftcore holds out 10 % for validation
    images, labels = data.train.images[keep], data.train.labels[keep]
    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)
    scale = lambda x: (x.float() / 255 - mean) / std  # noqa: E731
    net = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=patch, num_classes=10)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.05)
    per_epoch = math.ceil(len(images) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, per_epoch, epochs * per_epoch))
    net.train()
    for epoch in range(min(epochs, stop_after)):
        t0, order, correct = time.perf_counter(), torch.randperm(len(images)), 0
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            out = net(scale(images[idx]))
            loss = F.cross_entropy(out, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            correct += int((out.argmax(1) == labels[idx]).sum())
        seconds = time.perf_counter() - t0
        print(f"epoch {epoch + 1}: train accuracy {correct / len(images):.3f}, {seconds:.0f} s", flush=True)
    test = data.test
    print(f"source test accuracy {accuracy(net, test.images, test.labels, scale):.3f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=10000, help="training images per source class")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--patch", type=int, default=16, help="patch size in pixels (16: 2x2 patches at 32 px)")
    parser.add_argument("--stop-after", type=int, default=10**6, help="epochs to run of the --epochs schedule")
    args = parser.parse_args()
    main(args.per_class, args.epochs, args.batch, args.lr, args.patch, args.stop_after)
