"""sft's training throughput against a plain PyTorch loop (seed) and the compute limit, as whole processes.

On one machine and one locally written CIFAR-10-format data set, alternating in rounds, it times

  seed     _seed_loop.py: torchvision CIFAR10 + PIL transforms + DataLoader(num_workers=2), as the seed wrote it
  compute  _compute_loop.py: preloaded, pre-normalised tensors and the same model, steps and test pass
  sft      `sft run CONFIG --out DIR` doing the same work (its run directory, metrics and checkpoints included)

The lenet-augment and resnet18-augment workloads are lenet and resnet18 with `augment: [random_resized_crop,
trivial_augment, mixup]` (on the device; `augment_chunk: auto` takes 4 batches of 100 CIFAR images together)
against the same compute with no augmentation at all (no seed process: its PIL pipeline has no such
augmentations).

and reports wall-clock seconds (median over rounds), sft/compute and sft/seed, and each process's
peak RSS (ru_maxrss from os.wait4: the largest of the process and the children it waited for)
against 2 x (the data set's uint8 size) + 1 GiB.

    OMP_NUM_THREADS=1 python benchmarks/throughput.py --train-size 2000 --test-size 500 --rounds 1 --epochs 1
    python benchmarks/throughput.py --rounds 3 --json benchmarks/.data/throughput.json   # full size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MIB = 1 << 20
BATCH = 100
# workload -> (model, default epochs, fraction of the training split; None: all of it)
WORKLOADS = {"lenet": ("lenet", 3, None), "resnet18": ("resnet18", 1, 0.2), "lenet-augment": ("lenet", 3, None),
             "resnet18-augment": ("resnet18", 1, 0.2)}
BACKBONES = {"lenet": {"name": "lenet"}, "resnet18": {"name": "timm", "model": "resnet18"},
             "lenet-augment": {"name": "lenet"}, "resnet18-augment": {"name": "timm", "model": "resnet18"}}
BARS = {"lenet": {"sft/compute": 1.10, "sft/seed": 0.40}, "resnet18": {"sft/compute": 1.05},
        "lenet-augment": {"sft/compute": 1.25}, "resnet18-augment": {"sft/compute": 1.25}}
# workload -> the sft run's augment: list (None: the dataset's default, crop and flip)
STRONG = [{"name": "random_resized_crop", "scale": [0.35, 1.0]}, "trivial_augment", "mixup"]
AUGMENT = {"lenet-augment": STRONG, "resnet18-augment": STRONG}
KINDS = ("seed", "compute", "sft")


def kinds(workload: str) -> tuple[str, ...]:
    return ("compute", "sft") if workload in AUGMENT else KINDS


# --------------------------------------------------------------------------- data
def ensure_data(train: int, test: int) -> tuple[Path, dict]:
    """benchmarks/.data/cifar10-TRAINxTEST/cifar-10-batches-py, written once (random uint8 images)."""
    root = HERE / ".data" / f"cifar10-{train}x{test}"
    done = root / "written.json"
    if done.is_file():
        return root, json.loads(done.read_text())
    sys.path.insert(0, str(REPO / "tests"))
    from fakedata import write_cifar10  # torchvision's file layout; str keys, as latin1 reads real CIFAR

    print(f"writing {train} + {test} random CIFAR-10-format images under {root} ...", flush=True)
    written = write_cifar10(root, per_batch=train // 5, n_test=test, seed=0, str_keys=True)
    counts = [written["train_labels"].count(c) for c in range(10)]
    info = {"train": train, "test": test, "class_counts": counts,
            "uint8_bytes": (train + test) * 3 * 32 * 32}
    done.write_text(json.dumps(info))
    return root, info


def train_examples(info: dict, fraction: float | None) -> int:
    """How many training images sft keeps: sftcore._data.batches.few_label_index's per-class rounding."""
    if fraction is None:
        return info["train"]
    return sum(max(1, round(n * fraction)) for n in info["class_counts"] if n)


def optimizer_steps(n: int, epochs: int) -> int:
    if n % BATCH == 1 and n > 1:  # sftcore._data.batches.Batches drops a final batch of one (batch norm)
        n -= 1
    return epochs * math.ceil(n / BATCH)


# --------------------------------------------------------------------------- processes
def sft_command() -> list[str]:
    script = Path(sys.executable).with_name("sft")
    return [str(script)] if script.is_file() else [shutil.which("sft") or "sft"]


def run_process(argv: list[str], log: Path) -> dict:
    """Wall-clock seconds and peak RSS (MiB) of one child process; its output goes to log.out/.err."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = Path(f"{log}.err").read_text()[-2000:]
        raise SystemExit(f"{' '.join(argv)} failed with exit code {proc.returncode}:\n{tail}")
    return {"seconds": seconds, "rss_mib": usage.ru_maxrss * 1024 / MIB}  # ru_maxrss is in KiB on Linux


def sft_config(workload: str, root: Path, epochs: int, eval_batch: int) -> dict:
    _, _, fraction = WORKLOADS[workload]
    dataset = {"name": "cifar10", "root": str(root), "verify": False, "val_fraction": 0,
               "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    if fraction is not None:
        dataset["fraction"] = fraction
    stage = {"dataset": dataset, "epochs": epochs, "batch_size": BATCH, "eval_batch_size": eval_batch,
             "optimizer": {"name": "sgd", "lr": 0.001, "momentum": 0.9}, "schedule": "none"}
    if workload in AUGMENT:
        stage["augment"] = AUGMENT[workload]
    return {"name": f"bench-{workload}", "device": "cpu", "backbone": BACKBONES[workload], "pretrain": stage,
            "pretrain_cache": False}


def child_work(log: Path) -> dict:
    return json.loads(Path(f"{log}.out").read_text().strip().splitlines()[-1])


def sft_work(run_dir: Path) -> dict:
    stage = json.loads((run_dir / "summary.json").read_text())["pretrain"]
    return {"steps": optimizer_steps(stage["train_examples"], stage["epochs"]),
            "test_images": stage["test_examples"], "test_accuracy": stage["test_accuracy"]}


def imported_modules(argv: list[str], log: Path) -> set[str]:
    """Top-level packages a Python command imports (python -X importtime)."""
    run_process([sys.executable, "-X", "importtime", *argv], log)
    names = set()
    for line in Path(f"{log}.err").read_text().splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


# --------------------------------------------------------------------------- the benchmark
def bench(workload: str, args, root: Path, info: dict, work: Path) -> dict:
    model, default_epochs, fraction = WORKLOADS[workload]
    epochs = args.epochs if args.epochs is not None else default_epochs
    n_train = train_examples(info, fraction)
    expect = {"steps": optimizer_steps(n_train, epochs), "test_images": info["test"]}
    cfg_path = work / f"{workload}.yaml"
    cfg_path.write_text(json.dumps(sft_config(workload, root, epochs, args.eval_batch_size), indent=2))  # JSON is YAML
    child = ["--root", str(root), "--model", model, "--epochs", str(epochs), "--batch-size", str(BATCH)]
    if fraction is not None:  # the first n_train images: the same count (and steps) as sft's stratified subset
        child += ["--train-limit", str(n_train)]
    commands = {
        "seed": [sys.executable, str(HERE / "_seed_loop.py"), *child, "--eval-batch-size", str(BATCH)],
        "compute": [sys.executable, str(HERE / "_compute_loop.py"), *child,
                    "--eval-batch-size", str(args.eval_batch_size)],
        "sft": [*sft_command(), "run", str(cfg_path), "--no-progress"],  # + --out DIR per run
    }
    print(f"\n== {workload}: {epochs} epoch(s) x {expect['steps'] // max(1, epochs)} steps of {BATCH} "
          f"({n_train} images) + test pass over {info['test']}; {args.rounds} round(s)", flush=True)
    result: dict = {"epochs": epochs, "train_images": n_train, **expect, "runs": {k: [] for k in kinds(workload)}}

    if workload == "lenet":  # one untimed run with -X importtime: does a lenet `sft run` import timm?
        quick = work / "importcheck"
        argv = [*commands["sft"], "--out", str(quick), "--set", "pretrain.epochs=1",
                "--set", "pretrain.dataset.fraction=0.02"]
        mods = imported_modules(argv, work / "importcheck")
        result["imports"] = {m: m in mods for m in ("timm", "torchvision")}
        print("   lenet `sft run` imports: " + ", ".join(f"{m} {'YES' if v else 'no'}"
                                                      for m, v in result["imports"].items()), flush=True)
        shutil.rmtree(quick, ignore_errors=True)

    for r in range(args.rounds):
        for kind in kinds(workload):
            log = work / f"{workload}-{kind}-{r}"
            argv, run_dir = commands[kind], work / f"{workload}-run-{r}"
            if kind == "sft":
                argv = [*argv, "--out", str(run_dir)]
            m = run_process(argv, log)
            done = sft_work(run_dir) if kind == "sft" else child_work(log)
            if kind == "sft":
                shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints: written (timed), then dropped
            for key in ("steps", "test_images"):
                if done[key] != expect[key]:
                    raise SystemExit(f"{workload} {kind}: {key} {done[key]} != {expect[key]}: unequal work")
            result["runs"][kind].append({**m, "test_accuracy": done["test_accuracy"]})
            print(f"   round {r + 1} {kind:<8} {m['seconds']:8.2f} s  {m['rss_mib']:7.0f} MiB", flush=True)

    med = {k: statistics.median(x["seconds"] for x in v) for k, v in result["runs"].items()}
    rss = {k: max(x["rss_mib"] for x in v) for k, v in result["runs"].items()}
    ratios = {"sft/compute": med["sft"] / med["compute"]}
    if "seed" in med:
        ratios["sft/seed"] = med["sft"] / med["seed"]
    bound = (2 * info["uint8_bytes"] + (1 << 30)) / MIB
    bars = {name: {"value": ratios[name], "limit": limit, "pass": ratios[name] <= limit}
            for name, limit in BARS[workload].items()}
    bars["sft peak RSS MiB"] = {"value": rss["sft"], "limit": bound, "pass": rss["sft"] <= bound}
    result.update(median_seconds=med, peak_rss_mib=rss, rss_bound_mib=bound, ratios=ratios, bars=bars)
    return result


def show(workload: str, r: dict) -> None:
    print(f"\n{workload}: median of {len(r['runs']['sft'])} round(s); {r['steps']} optimizer steps, "
          f"{r['test_images']} test images each")
    print(f"  {'process':<8} {'median s':>9} {'peak RSS MiB':>13}   (bound {r['rss_bound_mib']:.0f} MiB)")
    for k in r["runs"]:
        ok = "<= bound" if r["peak_rss_mib"][k] <= r["rss_bound_mib"] else "> bound"
        print(f"  {k:<8} {r['median_seconds'][k]:9.2f} {r['peak_rss_mib'][k]:13.0f}   {ok}")
    print("  " + "   ".join(f"{name} {value:.3f}" for name, value in r["ratios"].items()))
    for name, b in r["bars"].items():
        print(f"  bar {name:<17} {b['value']:9.3f} <= {b['limit']:<9.3f} {'PASS' if b['pass'] else 'FAIL'}")
    if "imports" in r:
        print(f"  bar lenet `sft run` does not import timm {'FAIL' if r['imports']['timm'] else 'PASS'}"
              f"   (torchvision imported: {'yes' if r['imports']['torchvision'] else 'no'})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of seed, compute, sft (default 3)")
    p.add_argument("--workloads", default="lenet,resnet18,lenet-augment,resnet18-augment",
                   help="comma-separated: lenet, resnet18, lenet-augment, resnet18-augment")
    p.add_argument("--epochs", type=int, default=None, help="override every workload's epochs (lenet 3, resnet18 1)")
    p.add_argument("--train-size", type=int, default=50_000, help="training images written (multiple of 5)")
    p.add_argument("--test-size", type=int, default=10_000, help="test images written")
    p.add_argument("--eval-batch-size", type=int, default=500,
                   help="test batch of sft and compute (seed: 100); 500 measured fastest on CPU for both models")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--keep", action="store_true", help="keep the work folder (configs, child logs)")
    args = p.parse_args(argv)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown or args.train_size % 5 or args.train_size < 5 or args.test_size < 1 or args.rounds < 1:
        p.error(f"unknown workload(s) {unknown}" if unknown else
                "--train-size must be a positive multiple of 5 (five training batches); --test-size and --rounds >= 1")

    root, info = ensure_data(args.train_size, args.test_size)
    machine = {"python": platform.python_version(), "torch": metadata.version("torch"), "cpus": os.cpu_count(),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "platform": platform.platform()}
    print(f"machine: {machine}\ndata: {root} ({args.train_size} train / {args.test_size} test, "
          f"{info['uint8_bytes'] / MIB:.1f} MiB as uint8); sft: {' '.join(sft_command())}; "
          f"eval batch size (sft, compute): {args.eval_batch_size}")
    work = Path(tempfile.mkdtemp(prefix="sft-bench-"))
    results = {}
    try:
        for w in workloads:
            results[w] = bench(w, args, root, info, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for w, r in results.items():
        show(w, r)
    if (args.train_size, args.test_size) != (50_000, 10_000) or args.epochs is not None:
        print("\nnote: the bars are set for the full-size run (50k/10k images, default epochs); "
              "a smaller run is a smoke test and its ratios are dominated by start-up")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=2))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
