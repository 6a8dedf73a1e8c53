"""`sft sweep` against the same cells run one by one with `sft run`: wall time and how often pretraining ran.

The workload is the shapes demo (sftcore/configs/default.yaml) made affordable: pretrain.epochs 2 (the
demo: 8), finetune epochs 3 (demo: auto), baseline 3 epochs (demo: auto), device cpu; a 3 x 3 grid
(finetune.regularizers.0.alpha: 0.001, 0.01, 0.1; finetune.head: reinit, lp_ft, imprint) with
3 seeds per cell. Modes, each a whole process timed from start to exit:

- sweep:  `sft sweep SWEEP --jobs J` with one fresh, empty SFT_CACHE_DIR for the sweep;
- runs:   the 9 cells as 9 `sft run BASE --set ... --seeds 3`, one after the other, each with its own
          fresh, empty SFT_CACHE_DIR (no shared cache: every run pretrains);
- ray:    `sft sweep SWEEP --executor ray --jobs J` (a local Ray instance), when ray is installed.

Pretraining runs are counted from the output: a "pretrain epoch 1/" line is one pretraining; a "reused
cache entry" line is a cache hit. Prints one line per measurement, then the medians over --repeats.

    python benchmarks/sweep.py [--repeats 3] [--jobs 2] [--modes sweep,runs,ray] [--pretrain-epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GRID = {"finetune.regularizers.0.alpha": [0.001, 0.01, 0.1], "finetune.head": ["reinit", "lp_ft", "imprint"]}


def base_config(pretrain_epochs: int, epochs: int) -> dict:
    cfg = yaml.safe_load((ROOT / "sftcore" / "configs" / "default.yaml").read_text())
    cfg["device"] = "cpu"
    cfg["pretrain"]["epochs"] = pretrain_epochs
    cfg["finetune"]["epochs"] = epochs
    cfg["baseline"] = {"name": "scratch", "epochs": epochs}
    return cfg


def sft(args: list[str], env: dict, log: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run([sys.executable, "-m", "sftcore", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sft {' '.join(args)} exited {proc.returncode}; see {log}")
    return seconds, log.read_text()


def counts(text: str) -> dict:
    return {"pretrainings": len(re.findall(r"^pretrain epoch 1/", text, flags=re.M)),
            "cache_hits": len(re.findall(r"reused cache entry", text))}


def run_sweep(work: Path, sweep: Path, jobs: int, executor: str) -> dict:
    out = work / f"sweep-{executor}"
    env = {**os.environ, "SFT_CACHE_DIR": str(work / f"cache-{executor}")}
    seconds, _ = sft(["sweep", str(sweep), "--jobs", str(jobs), "--executor", executor, "--out", str(out)],
                     env, work / f"sweep-{executor}.log")
    logs = "".join(p.read_text() for p in sorted((out / "cells").glob("*/sweep.log")))
    cells = json.loads((out / "sweep.json").read_text())["cells"]
    assert all(c["status"] == "finished" for c in cells), cells
    return {"mode": executor if executor == "ray" else "sweep", "seconds": round(seconds, 1), **counts(logs)}


def run_one_by_one(work: Path, base: Path) -> dict:
    import itertools

    total, text = 0.0, ""
    for i, values in enumerate(itertools.product(*GRID.values())):
        sets = [a for key, v in zip(GRID, values) for a in ("--set", f"{key}={v}")]
        env = {**os.environ, "SFT_CACHE_DIR": str(work / f"cache-run{i}")}  # fresh and empty: no sharing
        seconds, out = sft(["run", str(base), *sets, "--out", str(work / f"run{i}"), "--no-progress"], env,
                           work / f"run{i}.log")
        total, text = total + seconds, text + out
    return {"mode": "runs", "seconds": round(total, 1), **counts(text)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--modes", default="sweep,runs,ray")
    p.add_argument("--pretrain-epochs", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3, help="finetune and baseline epochs")
    args = p.parse_args()
    modes = args.modes.split(",")
    if "ray" in modes:
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            print("ray is not installed: skipping the ray mode")
            modes.remove("ray")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    print(f"cpus {os.cpu_count()}, jobs {args.jobs}, grid 3x3, seeds 3, pretrain.epochs {args.pretrain_epochs}, "
          f"finetune/baseline epochs {args.epochs}")
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="sft-sweep-bench-") as tmp:
            work = Path(tmp)
            base = work / "base.yaml"
            base.write_text(yaml.safe_dump(base_config(args.pretrain_epochs, args.epochs), sort_keys=False))
            sweep = work / "sweep.yaml"
            sweep.write_text(yaml.safe_dump({"name": "bench", "base": "base.yaml", "seeds": 3, "grid": GRID},
                                            sort_keys=False))
            for mode in modes:  # the same order in every repeat
                result = (run_one_by_one(work, base) if mode == "runs"
                          else run_sweep(work, sweep, args.jobs, "ray" if mode == "ray" else "local"))
                results[mode].append(result)
                print(f"repeat {repeat + 1}: {json.dumps(result)}", flush=True)
    for mode, rows in results.items():
        if rows:
            print(f"median over {len(rows)}: {mode}: {statistics.median(r['seconds'] for r in rows):.1f} s, "
                  f"pretrainings {statistics.median(r['pretrainings'] for r in rows):g}, "
                  f"cache hits {statistics.median(r['cache_hits'] for r in rows):g}")


if __name__ == "__main__":
    main()
