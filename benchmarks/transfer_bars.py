"""The embedded shapes demo over seeds, measured: the default run's verdict and a head x regularizer grid.

1. `sft run` (the embedded default, which runs 3 seeds) as one whole process: wall seconds (bar: <= 60 s),
   finetune and baseline mean ± sd over seeds, and the transfer gain with its interval over seeds.
2. Every head strategy x regularizer pair of {reinit, lp_ft, imprint} x {none, l2, l2_sp}, finetuned
   from that run's pretrained backbone with the same seeds (so the same few-label subsets) and the
   default stage settings, compared seed by seed with the run's own baselines: mean gain ± sd, and
   the paired difference to reinit+none with its 95% t-interval over seeds.

    python benchmarks/transfer_bars.py [--seeds 3] [--json results.json] [--set precision=bf16 ...]

Results on the CPU depend on the torch thread count: set OMP_NUM_THREADS to compare runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADS = ["reinit", "lp_ft", "imprint"]
REGULARIZERS = {"none": [], "l2": [{"name": "l2"}], "l2_sp": [{"name": "l2_sp"}]}


def interval(diffs: list[float]) -> tuple[float, float]:
    from sftcore._analysis.report import t975

    n = len(diffs)
    sd = statistics.stdev(diffs) if n > 1 else float("nan")
    return statistics.mean(diffs), t975(n - 1) * sd / n ** 0.5


def default_run(seeds: int, out: Path, extra: list[str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    sets = [arg for item in [f"seeds={seeds}", *extra] for arg in ("--set", item)]
    subprocess.run([sys.executable, "-m", "sftcore", "run", "--out", str(out), *sets, "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, json.loads((out / "summary.json").read_text())


def grid(run_dir: Path, summary: dict, scratch: Path, extra: list[str]) -> dict:
    """Each cell's per-seed test accuracy and gain over the same seed's baseline of the default run."""
    import sftcore

    baselines = [r["baseline"]["test_accuracy"] for r in summary["per_seed"]]
    out = {}
    for head in HEADS:
        for reg_name, regs in REGULARIZERS.items():
            head_cfg = {"name": head, "probe_epochs": 10} if head == "lp_ft" else {"name": head}
            cell = sftcore.run(None, out=scratch / f"{head}-{reg_name}", overrides=[
                f"seeds={summary['seeds']}", "pretrain=null", "baseline=null", "checkpoints=false",
                f"backbone.weights={run_dir / 'checkpoints' / 'pretrain.pt'}",
                f"finetune.head={json.dumps(head_cfg)}", f"finetune.regularizers={json.dumps(regs)}", *extra,
            ])
            accs = [r["finetune"]["test_accuracy"] for r in cell["per_seed"]]
            out[f"{head}+{reg_name}"] = {"test_accuracy": accs,
                                         "gain": [100 * (a - b) for a, b in zip(accs, baselines)]}
            print(f"  {head}+{reg_name}: {statistics.mean(accs):.3f}", flush=True)
    return out


def report_default(seconds: float, summary: dict) -> None:
    ft, bl = summary["finetune"], summary["baseline"]
    print(f"`sft run` (default config), seeds {summary['seeds']}, {summary['environment']['torch_threads']} "
          f"torch threads: {seconds:.1f} s as a whole process (bar <= 60 s)")
    lowest = min(r["baseline"]["train_accuracy"] for r in summary["per_seed"])
    print(f"  finetune {100 * ft['test_accuracy']:.1f} ± {100 * ft['test_accuracy_sd']:.1f}%, baseline "
          f"{100 * bl['test_accuracy']:.1f} ± {100 * bl['test_accuracy_sd']:.1f}% "
          f"(baseline final training accuracy >= {lowest:.2f})")
    print(f"  gain {summary['transfer_gain']:+.1f} ± {summary['transfer_gain_sd']:.1f} points (sd), 95% CI "
          f"±{summary['transfer_gain_ci95']:.1f} over seeds; per seed "
          + ", ".join(f"{r['transfer_gain']:+.1f}" for r in summary["per_seed"]))
    print(f"  {summary['verdict']}")


def report_grid(cells: dict) -> None:
    print("\nfinetune test accuracy, mean over seeds (gain over the same seed's scratch baseline, mean ± sd):")
    print(f"{'head':<10}" + "".join(f"{r:>24}" for r in REGULARIZERS))
    for head in HEADS:
        row = []
        for reg in REGULARIZERS:
            c = cells[f"{head}+{reg}"]
            gains = c["gain"]
            sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
            row.append(f"{statistics.mean(c['test_accuracy']):.3f} ({statistics.mean(gains):+.1f} ± {sd:.1f})")
        print(f"{head:<10}" + "".join(f"{c:>24}" for c in row))
    ref = cells["reinit+none"]["test_accuracy"]
    print("\npaired difference to reinit+none, points (mean, 95% t-interval over seeds):")
    for key, c in cells.items():
        if key != "reinit+none":
            mean, ci = interval([100 * (a - b) for a, b in zip(c["test_accuracy"], ref)])
            verdict = "above" if mean - ci > 0 else "below" if mean + ci < 0 else "no clear difference"
            print(f"  {key:<16} {mean:+5.1f} ± {ci:.1f}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the default run and of every cell")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="an extra config override for every run (repeatable)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seconds, summary = default_run(args.seeds, tmp / "default", args.extra)
        report_default(seconds, summary)
        cells = grid(tmp / "default", summary, tmp / "grid", args.extra)
    report_grid(cells)
    if args.json:
        args.json.write_text(json.dumps({"seconds": seconds, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                                         "summary": summary, "grid": cells}, indent=2))


if __name__ == "__main__":
    main()
