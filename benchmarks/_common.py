"""What the two plain-PyTorch children share: their arguments, the models, the closing report line.

Imported by ``_seed_loop.py`` and ``_compute_loop.py`` only (each runs as its own process).
"""

from __future__ import annotations

import argparse
import json

import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    """The seed document's CNN: conv 6@5x5, maxpool 2, conv 16@5x5, maxpool 2, fc 120, fc 84, fc 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def build_model(name: str) -> nn.Module:
    if name == "lenet":
        return Net()
    import timm  # only the resnet18 workload pays for importing timm

    return timm.create_model("resnet18", num_classes=10)


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--root", required=True, help="folder holding cifar-10-batches-py/")
    p.add_argument("--model", choices=("lenet", "resnet18"), required=True)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training images")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--eval-batch-size", type=int, default=100)
    return p.parse_args()


def report(steps: int, test_images: int, correct: int) -> None:
    """The last stdout line: the work done, so the harness can check all processes did the same."""
    print(json.dumps({"steps": steps, "test_images": test_images,
                      "test_accuracy": correct / max(1, test_images)}), flush=True)
