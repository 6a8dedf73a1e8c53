"""What augmentation and the lr finder buy, over seeds, on the shapes demo and on real digits.

For each case (the embedded shapes demo, sftcore/configs/default.yaml; scikit-learn's load_digits written
as PNG image folders, benchmarks/configs/digits.yaml) it runs `sft run` with

  default   the dataset's default augmentation (shapes: crop + flip; digits config: crop only)
  flip      crop + flip (digits only: does a mirrored digit hurt?)
  no-flip   crop only (demo only: do flips of asymmetric shapes hurt?)
  strong    random_resized_crop (scale 0.35-1) + trivial_augment (+ flip where the default has it)
  mixup     the default + mixup (alpha 0.2)
  lr-find   the default augmentation, with finetune's and the baseline's lr set to what
            `sft lr-find --stage finetune|baseline` suggests (fastai's valley)

and prints finetune and baseline test accuracy (mean ± sd over the seeds) and the transfer gain with its
95 % interval over seeds. Every run of a case shares one pretrain cache entry, so pretraining runs once.

    OMP_NUM_THREADS=1 python benchmarks/augment_lr.py --json benchmarks/.data/augment_lr.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STRONG = [{"name": "random_resized_crop", "scale": [0.35, 1.0]}, "trivial_augment"]
VARIANTS = {
    "demo": {"default": None, "no-flip": [{"name": "crop", "padding": 2}],
             "strong": [*STRONG, "flip"], "mixup": [{"name": "crop", "padding": 2}, "flip", "mixup"],
             "lr-find": None},
    "digits": {"default": None, "flip": [{"name": "crop", "padding": 4}, "flip"], "strong": STRONG,
               "mixup": [{"name": "crop", "padding": 4}, "mixup"], "lr-find": None},
}


def sft(*args: str, env: dict, log: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "sftcore", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=log.parent)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def case_config(case: str, work: Path) -> tuple[Path, list[str]]:
    if case == "demo":
        return REPO / "sftcore" / "configs" / "default.yaml", []
    sys.path.insert(0, str(HERE))
    from verdict_check import build_digits

    roots = build_digits(work / "digits")
    return HERE / "configs" / "digits.yaml", [f"pretrain.dataset.root={roots['source']}",
                                              f"finetune.dataset.root={roots['target']}"]


def lr_find(config: Path, sets: list[str], stage: str, env: dict, work: Path) -> float:
    args = ["lr-find", str(config), "--stage", stage, "--json", "--out", str(work / f"lr-find-{stage}.png"),
            "--force"]
    for s in sets:
        args += ["--set", s]
    proc = sft(*args, env=env, log=work / f"lr-find-{stage}.log")
    return float(json.loads(proc.stdout)["suggestion"])


def run_variant(case: str, variant: str, config: Path, sets: list[str], env: dict, work: Path, seeds: int) -> dict:
    sets = [*sets, f"seeds={seeds}"]
    augment = VARIANTS[case][variant]
    lrs = {}
    if augment is not None:
        sets.append(f"finetune.augment={json.dumps(augment)}")
    if variant == "lr-find":
        lrs = {stage: lr_find(config, sets, stage, env, work) for stage in ("finetune", "baseline")}
        base = {"name": "scratch", "optimizer": {"lr": float(f"{lrs['baseline']:.3g}")}}
        sets += [f"finetune.optimizer.lr={lrs['finetune']:.3g}", f"baseline={json.dumps(base)}"]
    out = work / f"{case}-{variant}"
    args = ["run", str(config), "--out", str(out), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    sft(*args, env=env, log=work / f"{case}-{variant}.log")
    summary = json.loads((out / "summary.json").read_text())
    ft, base = summary["finetune"], summary["baseline"]
    return {"case": case, "variant": variant, "augment": augment, "lr": lrs or None,
            "finetune": [ft["test_accuracy"], ft["test_accuracy_sd"]],
            "baseline": [base["test_accuracy"], base["test_accuracy_sd"]],
            "gain": summary["transfer_gain"], "gain_ci95": summary["transfer_gain_ci95"],
            "pretrain_cache_hit": (summary.get("pretrain") or {}).get("cache", {}).get("hit"),
            "seconds": round(time.perf_counter() - t0, 1), "command": "sft " + " ".join(args)}


def show(rows: list[dict]) -> None:
    print("\n| case | variant | finetune | baseline | gain (points, 95% CI) | lr (finetune / baseline) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        pct = lambda m: f"{100 * m[0]:.1f} ± {100 * (m[1] or 0):.1f}"  # noqa: E731
        lr = f"{r['lr']['finetune']:.2g} / {r['lr']['baseline']:.2g}" if r["lr"] else "config"
        ci = f" ± {r['gain_ci95']:.1f}" if r["gain_ci95"] is not None else ""
        print(f"| {r['case']} | {r['variant']} | {pct(r['finetune'])} | {pct(r['baseline'])} | "
              f"{r['gain']:+.1f}{ci} | {lr} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="demo,digits")
    p.add_argument("--variants", default=None, help="comma-separated subset of the variants")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--keep", action="store_true")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="sft-augment-"))
    env = {**os.environ, "SFT_CACHE_DIR": str(work / "cache")}
    rows = []
    try:
        for case in args.cases.split(","):
            config, sets = case_config(case, work)
            chosen = args.variants.split(",") if args.variants else list(VARIANTS[case])
            for variant in (v for v in chosen if v in VARIANTS[case]):
                rows.append(run_variant(case, variant, config, sets, env, work, args.seeds))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    show(rows)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": os.environ.get("OMP_NUM_THREADS"), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
