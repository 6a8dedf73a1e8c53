"""Is a ViT-Tiny's slow start on the shapes source sftcore's doing? The same model in a plain PyTorch loop.

timm ``vit_tiny_patch16_224`` built for 32 px with 8 px patches, random init, on the shapes source's 10,000
training images (sftcore's embedded generator, normalised with its mean/std, no augmentation), AdamW lr 3e-4,
weight decay 0.05, batch 64, one thread; prints the training accuracy of each epoch, to set beside an
``sft run`` of ``benchmarks/configs/adapters-vit-tiny-p8-base.yaml --set pretrain.optimizer.lr=0.0003``.

    python benchmarks/vit_plain_check.py
"""

from __future__ import annotations

import time

import timm
import torch
import torch.nn.functional as F

from sftcore.api import DatasetContext
from sftcore_plugins.datasets.shapes import shapes


def main(epochs: int = 3, batch: int = 64) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = shapes(DatasetContext(seed=0, input_size=(3, 32, 32), stage="pretrain"), task="source")
    images, labels = data.train.images, data.train.labels
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    net = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.05)
    net.train()
    for epoch in range(epochs):
        t0, order, correct = time.perf_counter(), torch.randperm(len(images)), 0
        for start in range(0, len(images), batch):
            idx = order[start : start + batch]
            out = net((images[idx].float() / 255 - mean) / std)
            loss = F.cross_entropy(out, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += int((out.argmax(1) == labels[idx]).sum())
        seconds = time.perf_counter() - t0
        print(f"epoch {epoch + 1}: train accuracy {correct / len(images):.3f}, {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
