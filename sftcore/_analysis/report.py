"""What the run tells the user: the transfer gain over seeds with its uncertainty, and the results table.

Torch-free: plain statistics on numbers and per-example hit vectors (any sequence of bools).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, cast

from sftcore._plugins.contracts import STAGES

UNDERTRAINED = 0.9  # final training accuracy below this: the model has not fitted its training data
AVERAGED = (
    "test_accuracy",
    "test_loss",
    "test_top5_accuracy",
    "test_balanced_accuracy",
    "test_macro_f1",
    "val_accuracy",
    "train_accuracy",
    "train_loss",
)  # summary.json: mean over seeds, with `<score>_sd`
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


# --------------------------------------------------------------------------- statistics
def t975(df: int) -> float:
    """Student's t two-sided 95% quantile; past 30 degrees of freedom, the Cornish-Fisher expansion."""
    if df < 1:
        return float("nan")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: list[float]) -> float | None:
    """95% half-width of the mean over seeds (Student's t); None below two values."""
    n = len(values)
    return t975(n - 1) * statistics.stdev(values) / math.sqrt(n) if n > 1 else None


def mcnemar_p(a_correct, b_correct) -> float:
    """Exact two-sided McNemar test on paired hits: a binomial test of the discordant pairs."""
    b = sum(1 for x, y in zip(a_correct, b_correct) if x and not y)
    c = sum(1 for x, y in zip(a_correct, b_correct) if y and not x)
    n = b + c
    if n == 0:
        return 1.0
    # log-space binomial tail: fast for any test-set size (big-integer sums grow quadratically)
    logs = [
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2) for k in range(min(b, c) + 1)
    ]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * sum(math.exp(v - top) for v in logs))


def paired_interval(a_correct, b_correct) -> float:
    """95% half-width, in points, of the mean per-example difference (test sampling of one seed)."""
    diff = [float(x) - float(y) for x, y in zip(a_correct, b_correct)]
    if len(diff) < 2:
        return float("nan")
    return 196.0 * statistics.stdev(diff) / math.sqrt(len(diff))


# --------------------------------------------------------------------------- over seeds
def aggregate(results: list[dict]) -> dict:
    """One stage over seeds: the first seed's description, each score the mean over seeds with its
    standard deviation beside it (``test_accuracy_sd``; None with one seed)."""
    out = dict(results[0])
    for key in AVERAGED:
        values = [r.get(key) for r in results]
        if any(v is None for v in values):  # no mean of some seeds passed off as all seeds'
            if key in out or any(v is not None for v in values):
                out[key], out[f"{key}_sd"] = None, None
            continue
        numbers = cast("list[float]", values)  # none is None (checked above)
        out[key] = statistics.fmean(numbers)
        out[f"{key}_sd"] = statistics.stdev(numbers) if len(numbers) > 1 else None
    out["seeds"] = len(results)
    out["seconds"] = round(sum(r.get("seconds", 0.0) for r in results), 3)
    if len(results) > 1:
        out["epochs_per_seed"] = [r.get("epochs") for r in results]
        out["selected_epoch_per_seed"] = [r.get("selected_epoch") for r in results]
    return out


def summarise(runs: list[dict], seeds: list[int], pretrain: dict | None, random_start: bool = False) -> dict:
    """The summary's stages, ``per_seed`` and verdict from each seed's stage results."""
    correct = [{stage: _hits(r.pop("correct", None)) for stage, r in run.items()} for run in runs]
    if pretrain is not None:
        pretrain.pop("correct", None)
    out: dict = {}
    for stage in STAGES:
        done = [run[stage] for run in runs if stage in run]
        if done:
            out[stage] = aggregate(done)
    out["per_seed"] = [{"seed": seed, **run} for seed, run in zip(seeds, runs)] if runs else []
    out.update(transfer_verdict(out["per_seed"], correct, random_start))
    out["seconds"] = {stage: out[stage]["seconds"] for stage in STAGES if stage in out}
    if pretrain is not None:
        out["seconds"] = {"pretrain": pretrain["seconds"], **out["seconds"]}
    return out


def _hits(correct) -> list[bool] | None:
    return correct.tolist() if hasattr(correct, "tolist") else correct


def transfer_verdict(per_seed: list[dict], correct: list[dict], random_start: bool = False) -> dict:
    """Finetune minus scratch baseline in accuracy points, paired by seed.

    Two or more seeds: the mean gain and a t-interval over the seeds' gains. One seed: McNemar's exact
    test on the paired test predictions, which covers test sampling only. Each per-seed entry gets
    its own ``transfer_gain``."""
    none: dict[str, Any] = {
        "transfer_gain": None,
        "transfer_gain_ci95": None,
        "transfer_gain_sd": None,
        "transfer_gain_p": None,
        "verdict": None,
        "verdict_warnings": [],
    }
    pairs = [
        (run, hits)
        for run, hits in zip(per_seed, correct)
        if _tested(run.get("finetune")) and _tested(run.get("baseline"))
    ]
    if not pairs:
        return none
    gains = []
    for run, _ in pairs:
        run["transfer_gain"] = round(100.0 * (run["finetune"]["test_accuracy"] - run["baseline"]["test_accuracy"]), 3)
        gains.append(run["transfer_gain"])
    n, tests = len(gains), pairs[0][0]["finetune"]["test_examples"]
    gain = statistics.fmean(gains)
    if n >= 2:
        sd = statistics.stdev(gains)
        ci, p = cast(float, t_interval(gains)), None  # n >= 2: a float, never None
        significant = abs(gain) > ci
        basis = f"mean of {n} seeds, 95% CI ±{ci:.1f} over seeds; {tests} test examples"
    else:
        hits = pairs[0][1]
        sd, ci, p = (
            None,
            paired_interval(hits["finetune"], hits["baseline"]),
            mcnemar_p(hits["finetune"], hits["baseline"]),
        )
        significant = p < 0.05 and gain != 0
        basis = f"one seed: test sampling only, McNemar p = {p:.2g}; {tests} test examples"
    warnings = verdict_warnings([run for run, _ in pairs], random_start)
    if significant and gain > 0:
        head = f"transfer helped: {gain:+.1f} points over training from scratch"
    elif significant:
        head = f"transfer hurt: {gain:+.1f} points against training from scratch"
    else:
        head = f"no clear difference: {gain:+.1f} points against training from scratch"
    line = f"{head} ({basis})" + "".join(f"; warning: {w}" for w in warnings)
    return {
        "transfer_gain": round(gain, 3),
        "transfer_gain_ci95": round(ci, 3) if not math.isnan(ci) else None,
        "transfer_gain_sd": round(sd, 3) if sd is not None else None,
        "transfer_gain_p": p,
        "verdict": line,
        "verdict_warnings": warnings,
    }


def _tested(result: dict | None) -> bool:
    return bool(result and result.get("test_accuracy") is not None and not math.isnan(result["test_accuracy"]))


def verdict_warnings(runs: list[dict], random_start: bool = False) -> list[str]:
    """What the verdict cannot vouch for: unconverged models, chance-level models, nothing transferred."""
    warnings = []
    low = []
    for stage in ("finetune", "baseline"):
        accs = [run[stage].get("train_accuracy") for run in runs]
        worst = min((a for a in accs if a is not None), default=None)
        if worst is not None and worst < UNDERTRAINED:
            low.append(f"{stage} {worst:.2f}")
    if low:
        warnings.append(
            f"the verdict compares unconverged models (final training accuracy {', '.join(low)} "
            f"< {UNDERTRAINED}; train longer, e.g. epochs: auto)"
        )
    classes, tests = runs[0]["finetune"]["classes"], runs[0]["finetune"]["test_examples"]
    chance = 1.0 / max(1, classes)
    bound = chance + 1.96 * math.sqrt(chance * (1 - chance) / max(1, tests))
    means = {stage: statistics.fmean(run[stage]["test_accuracy"] for run in runs) for stage in ("finetune", "baseline")}
    if all(m <= bound for m in means.values()):
        warnings.append(
            f"both models are within chance level ({100 * chance:.0f}% for {classes} classes): "
            "the verdict says nothing about transfer"
        )
    if random_start:
        warnings.append(
            "the comparison measures nothing: there is no pretrain stage and the backbone loaded no "
            "weights, so both models start from a random init"
        )
    return warnings


# --------------------------------------------------------------------------- the table
def _fmt(x, sd=None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{100 * x:.1f}%" if sd is None else f"{100 * x:.1f} ± {100 * sd:.1f}%"


def _span(values: list, single) -> str:
    values = [v for v in values if v is not None] or [single]
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _epochs(r: dict) -> str:
    text = _span(r.get("epochs_per_seed") or [], r["epochs"])
    return f"{text} auto" if r.get("epochs_auto") else text


def _selected(r: dict) -> str:
    how = r.get("select", "best")
    if how == "best":
        how = f"best: {_span(r.get('selected_epoch_per_seed') or [], r['selected_epoch'])}"
    return f"{how} (val {r['val_examples']})"


def results_table(summary: dict) -> str:
    rows = [("stage", "dataset", "classes", "train", "val", "test", "epochs", "kept", "val acc", "test acc", "seconds")]
    for stage in STAGES:
        r = summary.get(stage)
        if not r:
            continue
        rows.append(
            (
                stage,
                r["dataset"],
                str(r["classes"]),
                str(r["train_examples"]),
                str(r["val_examples"]),
                str(r["test_examples"]),
                _epochs(r),
                _selected(r),
                _fmt(r.get("val_accuracy"), r.get("val_accuracy_sd")),
                _fmt(r.get("test_accuracy"), r.get("test_accuracy_sd")),
                f"{r['seconds']:.1f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i in (0, 1, 7) else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    seeds = summary.get("seeds") or []
    if len(seeds) > 1 and summary.get("finetune"):
        lines.append(f"finetune and baseline: mean ± sd over seeds {', '.join(map(str, seeds))}")
    if summary.get("verdict"):
        lines.append(summary["verdict"])
    elif summary.get("finetune") and not summary.get("baseline"):
        lines.append("no baseline was run: add `baseline: scratch` to measure whether transfer helped")
    return "\n".join(lines)
