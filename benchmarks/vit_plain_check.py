"""Is a ViT-Tiny's slow start on the shapes source sftcore's doing? The same model in a plain PyTorch loop.

timm ``vit_tiny_patch16_224`` built for 32 px with 8 px patches, random init, on the shapes source's 10,000
training images (sftcore's embedded generator, normalised with its mean/std, no augmentation), AdamW lr 3e-4,
weight decay 0.05, batch 64, one thread; prints the training accuracy of each epoch, to set beside an
``sft run`` of ``benchmarks/configs/adapters-vit-tiny-p8-base.yaml --set pretrain.optimizer.lr=0.0003``.

    python benchmarks/vit_plain_check.py
"""

import time

import timm
import torch
import torch.nn.functional as F

from sftcore.api import DatasetContext
from sftcore_plugins.datasets.shapes import shapes

torch.manual_seed(0)
torch.set_num_threads(1)
s = shapes(DatasetContext(seed=0, input_size=(3, 32, 32), stage="pretrain"), task="source")
x = s.train.images
y = s.train.labels
print(x.shape, x.dtype, s.mean, s.std)
mean = torch.tensor(s.mean).view(1, 3, 1, 1)
std = torch.tensor(s.std).view(1, 3, 1, 1)
net = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10)
opt = torch.optim.AdamW(net.parameters(), lr=3e-4, weight_decay=0.05)
for epoch in range(3):
    t = time.time()
    perm = torch.randperm(len(x))
    correct = 0
    net.train()
    for i in range(0, len(x), 64):
        idx = perm[i : i + 64]
        xb = (x[idx].float() / 255 - mean) / std
        out = net(xb)
        loss = F.cross_entropy(out, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        correct += (out.argmax(1) == y[idx]).sum().item()
    print(
        f"epoch {epoch + 1} train acc {correct / len(x):.3f} loss {loss.item():.3f} {time.time() - t:.0f}s", flush=True
    )
