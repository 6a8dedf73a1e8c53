"""The pipeline issue's bars on the embedded shapes task, measured.

1. `sft run` (the embedded default) as a whole process, once per seed: wall seconds and
   transfer_gain over the scratch baseline (bar: <= 60 s, mean gain >= 15 points).
2. At the same budget (the default finetune stage, 10 labels per class), every head strategy
   x regularizer pair of {reinit, lp_ft, imprint} x {none, l2, l2_sp}, finetuned from each
   seed's own pretrained checkpoint and compared with that seed's baseline.

    python benchmarks/transfer_bars.py [--seeds 0 1 2] [--json results.json] [--set precision=bf16 ...]
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

HEADS = ["reinit", "lp_ft", "imprint"]
REGULARIZERS = {"none": [], "l2": [{"name": "l2"}], "l2_sp": [{"name": "l2_sp"}]}


def default_run(seed: int, out: Path, extra: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    sets = [arg for item in [f"seed={seed}", *extra] for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "sftcore", "run", "--out", str(out), *sets, "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, json.loads((out / "summary.json").read_text())


def grid(seed: int, run_dir: Path, baseline: float, scratch: Path, extra: list[str]) -> dict:
    import sftcore

    out = {}
    for head in HEADS:
        for reg_name, regs in REGULARIZERS.items():
            head_cfg = {"name": head, "probe_epochs": 10} if head == "lp_ft" else {"name": head}
            summary = sftcore.run(None, out=scratch / f"{seed}-{head}-{reg_name}", overrides=[
                f"seed={seed}", "pretrain=null", "baseline=null", "checkpoints=false",
                f"backbone.weights={run_dir / 'checkpoints' / 'pretrain.pt'}",
                f"finetune.head={json.dumps(head_cfg)}", f"finetune.regularizers={json.dumps(regs)}", *extra,
            ])
            acc = summary["finetune"]["test_accuracy"]
            out[f"{head}+{reg_name}"] = {"test_accuracy": acc, "gain": 100 * (acc - baseline)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for every run (repeatable)")
    args = parser.parse_args()
    results = {"seeds": args.seeds, "default": {}, "grid": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in args.seeds:
            seconds, summary = default_run(seed, tmp / f"default-{seed}", args.extra)
            results["default"][seed] = {
                "seconds": round(seconds, 1), "transfer_gain": summary["transfer_gain"],
                "ci95": summary["transfer_gain_ci95"], "finetune": summary["finetune"]["test_accuracy"],
                "baseline": summary["baseline"]["test_accuracy"], "pretrain": summary["pretrain"]["test_accuracy"],
            }
            print(f"seed {seed}: sft run {seconds:.1f} s, gain {summary['transfer_gain']:+.1f} points "
                  f"(finetune {summary['finetune']['test_accuracy']:.3f}, "
                  f"baseline {summary['baseline']['test_accuracy']:.3f})", flush=True)
            results["grid"][seed] = grid(seed, tmp / f"default-{seed}", summary["baseline"]["test_accuracy"],
                                         tmp / "grid", args.extra)
    runs = list(results["default"].values())
    gains = [r["transfer_gain"] for r in runs]
    secs = [r["seconds"] for r in runs]
    print(f"\n`sft run` (default config), {len(runs)} seeds: median {statistics.median(secs):.1f} s "
          f"(max {max(secs):.1f} s; bar <= 60 s), transfer_gain mean {statistics.mean(gains):+.1f} points "
          f"(per seed: {', '.join(f'{g:+.1f}' for g in gains)}; bar >= 15)")
    print("\nfinetune test accuracy at 10 labels/class, mean over seeds (gain over scratch in points):")
    print(f"{'head':<10}" + "".join(f"{r:>18}" for r in REGULARIZERS))
    for head in HEADS:
        cells = []
        for reg in REGULARIZERS:
            accs = [results["grid"][s][f"{head}+{reg}"]["test_accuracy"] for s in args.seeds]
            gain = statistics.mean(results["grid"][s][f"{head}+{reg}"]["gain"] for s in args.seeds)
            cells.append(f"{statistics.mean(accs):.3f} ({gain:+5.1f})")
        print(f"{head:<10}" + "".join(f"{c:>18}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
