"""Start-up time of the `sft` command line, as whole processes.

Times `sft --help`, `sft list --json` and `sft plugins --json` (and `python -c pass` for reference),
interleaved, and prints the median wall-clock seconds of each against the 0.3 s bar (the bar is
for --help). Then runs each once under `python -X importtime` and says whether it imported torch,
torchvision or timm (it should import none of them).

    python benchmarks/startup.py                 # 10 runs each
    python benchmarks/startup.py --runs 20 --json benchmarks/startup.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

BAR_S = 0.3
HEAVY = ("torch", "torchvision", "timm")


def sft_script() -> str:
    script = Path(sys.executable).with_name("sft")
    if not script.is_file():
        raise SystemExit(f"no sft script next to {sys.executable}; run this with the venv's python")
    return str(script)


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def heavy_imports(argv: list[str]) -> list[str]:
    """Which of torch/torchvision/timm the Python command imports (python -X importtime)."""
    err = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True,
                         check=True).stderr
    tops = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in err.splitlines()
            if line.startswith("import time:") and "|" in line}
    return [m for m in HEAVY if m in tops]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    sft = sft_script()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "sft --help": [sft, "--help"],
        "sft list --json": [sft, "list", "--json"],
        "sft plugins --json": [sft, "plugins", "--json"],
    }
    for argv_ in commands.values():  # warm the file cache and .pyc files
        timed(argv_)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv_ in commands.items():
            times[name].append(timed(argv_))

    print(f"{'command':<20} {'median s':>9} {'min s':>7}  <= {BAR_S} s   imports of {'/'.join(HEAVY)}")
    results = {}
    for name, argv_ in commands.items():
        med = statistics.median(times[name])
        heavy = heavy_imports(argv_) if name.startswith("sft") else []
        ok = med <= BAR_S
        bar = (" PASS" if ok else " FAIL") if name == "sft --help" else ""
        print(f"{name:<20} {med:9.3f} {min(times[name]):7.3f}  {'yes' if ok else 'no ':<3}{bar:<5}   "
              f"{', '.join(heavy) if heavy else ('none' if name.startswith('sft') else '-')}")
        results[name] = {"median_s": med, "runs_s": times[name], "within_bar": ok, "heavy_imports": heavy}
    print(f"bar: `sft --help` median <= {BAR_S} s: {'PASS' if results['sft --help']['within_bar'] else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"python": sys.executable, "runs": args.runs, "results": results}, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
