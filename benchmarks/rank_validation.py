"""What `sft rank` buys: each score's order of the candidates against their finetuned accuracy (issue 25).

Candidates are made by sftcore itself (`sft run` of a pretrain-only config each): LeNet pretrained on the
shapes source for 1, 3 and 10 epochs and on 5% of it for 10 epochs, LeNet pretrained on real digits 0-4
(scikit-learn's load_digits as an image folder, as verdict_check.py writes it), timm resnet10t and
mobilenetv3_small_050 pretrained on the shapes source for 3 epochs, and LeNet, resnet10t and mobilenetv3 from
a random init. Every candidate is a 3-channel backbone at 32 px, so it reads both targets (1-channel digits are
repeated to 3 channels).

Targets: the shapes demo's (sftcore/configs/default.yaml: shapes target, 10 labels per class, lp_ft + l2_sp)
and real digits 5-9 with 5 labels per class (benchmarks/configs/digits.yaml: full finetuning under a new head).
Per target, `sft rank CONFIG --candidate ...` runs once (timed, the whole process; then again with `--seed s`
for the other seeds, for the spread), and every candidate is finetuned with the config's own finetune stage
(`--set pretrain=null --set baseline=null --set backbone=ENTRY --set seeds=N`), one timed process each. Per
score: Kendall tau-b against the mean finetuned test accuracy, and whether the score's best candidate is the
best one (strictly, or within one seed-sd of it).

    python benchmarks/rank_validation.py [--seeds 3] [--targets shapes,digits] [--json out.json] [--keep]
    python benchmarks/rank_validation.py --report out.json      # the tables of an earlier run
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

import yaml

REPO = Path(__file__).resolve().parents[1]
SHAPES_CONFIG = REPO / "sftcore" / "configs" / "default.yaml"
DIGITS_CONFIG = REPO / "benchmarks" / "configs" / "digits.yaml"
SCORES = ("logme", "leep", "nce", "hscore", "ncm_accuracy", "logistic_accuracy")
TARGETS = ("shapes", "digits")
SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
LENET = {"name": "lenet"}
RESNET = {"name": "timm", "model": "resnet10t", "img_size": 32}
MOBILENET = {"name": "timm", "model": "mobilenetv3_small_050", "img_size": 32}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, default=3, help="finetuning seeds per candidate (>= 3 for the doc); default 3")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, from: " + ", ".join(TARGETS))
    p.add_argument("--candidates", default="", help="comma-separated labels to keep (default: all)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every sft process; default 1")
    p.add_argument("--json", type=Path, help="write every number to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (runs, rank.json, logs)")
    p.add_argument("--report", type=Path, help="print the tables of an earlier --json file; run nothing")
    args = p.parse_args()
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not args.targets or any(t not in TARGETS for t in args.targets):
        p.error(f"--targets: choose from {', '.join(TARGETS)}")
    if args.seeds < 1 or args.threads < 1:
        p.error("--seeds and --threads must be >= 1")
    return args


# --------------------------------------------------------------------------- candidates
def shapes_stage(epochs: int, fraction: float | None = None) -> dict:
    dataset = {"name": "shapes", "task": "source", **({"fraction": fraction} if fraction else {})}
    return {"dataset": dataset, "epochs": epochs, "batch_size": 64, "optimizer": SGD, "schedule": "cosine"}


def candidate_specs(digits_source: str) -> list[dict]:
    """label, backbone entry, the pretrain stage that makes it (None: random init) and a short description."""
    digits = {
        "dataset": {"name": "image_folder", "root": digits_source, "flip": False},
        "epochs": 30,
        "batch_size": 64,
        "optimizer": SGD,
        "schedule": "cosine",
    }
    return [
        {"label": "lenet-shapes-10ep", "backbone": LENET, "pretrain": shapes_stage(10), "what": "shapes source, 10 ep"},
        {"label": "lenet-shapes-3ep", "backbone": LENET, "pretrain": shapes_stage(3), "what": "shapes source, 3 ep"},
        {"label": "lenet-shapes-1ep", "backbone": LENET, "pretrain": shapes_stage(1), "what": "shapes source, 1 ep"},
        {
            "label": "lenet-shapes5pct-10ep",
            "backbone": LENET,
            "pretrain": shapes_stage(10, 0.05),
            "what": "5% of shapes source, 10 ep",
        },
        {"label": "lenet-digits04-30ep", "backbone": LENET, "pretrain": digits, "what": "digits 0-4, 30 ep"},
        {"label": "lenet-random", "backbone": LENET, "pretrain": None, "what": "random init"},
        {
            "label": "resnet10t-shapes-3ep",
            "backbone": RESNET,
            "pretrain": shapes_stage(3),
            "what": "shapes source, 3 ep",
        },
        {"label": "resnet10t-random", "backbone": RESNET, "pretrain": None, "what": "random init"},
        {
            "label": "mobilenetv3s050-shapes-3ep",
            "backbone": MOBILENET,
            "pretrain": shapes_stage(3),
            "what": "shapes source, 3 ep",
        },
        {"label": "mobilenetv3s050-random", "backbone": MOBILENET, "pretrain": None, "what": "random init"},
    ]


def sft(args: list[str], log: Path, threads: int) -> float:
    """One whole `sft` process, timed; its stdout and stderr go to ``log``.{stdout,stderr}."""
    script = Path(sys.executable).with_name("sft")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "sftcore"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(f"{log}.stdout", "w") as so, open(f"{log}.stderr", "w") as se:
        rc = subprocess.run([*cmd, *args], stdout=so, stderr=se, env=env, cwd=REPO).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = Path(f"{log}.stderr").read_text()[-3000:]
        raise SystemExit(f"rank_validation: `sft {' '.join(args)}` failed with exit code {rc}:\n{tail}")
    return seconds


def make_candidates(specs: list[dict], tmp: Path, threads: int) -> list[dict]:
    """Pretrain every candidate that has a pretrain stage (one `sft run` each); the `--candidate` it becomes."""
    out = []
    for spec in specs:
        cand = {**spec, "given": json.dumps(spec["backbone"]), "pretrain_seconds": None, "pretrain_test": None}
        if spec["pretrain"] is not None:
            config = {
                "name": spec["label"],
                "seed": 0,
                "device": "cpu",
                "pretrain_cache": False,
                "backbone": spec["backbone"],
                "pretrain": spec["pretrain"],
            }
            path = tmp / "configs" / f"{spec['label']}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            run = tmp / "candidates" / spec["label"]
            seconds = sft(
                ["run", str(path), "--out", str(run), "--no-progress"], tmp / "logs" / f"pre-{spec['label']}", threads
            )
            summary = json.loads((run / "summary.json").read_text())
            cand.update(
                given=str(run), pretrain_seconds=round(seconds, 1), pretrain_test=summary["pretrain"]["test_accuracy"]
            )
            print(
                f"  pretrained {spec['label']}: {seconds:.1f} s, source test accuracy {cand['pretrain_test']:.3f}",
                flush=True,
            )
        out.append(cand)
    return out


# --------------------------------------------------------------------------- targets
def target_configs(names: list[str], digits: dict | None) -> dict:
    """Per target: its config, the --set it needs for `sft rank`, and for finetuning alone."""
    out = {}
    if "shapes" in names:
        out["shapes"] = {"config": str(SHAPES_CONFIG), "rank_sets": [], "finetune_sets": []}
    if "digits" in names:
        root = f"finetune.dataset.root={digits['target']}"
        out["digits"] = {
            "config": str(DIGITS_CONFIG),
            "finetune_sets": [root],
            "rank_sets": [f"pretrain.dataset.root={digits['source']}", root],
        }
    return out


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def rank_target(name: str, target: dict, cands: list[dict], tmp: Path, seed: int | None, threads: int) -> dict:
    """`sft rank CONFIG --candidate ...` once (``--seed`` when given), timed; rank.json with the seconds."""
    tag = f"rank-{name}" + ("" if seed is None else f"-seed{seed}")
    args = ["rank", target["config"], *sets(target["rank_sets"]), "--out", str(tmp / tag)]
    args += [a for c in cands for a in ("--candidate", c["given"])]
    args += [] if seed is None else ["--seed", str(seed)]
    seconds = sft(args, tmp / "logs" / tag, threads)
    result = json.loads((tmp / tag / "rank.json").read_text())
    return {
        "seconds": round(seconds, 1),
        "seed": result["seed"],
        "target": result["target"],
        "rows": result["rows"],
        "command": "sft " + " ".join(args),
        "table": Path(f"{tmp / 'logs' / tag}.stdout").read_text(),
    }


def finetune(name: str, target: dict, cand: dict, backbone: dict, tmp: Path, args) -> dict:
    """The config's finetune stage alone from ``backbone`` (no pretraining, no baseline), over the seeds."""
    out = tmp / f"ft-{name}" / cand["label"]
    extra = [
        "pretrain=null",
        "baseline=null",
        f"seeds={args.seeds}",
        "pretrain_cache=false",
        f"backbone={json.dumps(backbone)}",
    ]
    cmd = ["run", target["config"], *sets([*target["finetune_sets"], *extra]), "--out", str(out), "--no-progress"]
    seconds = sft(cmd, tmp / "logs" / f"ft-{name}-{cand['label']}", args.threads)
    summary = json.loads((out / "summary.json").read_text())
    accs = [row["finetune"]["test_accuracy"] for row in summary["per_seed"]]
    epochs = [row["finetune"]["epochs"] for row in summary["per_seed"]]
    return {
        "seconds": round(seconds, 1),
        "seeds": summary["seeds"],
        "accuracies": accs,
        "epochs": epochs,
        "mean": statistics.fmean(accs),
        "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
    }


# --------------------------------------------------------------------------- statistics
def tau_b(x: list[float], y: list[float]) -> float | None:
    """Kendall's tau-b (ties in either list allowed); None when one list is constant."""
    conc = disc = tie_x = tie_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                tie_x, tie_y = tie_x + 1, tie_y + 1
            elif dx == 0:
                tie_x += 1
            elif dy == 0:
                tie_y += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    pairs = len(x) * (len(x) - 1) // 2
    denom = math.sqrt((pairs - tie_x) * (pairs - tie_y))
    return None if denom == 0 else (conc - disc) / denom


def kendall(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
    """tau-b and its two-sided p-value (scipy's; without scipy, tau-b alone)."""
    tau = tau_b(x, y)
    if tau is None:
        return None, None
    try:
        from scipy.stats import kendalltau
    except ImportError:
        return tau, None
    p = float(kendalltau(x, y).pvalue)
    return tau, (None if math.isnan(p) else p)


def top1(values: dict, acc: dict) -> dict:
    """The score's pick (every candidate tied at its top) against the best mean accuracy of all candidates."""
    have = {k: v for k, v in values.items() if v is not None}
    if not have:
        return {"pick": [], "strict": None, "within_sd": None, "regret": None}
    best = max(acc, key=lambda k: acc[k]["mean"])
    top = max(have.values())
    picks = [k for k, v in have.items() if v == top]
    floor = acc[best]["mean"] - acc[best]["sd"]
    return {
        "pick": picks,
        "best": best,
        "strict": all(k == best for k in picks),
        "within_sd": all(acc[k]["mean"] >= floor for k in picks),
        "regret": 100 * max(acc[best]["mean"] - acc[k]["mean"] for k in picks),
    }


def sig(value: float | None) -> float | None:
    """A score to 9 significant digits: values that differ only by rounding (H-score's C - 1) are ties."""
    return None if value is None else float(f"{value:.9g}")


def score_table(ranks: list[dict], acc: dict, labels: dict) -> dict:
    """Per score: tau-b and p against mean accuracy for the first rank (the default), tau for every rank
    seed, and the first rank's top-1."""
    out = {}
    for score in SCORES:
        taus = []
        for i, rank in enumerate(ranks):
            values = {labels[r["candidate"]]: sig(r.get(score)) for r in rank["rows"] if r["error"] is None}
            keys = [k for k, v in values.items() if v is not None]
            tau, p = kendall([values[k] for k in keys], [acc[k]["mean"] for k in keys])
            taus.append(tau)
            if i == 0:
                out[score] = {"n": len(keys), "tau": tau, "p": p, **top1(values, acc)}
        out[score]["tau_by_rank_seed"] = taus
    return out


# --------------------------------------------------------------------------- report
def fnum(v, spec: str = ".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def seed_agreement(finetune: dict) -> list[float | None]:
    """tau-b between the candidates' accuracies of every two finetuning seeds: how stable the order to be
    predicted is (a ceiling for any score)."""
    accs = [f["accuracies"] for f in finetune.values()]
    n = min(len(a) for a in accs)
    return [tau_b([a[i] for a in accs], [a[j] for a in accs]) for i in range(n) for j in range(i + 1, n)]


def print_candidates(res: dict) -> None:
    """Candidates, best finetuned first: pretraining, mean ± sd accuracy, the default rank's scores."""
    values = {res["labels"][r["candidate"]]: r for r in res["ranks"][0]["rows"]}
    print("| candidate | pretraining | finetuned acc (mean ± sd) | " + " | ".join(SCORES) + " |")
    print("|---|---|---|" + "---|" * len(SCORES))
    for c in sorted(res["candidates"], key=lambda c: -res["finetune"][c["label"]]["mean"]):
        f, row = res["finetune"][c["label"]], values[c["label"]]
        what = c["what"] + ("" if c["pretrain_test"] is None else f" (source test {c['pretrain_test']:.2f})")
        cells = " | ".join(fnum(row.get(s), ".4g") for s in SCORES) if row["error"] is None else row["error"]
        print(f"| {c['label']} | {what} | {f['mean']:.3f} ± {f['sd']:.3f} | {cells} |")


def print_scores(res: dict) -> None:
    """Per score: tau-b (p) of the default rank, tau-b of every rank seed, the pick and top-1."""
    seeds = ", ".join(str(r["seed"]) for r in res["ranks"])
    print(f"\n| score | n | Kendall τ-b (p) | τ-b, rank seeds {seeds} | pick | top-1 | within 1 sd | regret (pts) |")
    print("|---|---|---|---|---|---|---|---|")
    yes = lambda b: "n/a" if b is None else ("yes" if b else "no")  # noqa: E731
    for score, s in res["scores"].items():
        taus = ", ".join(fnum(t, "+.2f") for t in s["tau_by_rank_seed"])
        pick = (" = ".join(s["pick"]) if len(s["pick"]) < 3 else f"all {len(s['pick'])} tied") or "n/a"
        p = "n/a" if s["p"] is None else ("<0.01" if s["p"] < 0.01 else f"{s['p']:.2f}")
        print(
            f"| {score} | {s['n']} | {fnum(s['tau'], '+.2f')} ({p}) | {taus} | {pick} | "
            f"{yes(s['strict'])} | {yes(s['within_sd'])} | {fnum(s['regret'], '.1f')} |"
        )


def print_target(name: str, res: dict) -> None:
    """The target's tables, as Markdown, and its times."""
    first = res["ranks"][0]
    print(f"\n### {name}: {first['target']['examples']} ranking examples (rank seed {first['seed']})\n")
    print_candidates(res)
    print_scores(res)
    agree = ", ".join(fnum(t, "+.2f") for t in seed_agreement(res["finetune"]))
    ft = sum(f["seconds"] for f in res["finetune"].values())
    n = len(res["candidates"])
    print(f"\nτ-b between the finetuning seeds' accuracies (every pair of seeds): {agree}. Best: {res['best']}.")
    print(
        f"`sft rank` {first['seconds']:.1f} s (whole process, {n} candidates; other rank seeds "
        f"{', '.join(str(r['seconds']) for r in res['ranks'][1:])} s); finetuning every candidate {ft:.1f} s "
        f"({n} processes x {res['seeds']} seeds); ratio {ft / first['seconds']:.0f}x."
    )


def run_target(name: str, target: dict, cands: list[dict], tmp: Path, args) -> dict:
    """Rank (default seed, then the other finetuning seeds), finetune every candidate, and compare."""
    print(f"\n[{name}] sft rank ...", flush=True)
    ranks = [rank_target(name, target, cands, tmp, None, args.threads)]
    print(f"  rank: {ranks[0]['seconds']:.1f} s", flush=True)
    labels = {c["given"]: c["label"] for c in cands}
    backbones = {labels[r["candidate"]]: r["backbone"] for r in ranks[0]["rows"]}
    results = {}
    for cand in cands:
        results[cand["label"]] = finetune(name, target, cand, backbones[cand["label"]], tmp, args)
        f = results[cand["label"]]
        print(f"  finetuned {cand['label']}: {f['mean']:.3f} ± {f['sd']:.3f} ({f['seconds']:.1f} s)", flush=True)
    seeds = next(iter(results.values()))["seeds"]
    for seed in seeds:
        if seed != ranks[0]["seed"]:
            ranks.append(rank_target(name, target, cands, tmp, seed, args.threads))
    best = max(results, key=lambda k: results[k]["mean"])
    return {
        "ranks": ranks,
        "finetune": results,
        "labels": labels,
        "candidates": cands,
        "seeds": len(seeds),
        "best": best,
        "scores": score_table(ranks, results, labels),
        "finetune_seconds": round(sum(f["seconds"] for f in results.values()), 1),
    }


def report(path: Path) -> int:
    """The tables of a saved --json file."""
    out = json.loads(path.read_text())
    for name, res in out["targets"].items():
        print_target(name, res)
    print(f"\ntotal {out['seconds']:.0f} s; OMP_NUM_THREADS={out['args']['threads']}")
    return 0


def main() -> int:
    args = parse_args()
    if args.report:
        return report(args.report)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("rank_validation: needs scikit-learn for the digits (pip install scikit-learn)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from verdict_check import build_digits

    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="rank_validation-"))
    out: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "targets": {}}
    try:
        digits = build_digits(tmp / "digits")
        specs = candidate_specs(digits["source"])
        keep = {c.strip() for c in args.candidates.split(",") if c.strip()}
        specs = [s for s in specs if not keep or s["label"] in keep]
        print(f"pretraining {sum(s['pretrain'] is not None for s in specs)} candidates ...", flush=True)
        cands = make_candidates(specs, tmp, args.threads)
        out["candidates"] = cands
        for name, target in target_configs(args.targets, digits).items():
            out["targets"][name] = run_target(name, target, cands, tmp, args)
        out["seconds"] = round(time.perf_counter() - t0, 1)
        path = args.json or tmp / "rank_validation.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=str))
        report(path)
        if args.json:
            print(f"wrote {args.json}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
