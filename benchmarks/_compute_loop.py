"""(b) compute: the compute limit. Preloaded tensors, normalised once, shuffled index batches, no
augmentation; the same model, optimizer steps and test pass as the other two processes. Nothing else.

Run by throughput.py as its own process; see _common.parse_args for the arguments.
"""

import os
import pickle

import numpy as np
import torch
import torch.nn.functional as F

from _common import build_model, parse_args, report


def load(folder, names, limit=None):
    """CIFAR pickles -> normalised float [N, 3, 32, 32] (converted once) and int64 labels."""
    data, labels = [], []
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data.append(entry["data"])
        labels += entry["labels"]
    x = torch.from_numpy(np.concatenate(data)).view(-1, 3, 32, 32)[:limit]
    x = x.float().div_(255).sub_(0.5).div_(0.5)
    return x, torch.tensor(labels[:len(x)])


def main():
    args = parse_args(__doc__)
    torch.manual_seed(0)
    folder = os.path.join(args.root, "cifar-10-batches-py")
    x_train, y_train = load(folder, [f"data_batch_{i}" for i in range(1, 6)], args.train_limit)
    x_test, y_test = load(folder, ["test_batch"])
    model = build_model(args.model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)

    steps, n, bs = 0, len(x_train), args.batch_size
    for _ in range(args.epochs):
        order = torch.randperm(n)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1

    model.eval()
    correct, eb = 0, args.eval_batch_size
    with torch.inference_mode():
        for start in range(0, len(x_test), eb):
            correct += int((model(x_test[start:start + eb]).argmax(1) == y_test[start:start + eb]).sum())
    report(steps, len(x_test), correct)


if __name__ == "__main__":
    main()
