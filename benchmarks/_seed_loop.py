"""(a) seed: the seed document's plain PyTorch loop (torchvision dataset, PIL transforms, DataLoader).

Run by throughput.py as its own process; see _common.parse_args for the arguments.
"""

import os
import pickle

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
import torchvision.transforms as transforms

from _common import build_model, parse_args, report


class CIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 without its md5 checks, which the benchmark's files cannot pass: they are
    random images in CIFAR's on-disk format, not the real ones. Reading and decoding are torchvision's."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:  # torchvision's, less its check_integrity() call
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def main():
    args = parse_args(__doc__)
    torch.manual_seed(0)
    transform = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(32, padding=4),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    # The seed augmented its test set too (a bug); deterministic test transforms cost the same.
    test_transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    trainset = CIFAR10(root=args.root, train=True, download=False, transform=transform)
    if args.train_limit is not None:
        trainset = torch.utils.data.Subset(trainset, range(args.train_limit))
    trainloader = torch.utils.data.DataLoader(trainset, batch_size=args.batch_size, shuffle=True, num_workers=2)
    testset = CIFAR10(root=args.root, train=False, download=False, transform=test_transform)
    testloader = torch.utils.data.DataLoader(testset, batch_size=args.eval_batch_size, shuffle=False, num_workers=2)

    net = build_model(args.model)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

    steps = 0
    for epoch in range(args.epochs):
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            inputs, labels = data
            optimizer.zero_grad()
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            steps += 1
            running_loss += loss.item()
            if i % 2000 == 1999:
                print(f"[{epoch + 1}, {i + 1}] loss: {running_loss / 2000:.3f}")
                running_loss = 0.0

    correct = total = 0
    with torch.no_grad():
        for images, labels in testloader:
            outputs = net(images)
            _, predicted = torch.max(outputs.data, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    report(steps, total, correct)


if __name__ == "__main__":
    main()
