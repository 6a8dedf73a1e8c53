"""Step time and peak memory of parameter-efficient finetuning against full finetuning, in one run.

Each variant runs in its own process (so that its peak RSS is its own): a timm backbone (random init) with a
10-class head, built through sftcore's registry, the variant's adapter applied as a stage applies it, then
SGD steps on random batches; the child reports the median step time over the timed steps and its peak RSS.
Rounds alternate the variants; medians over rounds are printed, with the ratio to full finetuning.

    python benchmarks/adapters_step.py                                  # vit_tiny at 64 px, 3 rounds
    python benchmarks/adapters_step.py --model resnet18 --size 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {
    "full": None,
    "lora": {"name": "lora", "r": 8, "alpha": 16, "target": "qkv|fc1|fc2|conv1|conv2"},
    "bitfit": {"name": "bitfit"},
    "norm_only": {"name": "norm_only"},
    "linear_probe": "frozen",
}


def child(variant: str, model: str, size: int, batch: int, steps: int) -> dict:
    import torch
    from torch import nn

    from sftcore._train.model import TransferModel
    from sftcore.api import BackboneContext, freeze
    from sftcore.testing import registry

    torch.manual_seed(0)
    args = {"model": model, "pretrained": False}
    if "vit" in model:
        args["model_args"] = {"img_size": size}
    backbone = registry().get("backbones", "timm").create(BackboneContext(seed=0), **args)
    spec = VARIANTS[variant]
    if spec == "frozen":
        freeze(backbone.features)
    elif spec is not None:
        options = {k: v for k, v in spec.items() if k != "name"}
        if spec["name"] == "lora":
            names = [n for n, m in backbone.features.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            wanted = ("qkv", "fc1", "fc2") if "vit" in model else ("conv1", "conv2")
            options["target"] = "|".join(w for w in wanted if any(n.endswith(w) for n in names))
        registry().get("adapters", spec["name"]).create(**options).apply(backbone)
    net = TransferModel(backbone, nn.Linear(backbone.num_features, 10))
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return {
        "step_s": statistics.median(times),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable": sum(p.numel() for p in params),
        "total": sum(p.numel() for p in net.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.size, args.batch, args.steps)))
        return
    results: dict = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--size", str(args.size),
                   "--batch", str(args.batch), "--steps", str(args.steps)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            results[variant].append(json.loads(out))
    full = statistics.median(r["step_s"] for r in results["full"])
    print(f"{args.model} at {args.size} px, batch {args.batch}, median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':<14}{'trainable':>12}{'of':>12}{'step ms':>10}{'x full':>8}{'peak MiB':>10}")
    for variant, runs in results.items():
        step = statistics.median(r["step_s"] for r in runs)
        peak = statistics.median(r["peak_mib"] for r in runs)
        print(f"{variant:<14}{runs[0]['trainable']:>12,}{runs[0]['total']:>12,}{1000 * step:>10.1f}"
              f"{step / full:>8.2f}{peak:>10.0f}")


if __name__ == "__main__":
    main()
