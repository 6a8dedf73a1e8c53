"""What the run tells the user: the transfer gain with its uncertainty, and the results table."""

from __future__ import annotations

import math



def transfer_verdict(results: dict, correct: dict) -> dict:
    """Finetune minus scratch baseline in accuracy points, with a paired 95% interval on the test set."""
    ft, bl = results.get("finetune"), results.get("baseline")
    if not ft or not bl or ft.get("test_accuracy") is None or bl.get("test_accuracy") is None:
        return {"transfer_gain": None, "transfer_gain_ci95": None, "verdict": None}
    gain = 100.0 * (ft["test_accuracy"] - bl["test_accuracy"])
    diff = correct["finetune"].float() - correct["baseline"].float()
    ci = 196.0 * diff.std().item() / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    if gain - ci > 0:
        verdict = f"transfer helped: {gain:+.1f} points over training from scratch (95% CI ±{ci:.1f})"
    elif gain + ci < 0:
        verdict = f"transfer hurt: {gain:+.1f} points against training from scratch (95% CI ±{ci:.1f})"
    else:
        verdict = (f"no clear difference: {gain:+.1f} points against training from scratch "
                   f"(95% CI ±{ci:.1f}, {len(diff)} test examples)")
    return {"transfer_gain": round(gain, 3), "transfer_gain_ci95": round(ci, 3), "verdict": verdict}


def _fmt(x, pct: bool = True) -> str:
    if x is None:
        return "-"
    return f"{100 * x:.1f}%" if pct else str(x)


def results_table(summary: dict) -> str:
    rows = [("stage", "dataset", "classes", "train", "val", "test", "epochs", "val acc", "test acc", "seconds")]
    for stage in ("pretrain", "finetune", "baseline"):
        r = summary.get(stage)
        if not r:
            continue
        rows.append((stage, r["dataset"], str(r["classes"]), str(r["train_examples"]), str(r["val_examples"]),
                     str(r["test_examples"]), f"{r['selected_epoch']}/{r['epochs']}", _fmt(r.get("val_accuracy")),
                     _fmt(r.get("test_accuracy")), f"{r['seconds']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    if summary.get("verdict"):
        lines.append(summary["verdict"])
    elif summary.get("finetune") and not summary.get("baseline"):
        lines.append("no baseline was run: add `baseline: scratch` to measure whether transfer helped")
    return "\n".join(lines)
