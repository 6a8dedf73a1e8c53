"""A frozen backbone is computed once: whole `sft run` processes of a linear probe at 2 and at 20 epochs.

The workload of issue 25: `timm resnet18` (random init) on the shapes target (5 classes x 900 training images
at 32 px, 4,050 after the validation hold-out), `head: linear_probe`, `augment: []`, no pretraining and no
baseline. Before the feature cache the 20-epoch process took 4.7 times the 2-epoch one (61 s vs 13 s); the bar
is 1.5. With `--uncached` the same runs take today's path (a backbone pass per step), for the ratio before.
Rounds alternate the processes; medians are reported, with the test accuracies (the same within noise).

    python benchmarks/frozen_features.py                  # 3 rounds
    python benchmarks/frozen_features.py --rounds 5 --uncached
    python benchmarks/frozen_features.py --no-checkpoints   # without the per-epoch checkpoint of the whole model
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

import yaml

BAR = 1.5
UNCACHED = (  # today's path, for the comparison: the loop never takes the cached one
    "import sys, sftcore._train.loop as L; L.Stage._uncached_reason = lambda self: ''; "
    "from sftcore.cli import main; main(sys.argv[1:])"
)


def config(epochs: int, checkpoints: bool = True) -> dict:
    stage = {
        "dataset": {"name": "shapes", "task": "target", "train_per_class": 900, "test_per_class": 100, "size": 32},
        "epochs": epochs,
        "head": "linear_probe",
        "augment": [],
        "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.05},
    }
    backbone = {"name": "timm", "model": "resnet18", "pretrained": False}
    return {"name": f"lp{epochs}", "backbone": backbone, "finetune": stage, "device": "cpu", "pretrain_cache": False,
            "checkpoints": checkpoints}


def timed_run(folder: Path, epochs: int, uncached: bool, tag: str, checkpoints: bool) -> tuple[float, float]:
    cfg = folder / f"{tag}.yaml"
    cfg.write_text(yaml.safe_dump(config(epochs, checkpoints)))
    out = folder / f"{tag}-{time.monotonic_ns()}"
    head = [sys.executable, "-c", UNCACHED] if uncached else [sys.executable, "-m", "sftcore"]
    t0 = time.perf_counter()
    subprocess.run([*head, "run", str(cfg), "--out", str(out), "--no-progress"], check=True,
                   stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    return seconds, json.loads((out / "summary.json").read_text())["finetune"]["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uncached", action="store_true", help="also time today's path (a backbone pass per step)")
    parser.add_argument("--no-checkpoints", action="store_true", help="checkpoints: false (no per-epoch checkpoint)")
    args = parser.parse_args()
    paths = [(False, 2), (False, 20)] + ([(True, 2), (True, 20)] if args.uncached else [])
    seconds: dict = {p: [] for p in paths}
    accuracy: dict = {p: [] for p in paths}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for uncached, epochs in paths:
                tag = f"{'uncached' if uncached else 'cached'}{epochs}"
                s, acc = timed_run(Path(tmp), epochs, uncached, tag, not args.no_checkpoints)
                seconds[(uncached, epochs)].append(s)
                accuracy[(uncached, epochs)].append(acc)
    for uncached in sorted({u for u, _ in paths}):
        two, twenty = (statistics.median(seconds[(uncached, e)]) for e in (2, 20))
        name = "uncached (a backbone pass per step)" if uncached else "cached (features once)"
        verdict = "" if uncached else f"  {'PASS' if twenty / two <= BAR else 'FAIL'} (bar {BAR})"
        print(f"{name}: 2 epochs {two:.1f} s, 20 epochs {twenty:.1f} s, ratio {twenty / two:.2f}{verdict}")
        for e in (2, 20):
            print(f"  test accuracy at {e} epochs: {', '.join(f'{a:.4f}' for a in accuracy[(uncached, e)])}")


if __name__ == "__main__":
    main()
