"""Which throughput options pay on this machine: `sft run` as a whole process with each setting.

For lenet (one epoch of the 50k CIFAR-format images) and timm resnet18 (one epoch over 5,000
of them), it times channels_last off/on x precision fp32/bf16 (and torch.compile once for lenet),
alternating in rounds, and prints medians relative to the plain fp32 contiguous run. The
`auto` defaults in sftcore._runtime.device.resolve_performance follow these numbers.

    python benchmarks/options.py [--rounds 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from throughput import ensure_data  # noqa: E402  (the same locally written CIFAR-format data)

WORKLOADS = {
    "lenet": ({"name": "lenet"}, None),
    "resnet18": ({"name": "timm", "model": "resnet18"}, 0.1),
}
SETTINGS = [
    {"channels_last": False, "precision": "fp32"},
    {"channels_last": True, "precision": "fp32"},
    {"channels_last": False, "precision": "bf16"},
    {"channels_last": True, "precision": "bf16"},
]


def config(backbone: dict, fraction, root: Path, device: str, setting: dict) -> dict:
    dataset = {"name": "cifar10", "root": str(root), "verify": False, "val_fraction": 0,
               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    if fraction is not None:
        dataset["fraction"] = fraction
    return {"name": "options", "device": device, "backbone": backbone, "checkpoints": False, **setting,
            "pretrain": {"dataset": dataset, "epochs": 1, "batch_size": 100, "eval_batch_size": 500,
                         "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9}, "schedule": "none"}}


def timed_run(cfg: dict, work: Path) -> tuple[float, float]:
    path = work / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    out = work / f"run-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sftcore", "run", str(path), "--out", str(out), "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    return seconds, json.loads((out / "summary.json").read_text())["pretrain"]["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workloads", default="lenet,resnet18")
    args = parser.parse_args()
    root, _ = ensure_data(50000, 10000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.workloads.split(","):
            backbone, fraction = WORKLOADS[name]
            settings = SETTINGS + ([{"channels_last": True, "precision": "fp32", "compile": True}]
                                   if name == "lenet" else [])
            times: dict[int, list[float]] = {i: [] for i in range(len(settings))}
            for _ in range(args.rounds):
                for i, setting in enumerate(settings):
                    seconds, acc = timed_run(config(backbone, fraction, root, args.device, setting), work)
                    times[i].append(seconds)
            base = statistics.median(times[0])
            print(f"== {name} ({args.device}), median of {args.rounds} whole-process runs")
            for i, setting in enumerate(settings):
                med = statistics.median(times[i])
                label = ", ".join(f"{k}={v}" for k, v in setting.items())
                print(f"   {label:<52} {med:7.2f} s   x{med / base:.2f}")


if __name__ == "__main__":
    main()
