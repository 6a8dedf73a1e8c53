"""Is sft's transfer verdict honest? Its gain against a plain PyTorch loop on the very same images.

For each case, the real CLI runs once (`sft run CONFIG --out DIR --no-progress --set seeds=N`), and a
plain PyTorch loop, written here and independent of sftcore's training code, redoes the experiment on
the same images: the same few-label training subset of every seed (the same validation examples left
out), the same test split, the same LeNet architecture and initial weights, the same normalisation.
The plain loop pretrains on the source task, then per seed finetunes every parameter under a fresh
linear head and trains the same network from scratch, both until the training set is fitted
(training accuracy 1.0, training loss flat), and reports the final epoch's test accuracy (nothing is
selected on the test split).

Cases:
  demo    the embedded shapes demo (sftcore/configs/default.yaml), unchanged
  digits  scikit-learn's load_digits (1797 real 8x8 handwritten digits) written as PNGs into two
          image folders at run time: source task digits 0-4, target task digits 5-9 with 5 labels
          per class, a fixed stratified 30% of every class as the test split
          (config: benchmarks/configs/digits.yaml)

Bars, per case:
  1. sft's scratch baseline reaches final training accuracy >= 0.9 on every seed, by default;
  2. sft's transfer gain (finetune minus baseline, mean over seeds, in points) is within 5 points of
     the plain loop's.

    python benchmarks/verdict_check.py [--cases demo,digits] [--seeds 3] [--threads 1] [--json out.json]
                                       [--set KEY=VALUE ...]   (an sft override for every case)

Exit status: 0 when every bar passes, 1 when one fails, 2 when scikit-learn is missing for digits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DIGITS_CONFIG = Path(__file__).resolve().parent / "configs" / "digits.yaml"
CASES = ("demo", "digits")
# The plain loop's pretraining length per case: several times sft's (8 and 30 epochs), enough for
# the training loss to flatten under a cosine schedule.
PLAIN_PRETRAIN_EPOCHS = {"demo": 24, "digits": 60}
CONVERGED_ACCURACY = 0.99  # plain finetune / scratch: clean training accuracy at the end
CONVERGED_LOSS = 0.05  # ... and clean training loss at the end (mean cross-entropy)


# --------------------------------------------------------------------------- arguments
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    p.add_argument("--seeds", type=int, default=3, help="seeds per case (sft: --set seeds=N); default 3")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS for sft and torch.set_num_threads for the plain loop; default 1")
    p.add_argument("--tolerance", type=float, default=5.0, help="bar 2, in points; default 5")
    p.add_argument("--min-train-accuracy", type=float, default=0.9, help="bar 1; default 0.9")
    p.add_argument("--plain-lr", type=float, default=1e-3,
                   help="Adam learning rate of the plain finetune and scratch runs (the one the bar uses)")
    p.add_argument("--plain-sweep", default="3e-4,3e-3",
                   help="other Adam learning rates the plain loop also runs and reports, for reference only "
                        "(comma-separated; '' for none)")
    p.add_argument("--plain-epochs", type=int, default=300,
                   help="plain finetune and scratch epochs (full batch, cosine); default 300")
    p.add_argument("--plain-augment", choices=("dataset", "none"), default="dataset",
                   help="dataset: the random crop / flip the dataset asks sft for (default); none: no augmentation")
    p.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="an extra sft config override for every case (repeatable), e.g. --set baseline.epochs=200; "
                        "the bars then no longer test sft's defaults")
    p.add_argument("--plain-only", action="store_true",
                   help="skip sft (development): no sft numbers, no bars, no cross-checks")
    p.add_argument("--json", type=Path, help="write every number to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (digits PNGs, run directories)")
    args = p.parse_args()
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or not args.cases:
        p.error(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    if args.seeds < 1 or args.threads < 1:
        p.error("--seeds and --threads must be >= 1")
    args.sweep = [float(x) for x in args.plain_sweep.split(",") if x.strip()]
    return args


# --------------------------------------------------------------------------- the digits folders
def digits_missing() -> str | None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return ("verdict_check: the digits case needs scikit-learn, a benchmark-only dependency: "
                "pip install scikit-learn (or pip install -e '.[bench]'); or run only the shapes demo "
                "with --cases demo")
    return None


def build_digits(root: Path, test_fraction: float = 0.3, seed: int = 0) -> dict:
    """load_digits as 8-bit grayscale PNGs at their native 8x8: root/{source,target}/{train,test}/<digit>/.

    The test split is a fixed, stratified ``test_fraction`` of every class (numpy seed ``seed``)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    rng = np.random.RandomState(seed)
    counts: dict = {"source": {"train": 0, "test": 0}, "target": {"train": 0, "test": 0}}
    for c in range(10):
        idx = np.flatnonzero(digits.target == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        task = "source" if c < 5 else "target"
        for split, part in (("test", idx[:n_test]), ("train", idx[n_test:])):
            folder = root / task / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in sorted(part):
                Image.fromarray(images[i], mode="L").save(folder / f"{i:04d}.png")
            counts[task][split] += len(part)
    return {"source": str(root / "source"), "target": str(root / "target"), "images": counts,
            "test_fraction": test_fraction, "split_seed": seed}


# --------------------------------------------------------------------------- the sft side
def sft_command() -> list[str]:
    script = Path(sys.executable).with_name("sft")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sftcore"]


def run_sft(config: Path, sets: list[str], seeds: int, out: Path, log: Path, threads: int) -> dict:
    cmd = [*sft_command(), "run", str(config), "--out", str(out), "--no-progress", "--set", f"seeds={seeds}"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log.with_suffix(".stdout"), "w") as so, open(log.with_suffix(".stderr"), "w") as se:
        rc = subprocess.run(cmd, stdout=so, stderr=se, env=env, cwd=REPO).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = log.with_suffix(".stderr").read_text()[-3000:]
        raise SystemExit(f"verdict_check: `{' '.join(cmd)}` failed with exit code {rc}:\n{tail}")
    summary = json.loads((out / "summary.json").read_text())
    return {"command": cmd, "seconds": round(seconds, 2), "summary": summary,
            "stdout": log.with_suffix(".stdout").read_text()}


def sft_numbers(summary: dict) -> dict:
    """What the bars read from summary.json (the contract: per_seed, transfer_gain, verdict...)."""
    missing = [k for k in ("seeds", "per_seed", "transfer_gain", "verdict") if k not in summary]
    if missing:
        raise SystemExit(f"verdict_check: summary.json lacks {missing}; this benchmark needs the "
                         "multi-seed summary (seeds, per_seed, transfer_gain, verdict)")
    keep = ("test_accuracy", "train_accuracy", "train_loss", "epochs", "epochs_auto", "selected_epoch", "select",
            "train_examples", "val_examples", "test_examples", "val_accuracy")
    per_seed = []
    for row in summary["per_seed"]:
        per_seed.append({"seed": row["seed"], "transfer_gain": row.get("transfer_gain"),
                         "finetune": {k: row["finetune"].get(k) for k in keep},
                         "baseline": {k: row["baseline"].get(k) for k in keep}})
    return {"seeds": summary["seeds"], "per_seed": per_seed, "transfer_gain": summary["transfer_gain"],
            "transfer_gain_sd": summary.get("transfer_gain_sd"),
            "transfer_gain_ci95": summary.get("transfer_gain_ci95"), "verdict": summary["verdict"],
            "verdict_warnings": summary.get("verdict_warnings", []),
            "pretrain": {k: (summary.get("pretrain") or {}).get(k) for k in keep}}


# --------------------------------------------------------------------------- the plain side: data
class SftData:
    """The images sft trains and tests on for each seed, taken from sftcore's own data selection.

    Only data selection comes from sftcore (the dataset plugin, the seeded few-label subset and the
    validation hold-out), called as the runner calls it; everything after is plain PyTorch."""

    def __init__(self, cfg: dict, registry):
        self.cfg, self.registry, self.full = cfg, registry, {}

    def stage(self, stage: str, backbone, seed: int):
        from sftcore._plugins import components
        from sftcore._data import stage as runner

        ds_cfg = self.cfg[stage]["dataset"]
        # as Pipeline.stage_data: the dataset loaded once with the run's seed, then each seed's subset
        if stage not in self.full:
            self.full[stage] = runner.load_splits(stage, ds_cfg, backbone, self.cfg["seed"], self.registry)
        return runner.subset_stage_data(self.full[stage], stage, ds_cfg, seed)


def tensors(part):
    """uint8 [N, C, H, W] images and int64 labels of an ImageSet or a FileSet."""
    import torch

    if part is None:
        return None
    if hasattr(part, "images"):
        return part.images.cpu().contiguous(), part.labels.cpu()
    return torch.stack([part.item(i) for i in range(len(part))]), part.labels.cpu()


def fit_channels(values, channels: int) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if channels == 1:
        return [sum(values) / len(values)]
    return values * channels if len(values) == 1 else values[:channels]


# --------------------------------------------------------------------------- the plain side: training
class Prep:
    """uint8 -> normalised float, with the dataset's random crop / flip for training batches."""

    def __init__(self, mean, std, channels: int, size: tuple[int, int], pad: int, flip: bool):
        import torch

        self.mean = torch.tensor(fit_channels(mean, channels)).view(1, channels, 1, 1)
        self.std = torch.tensor(fit_channels(std, channels)).view(1, channels, 1, 1)
        self.channels, self.size, self.pad, self.flip = channels, size, pad, flip

    def __call__(self, x, g=None):
        import torch
        import torch.nn.functional as F

        if g is not None and self.pad:
            b, _, h, w = x.shape
            p = self.pad
            padded = F.pad(x, (p, p, p, p))  # zeros, as uint8: black borders
            rows = torch.randint(0, 2 * p + 1, (b, 1), generator=g) + torch.arange(h)
            cols = torch.randint(0, 2 * p + 1, (b, 1), generator=g) + torch.arange(w)
            x = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
            x = x.permute(0, 3, 1, 2)
        if g is not None and self.flip:
            mirror = torch.rand(len(x), generator=g) < 0.5
            x = torch.where(mirror[:, None, None, None], x.flip(3), x)
        x = x.float() / 255.0
        if x.shape[1] != self.channels:
            x = x.repeat(1, self.channels, 1, 1) if x.shape[1] == 1 else x.mean(1, keepdim=True)
        if tuple(x.shape[2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False,
                              antialias=x.shape[2] > self.size[0])
        return (x - self.mean) / self.std


def evaluate(model, x, y, prep, batch: int = 1000) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            logits = model(prep(x[i:i + batch]))
            loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
            correct += (logits.argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(y), loss / len(y)


def train(model, x, y, prep, *, epochs: int, batch: int, optimizer, seed: int, checks: int = 10) -> dict:
    """Minibatch training with a cosine learning rate over every step; the clean (un-augmented,
    eval-mode) training loss and accuracy at ``checks`` evenly spaced epochs and at the end."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    n = len(y)
    steps = epochs * math.ceil(n / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    every = max(1, epochs // checks)
    curve = []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(prep(x[idx], g)), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched.step()
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            acc, lss = evaluate(model, x, y, prep)
            curve.append({"epoch": epoch + 1, "train_accuracy": acc, "train_loss": lss})
    last = curve[-1]
    before = next((c for c in reversed(curve[:-1]) if c["epoch"] <= 0.8 * epochs), curve[0])
    return {"epochs": epochs, "train_accuracy": last["train_accuracy"], "train_loss": last["train_loss"],
            "train_loss_at_80pct": before["train_loss"], "curve": curve}


def plain_case(cfg: dict, case: str, args, sft: dict | None, run_dir: Path | None) -> dict:
    import copy

    import torch
    from torch import nn

    from sftcore._plugins import components
    from sftcore._data import stage as runner
    from sftcore._plugins.manager import get_registry

    registry = get_registry()
    data = SftData(cfg, registry)
    seeds = cfg_seeds(cfg)
    t0 = time.perf_counter()

    # ---- pretrain once, from the backbone sft builds (same architecture, same initial weights)
    backbone = components.build_backbone(cfg["backbone"], registry, cfg["seed"])
    pre = data.stage("pretrain", backbone, cfg["seed"])
    channels, height, width = backbone.input_size
    mean = backbone.mean if backbone.mean is not None else pre.mean  # as sft: the weights' own, else the data's
    std = backbone.std if backbone.std is not None else pre.std
    aug = pre.augment if args.plain_augment == "dataset" else None
    pre_prep = Prep(mean, std, channels, (height, width), aug.crop_padding if aug else 0, bool(aug and aug.flip))
    xs, ys = tensors(pre.train)
    xt, yt = tensors(pre.test)
    torch.manual_seed(cfg["seed"])
    model = nn.Sequential(backbone.features, nn.Linear(backbone.num_features, len(pre.classes)))
    sgd = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    epochs = PLAIN_PRETRAIN_EPOCHS[case]
    fit = train(model, xs, ys, pre_prep, epochs=epochs, batch=64, optimizer=sgd, seed=cfg["seed"], checks=4)
    pre_acc, _ = evaluate(model, xt, yt, pre_prep)
    pretrained = copy.deepcopy(backbone.features.state_dict())
    pretrain = {"epochs": epochs, "optimizer": "SGD lr 0.05 momentum 0.9, batch 64, cosine",
                "train_examples": len(ys), "test_accuracy": pre_acc, **{k: fit[k] for k in
                ("train_accuracy", "train_loss", "train_loss_at_80pct")}, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"  plain pretrain: {epochs} epochs on {len(ys)} images, clean train accuracy "
          f"{fit['train_accuracy']:.3f}, test accuracy {pre_acc:.3f} ({pretrain['seconds']} s)", flush=True)

    lrs = [args.plain_lr] + [lr for lr in args.sweep if lr != args.plain_lr]
    per_seed, checks = [], []
    for index, seed in enumerate(seeds):
        target = data.stage("finetune", backbone, seed)
        x, y = tensors(target.train)
        xt, yt = tensors(target.test)
        sizes = {"train_examples": len(y), "val_examples": len(target.val) if target.val is not None else 0,
                 "test_examples": len(yt)}
        checks.append(cross_check(sft, run_dir, index, seed, sizes, yt))
        aug = target.augment if args.plain_augment == "dataset" else None
        pad, flip = (aug.crop_padding if aug else 0), bool(aug and aug.flip)
        # finetune starts from the pretrained backbone, normalised as it was pretrained; the scratch
        # network has no weights of its own, so the target data's statistics (sft does the same)
        ft_prep = Prep(mean, std, channels, (height, width), pad, flip)
        sc_prep = Prep(target.mean, target.std, channels, (height, width), pad, flip)
        row = {"seed": seed, **sizes, "by_lr": {}}
        for lr in lrs:
            out = {}
            for mode in ("finetune", "scratch"):
                if mode == "finetune":
                    features = copy.deepcopy(backbone.features)
                    features.load_state_dict(pretrained)
                    torch.manual_seed(seed + 1)
                    prep = ft_prep
                else:
                    features = components.build_backbone(cfg["backbone"], registry, seed, random_init=True).features
                    torch.manual_seed(seed + 2)
                    prep = sc_prep
                net = nn.Sequential(features, nn.Linear(backbone.num_features, len(target.classes)))
                adam = torch.optim.Adam(net.parameters(), lr=lr)
                fit = train(net, x, y, prep, epochs=args.plain_epochs, batch=min(len(y), 64), optimizer=adam,
                            seed=seed * 1000 + (1 if mode == "finetune" else 2))
                acc, loss = evaluate(net, xt, yt, prep)
                fit.update(test_accuracy=acc, test_loss=loss,
                           converged=fit["train_accuracy"] >= CONVERGED_ACCURACY and fit["train_loss"] <= CONVERGED_LOSS)
                out[mode] = fit
            out["transfer_gain"] = 100 * (out["finetune"]["test_accuracy"] - out["scratch"]["test_accuracy"])
            row["by_lr"][f"{lr:g}"] = out
        main = row["by_lr"][f"{args.plain_lr:g}"]
        print(f"  plain seed {seed}: finetune {main['finetune']['test_accuracy']:.3f}, scratch "
              f"{main['scratch']['test_accuracy']:.3f}, gain {main['transfer_gain']:+.1f} "
              f"(train acc {main['finetune']['train_accuracy']:.3f} / {main['scratch']['train_accuracy']:.3f}, "
              f"loss {main['finetune']['train_loss']:.4f} / {main['scratch']['train_loss']:.4f})", flush=True)
        per_seed.append(row)

    def over_seeds(lr: float) -> dict:
        key = f"{lr:g}"
        rows = [r["by_lr"][key] for r in per_seed]
        return {"lr": lr, "finetune": mean_sd([r["finetune"]["test_accuracy"] for r in rows]),
                "scratch": mean_sd([r["scratch"]["test_accuracy"] for r in rows]),
                "transfer_gain": mean_sd([r["transfer_gain"] for r in rows]),
                "converged": all(r[m]["converged"] for r in rows for m in ("finetune", "scratch")),
                "min_train_accuracy": min(r[m]["train_accuracy"] for r in rows for m in ("finetune", "scratch")),
                "max_train_loss": max(r[m]["train_loss"] for r in rows for m in ("finetune", "scratch"))}

    return {"seeds": seeds, "recipe": {
                "pretrain": pretrain["optimizer"] + f", {PLAIN_PRETRAIN_EPOCHS[case]} epochs",
                "target": f"Adam lr {args.plain_lr:g}, full batch (<= 64), cosine, {args.plain_epochs} epochs, "
                          f"all parameters, fresh linear head",
                "augment": args.plain_augment, "threads": torch.get_num_threads()},
            "pretrain": pretrain, "per_seed": per_seed, "main": over_seeds(args.plain_lr),
            "sweep": [over_seeds(lr) for lr in lrs], "same_data_checks": checks,
            "seconds": round(time.perf_counter() - t0, 1)}


def cfg_seeds(cfg: dict) -> list[int]:
    from sftcore._config import resolve as cfgmod

    if hasattr(cfgmod, "seed_list"):
        return cfgmod.seed_list(cfg)
    seeds = cfg.get("seeds", 1)
    return list(seeds) if isinstance(seeds, list) else [cfg["seed"] + i for i in range(seeds)]


def cross_check(sft: dict | None, run_dir: Path | None, index: int, seed: int, sizes: dict, test_labels) -> dict:
    """The plain loop's data against what sft reported for this seed: sizes, and the test labels in
    order (sft's predictions/finetune*.json); a mismatch stops the benchmark."""
    if sft is None:
        return {"seed": seed, "checked": False}
    row = next((r for r in sft["per_seed"] if r["seed"] == seed), None)
    if row is None:
        raise SystemExit(f"verdict_check: sft's summary has no seed {seed} (it ran {sft['seeds']})")
    for stage in ("finetune", "baseline"):
        theirs = {k: row[stage].get(k) for k in sizes}
        if theirs != sizes:
            raise SystemExit(f"verdict_check: seed {seed}: sft's {stage} had {theirs}, the plain loop got {sizes}; "
                             "the plain side does not select the images sft used")
    out = {"seed": seed, "checked": True, "sizes": sizes, "test_labels": None}
    if run_dir is not None:
        tag = "finetune" if index == 0 else f"finetune-seed{seed}"
        path = run_dir / "predictions" / f"{tag}.json"
        if path.exists():
            targets = json.loads(path.read_text())["targets"]
            if targets != test_labels.tolist():
                raise SystemExit(f"verdict_check: seed {seed}: the test labels in {path} differ from the plain "
                                 "loop's test split")
            out["test_labels"] = "identical"
    return out


# --------------------------------------------------------------------------- report
def mean_sd(values: list[float]) -> dict:
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def fmt(ms: dict, scale: float = 1.0, sign: bool = False, digits: int = 3) -> str:
    m = ms["mean"] * scale
    text = f"{m:+.{digits}f}" if sign else f"{m:.{digits}f}"
    return text + (f" ± {ms['sd'] * scale:.{digits}f}" if ms["sd"] is not None else "")


def bars(case_result: dict, args) -> dict:
    sft, plain = case_result.get("sft"), case_result["plain"]
    if sft is None:
        return {}
    base_train = [r["baseline"]["train_accuracy"] for r in sft["per_seed"]]
    b1 = min(base_train) >= args.min_train_accuracy
    sft_gain = sft["transfer_gain"]  # the summary's: mean over seeds, in points
    per_seed = statistics.fmean([r["transfer_gain"] for r in sft["per_seed"]])
    if abs(per_seed - sft_gain) > 0.05:
        raise SystemExit(f"verdict_check: summary transfer_gain {sft_gain} is not the mean of per_seed ({per_seed:.2f})")
    diff = abs(sft_gain - plain["main"]["transfer_gain"]["mean"])
    return {"baseline_min_train_accuracy": min(base_train), "bar1_pass": b1,
            "sft_gain": sft_gain, "gain_difference": diff,
            "bar2_pass": diff <= args.tolerance and plain["main"]["converged"],
            "plain_converged": plain["main"]["converged"]}


def print_case(name: str, r: dict, args) -> None:
    sft, plain, b = r.get("sft"), r["plain"], r.get("bars", {})
    pm = plain["main"]
    w = 37
    print(f"\n=== {name}: {r['description']}")
    if args.extra:
        print("extra sft overrides (not sft's defaults): --set " + " --set ".join(args.extra))
    print(f"seeds {plain['seeds']}; threads: OMP_NUM_THREADS={args.threads} for sft, "
          f"torch.set_num_threads({plain['recipe']['threads']}) for the plain loop")
    print(f"{'':<{w}}{'finetune':>18}{'baseline/scratch':>20}{'gain (points)':>18}")
    if sft is not None:
        ft = mean_sd([p["finetune"]["test_accuracy"] for p in sft["per_seed"]])
        bl = mean_sd([p["baseline"]["test_accuracy"] for p in sft["per_seed"]])
        gain = mean_sd([p["transfer_gain"] for p in sft["per_seed"]])
        print(f"{'sft test accuracy':<{w}}{fmt(ft):>18}{fmt(bl):>20}{fmt(gain, sign=True, digits=1):>18}")
        epochs = lambda st: ",".join(str(p[st]["epochs"]) for p in sft["per_seed"])  # noqa: E731
        tr = lambda st: ",".join(f"{p[st]['train_accuracy']:.3f}" for p in sft["per_seed"])  # noqa: E731
        print(f"{'sft final train accuracy':<{w}}{tr('finetune'):>18}{tr('baseline'):>20}")
        loss = lambda st: ",".join(f"{p[st]['train_loss']:.3f}" for p in sft["per_seed"])  # noqa: E731
        print(f"{'sft final train loss':<{w}}{loss('finetune'):>18}{loss('baseline'):>20}")
        print(f"{'sft epochs trained (per seed)':<{w}}{epochs('finetune'):>18}{epochs('baseline'):>20}")
    print(f"{'plain test accuracy (lr ' + format(pm['lr'], 'g') + ')':<{w}}{fmt(pm['finetune']):>18}"
          f"{fmt(pm['scratch']):>20}{fmt(pm['transfer_gain'], sign=True, digits=1):>18}")
    print(f"{'plain final clean train acc/loss':<{w}}min acc {pm['min_train_accuracy']:.3f}, max loss "
          f"{pm['max_train_loss']:.4f} over seeds and both runs ({'converged' if pm['converged'] else 'NOT converged'})")
    others = [s for s in plain["sweep"] if s["lr"] != pm["lr"]]
    if others:
        print(f"{'plain gain at other lrs (reference)':<{w}}" + ", ".join(
            f"lr {s['lr']:g}: {fmt(s['transfer_gain'], sign=True, digits=1)}"
            + ("" if s["converged"] else " (not converged)") for s in others))
    if sft is not None:
        print(f"sft verdict: {sft['verdict']}")
        for warning in sft.get("verdict_warnings") or []:
            print(f"sft warning: {warning}")
        print(f"data: plain loop used sft's images: sizes match for every seed; test labels "
              f"{'identical' if all(c.get('test_labels') == 'identical' for c in plain['same_data_checks']) else 'not compared'}")
        ok = lambda p: "PASS" if p else "FAIL"  # noqa: E731
        print(f"bar 1  sft baseline final train accuracy, min over seeds {b['baseline_min_train_accuracy']:.3f} "
              f">= {args.min_train_accuracy}: {ok(b['bar1_pass'])}"
              + (" (epochs: auto stops only at >= 0.9: this bar fails only when a seed used up max_epochs)"
                 if all(p["baseline"].get("epochs_auto") for p in sft["per_seed"]) else ""))
        print(f"bar 2  |sft gain {b['sft_gain']:+.1f} - plain gain {pm['transfer_gain']['mean']:+.1f}| "
              f"= {b['gain_difference']:.1f} <= {args.tolerance:g} points"
              f"{'' if pm['converged'] else ' (plain loop did not converge)'}: {ok(b['bar2_pass'])}")
        print(f"time: sft {sft['seconds']:.1f} s, plain {plain['seconds']:.1f} s")


# --------------------------------------------------------------------------- main
def main() -> int:
    args = parse_args()
    # One thread count for both sides, set before torch is imported here.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["MKL_NUM_THREADS"] = str(args.threads)
    if "digits" in args.cases and (msg := digits_missing()):
        print(msg, file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    from sftcore._config import resolve as cfgmod
    from sftcore._plugins.manager import get_registry

    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="verdict_check-"))
    results: dict = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "torch": torch.__version__, "cases": {}}
    try:
        for case in args.cases:
            if case == "demo":
                config, sets = cfgmod.DEFAULT_CONFIG, []
                description = "the embedded shapes demo, sftcore/configs/default.yaml as is"
            else:
                folders = build_digits(tmp / "digits")
                config = DIGITS_CONFIG
                sets = [f"pretrain.dataset.root={folders['source']}", f"finetune.dataset.root={folders['target']}"]
                description = ("scikit-learn load_digits as PNG folders: source 0-4 "
                               f"({folders['images']['source']['train']} train / {folders['images']['source']['test']} "
                               f"test), target 5-9 ({folders['images']['target']['train']} train / "
                               f"{folders['images']['target']['test']} test) with 5 labels per class; "
                               "benchmarks/configs/digits.yaml")
            print(f"\n[{case}] {description}", flush=True)
            sets = [*sets, *args.extra]
            result: dict = {"description": description, "config": str(config), "sets": sets}
            run_dir = None
            if not args.plain_only:
                run_dir = tmp / f"run-{case}"
                ran = run_sft(Path(config), sets, args.seeds, run_dir, tmp / f"sft-{case}", args.threads)
                result["sft"] = {**sft_numbers(ran["summary"]), "command": ran["command"], "seconds": ran["seconds"],
                                 "stdout": ran["stdout"]}
                print(f"  sft: {ran['seconds']:.1f} s; {ran['summary']['verdict']}", flush=True)
                # the plain loop reads the run's own resolved config: the same data, seeds and backbone
                cfg = cfgmod.resolve(cfgmod.load(run_dir / "config.yaml"), get_registry())
            else:
                cfg = cfgmod.resolve(cfgmod.load(config, [*sets, f"seeds={args.seeds}"]), get_registry())
            result["plain"] = plain_case(cfg, case, args, result.get("sft"), run_dir)
            result["bars"] = bars(result, args)
            results["cases"][case] = result
        results["seconds"] = round(time.perf_counter() - t_start, 1)
        for case, r in results["cases"].items():
            print_case(case, r, args)
        print(f"\ntotal {results['seconds']:.0f} s")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
            print(f"wrote {args.json}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.plain_only:
        return 0
    passed = all(r["bars"]["bar1_pass"] and r["bars"]["bar2_pass"] for r in results["cases"].values())
    print("ALL PASS" if passed else "SOME BARS FAIL")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
