"""Scores of a test evaluation beyond accuracy: top-5 accuracy, balanced accuracy, macro-F1, per-class precision,
recall and F1.

Torch-free: plain Python over sequences of class indexes (lists, or anything with ``tolist()``, such as the
tensors evaluate() returns). The conventions are sklearn's defaults:

- a class's precision is undefined (None) when nothing was predicted as it, its recall when the test split
  holds none of it, its F1 when both (F1 = 2 TP / (support + predicted), so a class that is missed entirely,
  or only predicted wrongly, has F1 0);
- balanced accuracy is the mean recall over the classes present in the test split
  (``sklearn.metrics.balanced_accuracy_score``);
- macro-F1 is the mean F1 over the classes present in the test split or in the predictions: a class with
  neither examples nor predictions is left out (``sklearn.metrics.f1_score(average="macro")``);
- top-5 accuracy (the target among the five most probable classes) only exists with more than 5 classes:
  with 5 or fewer it would always be 1, and is None.
"""

from __future__ import annotations

TOP5 = 5  # top-5 accuracy: defined with more classes than this


def _list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def per_class(targets, predicted, classes: int) -> list[dict]:
    """One row per class index: ``support`` (test examples of it), ``predicted`` (examples predicted as it),
    ``true_positives``, ``precision``, ``recall``, ``f1`` (None where undefined, see the module's doc)."""
    targets, predicted = _list(targets), _list(predicted)
    if len(targets) != len(predicted):
        raise ValueError(f"targets ({len(targets)}) and predicted ({len(predicted)}) differ in length")
    support, guessed, hits = [0] * classes, [0] * classes, [0] * classes
    for t, p in zip(targets, predicted):
        support[t] += 1
        guessed[p] += 1
        if t == p:
            hits[t] += 1
    rows = []
    for c in range(classes):
        tp, s, g = hits[c], support[c], guessed[c]
        rows.append(
            {
                "class": c,
                "support": s,
                "predicted": g,
                "true_positives": tp,
                "precision": tp / g if g else None,
                "recall": tp / s if s else None,
                "f1": 2 * tp / (s + g) if s + g else None,
            }
        )
    return rows


def balanced_accuracy(rows: list[dict]) -> float | None:
    """Mean recall over the classes present in the test split; None without test examples."""
    recalls = [r["recall"] for r in rows if r["recall"] is not None]
    return sum(recalls) / len(recalls) if recalls else None


def macro_f1(rows: list[dict]) -> float | None:
    """Mean F1 over the classes with examples or predictions; None when there are none."""
    f1 = [r["f1"] for r in rows if r["f1"] is not None]
    return sum(f1) / len(f1) if f1 else None


def top5_accuracy(targets, top_k, classes: int) -> float | None:
    """Share of examples whose target is among their first five ``top_k`` classes; None with <= 5 classes
    or no examples."""
    targets, top_k = _list(targets), _list(top_k)
    if classes <= TOP5 or not targets:
        return None
    return sum(1 for t, top in zip(targets, top_k) if t in top[:TOP5]) / len(targets)


def scores(targets, predicted, top_k, classes: int) -> dict:
    """``top5_accuracy``, ``balanced_accuracy`` and ``macro_f1`` of one evaluation (each None where undefined)."""
    rows = per_class(targets, predicted, classes)
    return {
        "top5_accuracy": top5_accuracy(targets, top_k, classes),
        "balanced_accuracy": balanced_accuracy(rows),
        "macro_f1": macro_f1(rows),
    }
