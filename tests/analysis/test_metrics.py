"""Evaluation that can be analysed afterwards: top-5 accuracy, balanced accuracy and macro-F1 in the stage results
and summary.json, per-class scores beside the confusion matrix, test-time augmentation (tta: flip)."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sftcore
from sftcore._config import resolve as cfgmod
from sftcore._analysis import metrics
from sftcore._analysis import report
from sftcore._train.evaluate import TTA, evaluate
from sftcore.errors import ConfigError
from sftcore.testing import tiny_config

# 3 classes, 8 examples, and a class (3) with neither examples nor predictions
TARGETS = [0, 0, 0, 1, 1, 2, 2, 2]
PREDICTED = [0, 0, 1, 1, 2, 2, 2, 0]


# --------------------------------------------------------------------------- _metrics against hand-computed values
def test_per_class_by_hand():
    rows = metrics.per_class(TARGETS, PREDICTED, 4)
    # class 0: TP 2, support 3, predicted 3; class 1: TP 1, support 2, predicted 2; class 2: TP 2, support 3,
    # predicted 3; class 3: nothing
    assert [(r["support"], r["predicted"], r["true_positives"]) for r in rows] == [(3, 3, 2), (2, 2, 1), (3, 3, 2),
                                                                                  (0, 0, 0)]
    assert [r["precision"] for r in rows] == pytest.approx([2 / 3, 1 / 2, 2 / 3, None])
    assert [r["recall"] for r in rows] == pytest.approx([2 / 3, 1 / 2, 2 / 3, None])
    assert [r["f1"] for r in rows] == pytest.approx([2 / 3, 1 / 2, 2 / 3, None])
    assert metrics.balanced_accuracy(rows) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert metrics.macro_f1(rows) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)  # class 3 left out


def test_a_class_only_predicted_or_only_missed_counts_zero_in_macro_f1():
    # class 1 is never predicted (recall 0, precision undefined, F1 0); class 2 only predicted (F1 0, no recall)
    targets, predicted = [0, 0, 1, 1], [0, 0, 2, 0]
    rows = metrics.per_class(targets, predicted, 3)
    assert [r["precision"] for r in rows] == pytest.approx([2 / 3, None, 0.0])
    assert [r["recall"] for r in rows] == pytest.approx([1.0, 0.0, None])
    assert [r["f1"] for r in rows] == pytest.approx([0.8, 0.0, 0.0])
    assert metrics.balanced_accuracy(rows) == pytest.approx(0.5)  # classes 0 and 1: the ones in the test split
    assert metrics.macro_f1(rows) == pytest.approx(0.8 / 3)


def test_top5_accuracy_only_with_more_than_five_classes():
    top = [[0, 1, 2, 3, 4], [5, 4, 3, 2, 1], [6, 5, 4, 3, 2], [1, 2, 3, 4, 5]]
    assert metrics.top5_accuracy([4, 0, 6, 0], top, 7) == pytest.approx(2 / 4)
    assert metrics.top5_accuracy([4, 0], [[0, 1, 2, 3, 4], [1, 2, 3, 4, 0]], 5) is None  # would always be 1
    assert metrics.top5_accuracy([], [], 10) is None
    assert metrics.top5_accuracy(torch.tensor([9]), torch.tensor([[0, 1, 2, 3, 4]]), 10) == 0.0  # tensors too


def test_scores_of_tensors_and_of_no_examples():
    out = metrics.scores(torch.tensor(TARGETS), torch.tensor(PREDICTED), torch.tensor([[t] for t in PREDICTED]), 3)
    assert out == {"top5_accuracy": None, "balanced_accuracy": pytest.approx(11 / 18),
                   "macro_f1": pytest.approx(11 / 18)}
    assert metrics.scores([], [], [], 3) == {"top5_accuracy": None, "balanced_accuracy": None, "macro_f1": None}
    with pytest.raises(ValueError):
        metrics.per_class([0, 1], [0], 2)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(seed)
    classes = 8
    targets = torch.randint(0, classes - 1, (60,), generator=g).tolist()  # the last class never in the test split
    predicted = [t if torch.rand((), generator=g) < 0.5 else int(torch.randint(0, classes, (), generator=g))
                 for t in targets]
    rows = metrics.per_class(targets, predicted, classes)
    assert metrics.balanced_accuracy(rows) == pytest.approx(skm.balanced_accuracy_score(targets, predicted))
    assert metrics.macro_f1(rows) == pytest.approx(skm.f1_score(targets, predicted, average="macro"))
    labels = list(range(classes))
    p, r, f, s = skm.precision_recall_fscore_support(targets, predicted, labels=labels, zero_division=float("nan"))
    for row, pi, ri, fi, si in zip(rows, p, r, f, s):
        assert row["support"] == si
        for mine, theirs in ((row["precision"], pi), (row["recall"], ri)):
            assert (mine is None and math.isnan(theirs)) or mine == pytest.approx(theirs)
        if row["f1"] is not None:
            assert row["f1"] == pytest.approx(fi)


# --------------------------------------------------------------------------- summary.json
def test_aggregate_averages_the_new_scores_and_the_table_is_unchanged():
    base = {"dataset": "d", "classes": 7, "train_examples": 1, "val_examples": 0, "test_examples": 8, "epochs": 1,
            "selected_epoch": 1, "select": "last", "val_accuracy": None, "test_accuracy": 0.5, "test_loss": 1.0,
            "train_accuracy": 1.0, "train_loss": 0.1, "seconds": 1.0}
    seeds = [{**base, "test_top5_accuracy": 0.5, "test_balanced_accuracy": 0.4, "test_macro_f1": 0.3},
             {**base, "test_top5_accuracy": 0.7, "test_balanced_accuracy": 0.6, "test_macro_f1": 0.5}]
    out = report.aggregate(seeds)
    for key, mean in (("test_top5_accuracy", 0.6), ("test_balanced_accuracy", 0.5), ("test_macro_f1", 0.4)):
        assert out[key] == pytest.approx(mean) and out[f"{key}_sd"] == pytest.approx(math.sqrt(0.02))
    assert report.results_table({"finetune": out}) == report.results_table({"finetune": report.aggregate([
        {k: v for k, v in s.items() if not k.startswith(("test_top5", "test_bal", "test_macro"))} for s in seeds])})
    no_top5 = report.aggregate([{**s, "test_top5_accuracy": None} for s in seeds])
    assert no_top5["test_top5_accuracy"] is None and no_top5["test_top5_accuracy_sd"] is None
    mixed = report.aggregate([seeds[0], {**seeds[1], "test_top5_accuracy": None}])  # never one seed's as the mean
    assert mixed["test_top5_accuracy"] is None and mixed["test_top5_accuracy_sd"] is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics") / "run"
    summary = sftcore.run(tiny_config(epochs=1, pretrain=True), out=out)
    return out, summary


@pytest.mark.slow
def test_a_run_records_the_scores_per_seed_and_in_the_summary(tiny_run):
    run_dir, summary = tiny_run
    saved = json.loads((run_dir / "summary.json").read_text())
    preds = json.loads((run_dir / "predictions" / "finetune.json").read_text())
    expected = metrics.scores(preds["targets"], preds["predicted"], preds["top_k"], len(preds["classes"]))
    fin = saved["finetune"]
    assert len(preds["classes"]) <= 5 and fin["test_top5_accuracy"] is None
    assert fin["test_balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    assert fin["test_macro_f1"] == pytest.approx(expected["macro_f1"])
    assert fin["test_balanced_accuracy_sd"] is None and fin["test_macro_f1_sd"] is None  # one seed
    assert saved["per_seed"][0]["finetune"]["test_macro_f1"] == fin["test_macro_f1"]
    pre = saved["pretrain"]  # the source task has more than 5 classes
    assert pre["classes"] > 5 and 0.0 <= pre["test_top5_accuracy"] <= 1.0
    assert pre["test_top5_accuracy"] >= pre["test_accuracy"]
    assert summary["finetune"]["test_macro_f1"] == fin["test_macro_f1"]


def test_a_stage_without_test_examples_has_null_scores():
    from sftcore._run.pipeline import Pipeline

    result = {}
    data = SimpleNamespace(test=None)
    Pipeline._test(SimpleNamespace(), "finetune", None, data, {}, None, result)
    assert result == {"test_accuracy": None, "test_loss": None, "test_top5_accuracy": None,
                      "test_balanced_accuracy": None, "test_macro_f1": None, "correct": None}


# --------------------------------------------------------------------------- sft plot
@pytest.mark.slow
def test_plot_writes_per_class_scores_beside_the_confusion_matrix(tiny_run, tmp_path):
    pytest.importorskip("matplotlib")
    from sftcore._analysis.plots import plot

    run_dir, _ = tiny_run
    written = plot(run_dir, tmp_path)
    assert tmp_path / "finetune-per-class.csv" in written
    assert written.index(tmp_path / "finetune-per-class.csv") == written.index(tmp_path / "finetune-confusion.csv") + 1
    preds = json.loads((run_dir / "predictions" / "finetune.json").read_text())
    rows = list(csv.reader((tmp_path / "finetune-per-class.csv").open()))
    assert rows[0] == ["class", "support", "precision", "recall", "f1"]
    assert [r[0] for r in rows[1:]] == preds["classes"]
    expected = metrics.per_class(preds["targets"], preds["predicted"], len(preds["classes"]))
    for row, want in zip(rows[1:], expected):
        assert int(row[1]) == want["support"] == preds["targets"].count(want["class"])
        for cell, key in zip(row[2:], ("precision", "recall", "f1")):
            assert cell == "" if want[key] is None else float(cell) == pytest.approx(want[key], abs=1e-6)
    recalls = [float(r[3]) for r in rows[1:] if r[3]]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert sum(recalls) / len(recalls) == pytest.approx(summary["per_seed"][0]["finetune"]["test_balanced_accuracy"],
                                                       abs=1e-5)


def test_per_class_csv_leaves_undefined_scores_empty(tmp_path):
    from sftcore._analysis.plots import _save_per_class_csv

    path = _save_per_class_csv(["a", "b", "c"], {"targets": [0, 0, 1, 1], "predicted": [0, 0, 2, 0]},
                               tmp_path / "x.csv")
    assert list(csv.reader(path.open())) == [["class", "support", "precision", "recall", "f1"],
                                             ["a", "2", "0.666667", "1.000000", "0.800000"],
                                             ["b", "2", "", "0.000000", "0.000000"],
                                             ["c", "0", "0.000000", "", "0.000000"]]


# --------------------------------------------------------------------------- tta
def _tiny_model(classes=7):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 6, classes))  # not flip-invariant: weights per pixel


def _batches():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (10, 3, 4, 6), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 7, (10,), generator=g)
    return [(x[:6], y[:6]), (x[6:], y[6:])], x, y


PERF = SimpleNamespace(device=torch.device("cpu"), autocast=lambda: torch.autocast("cpu", enabled=False))


def transform(x):
    return x.float() / 255.0 - 0.5


def test_tta_flip_averages_the_probabilities_of_the_image_and_its_flip():
    model, (batches, x, y) = _tiny_model(), _batches()
    ev = evaluate(model, batches, transform, PERF, tta="flip")
    with torch.no_grad():
        p = (F.softmax(model(transform(x)), 1) + F.softmax(model(transform(x.flip(3))), 1)) / 2
    values, index = p.topk(5, dim=1)
    assert torch.equal(ev["predicted"], p.argmax(1)) and torch.equal(ev["top_k"], index)
    assert torch.allclose(ev["top_k_probability"], values, atol=1e-6)
    assert ev["loss"] == pytest.approx(F.nll_loss(p.log(), y).item(), rel=1e-5)
    assert ev["accuracy"] == pytest.approx((p.argmax(1) == y).float().mean().item())
    plain = evaluate(model, batches, transform, PERF)
    assert not torch.allclose(plain["top_k_probability"], ev["top_k_probability"])  # the flip did something


def test_tta_none_is_the_plain_pass_bit_for_bit():
    model, (batches, _, _) = _tiny_model(), _batches()
    default, none = evaluate(model, batches, transform, PERF), evaluate(model, batches, transform, PERF, tta="none")
    with torch.no_grad():
        logits = torch.cat([model(transform(b)) for b, _ in batches])
    values, index = logits.topk(5, dim=1)
    for ev in (default, none):
        assert torch.equal(ev["predicted"], logits.argmax(1)) and torch.equal(ev["top_k"], index)
        assert torch.equal(ev["top_k_probability"], (values - logits.logsumexp(1, keepdim=True)).exp())
    assert default["loss"] == none["loss"]
    with pytest.raises(ValueError, match="tta"):
        evaluate(model, batches, transform, PERF, tta="flop")


def test_tta_config_key():
    assert cfgmod.STAGE_DEFAULTS["tta"] == "none" and cfgmod.TTA == TTA
    cfg = cfgmod.resolve(cfgmod.load(tiny_config(baseline=True, tta="flip")))
    assert cfg["finetune"]["tta"] == "flip" and cfg["baseline"]["tta"] == "flip"  # the baseline inherits it
    assert cfgmod.resolve(cfgmod.load(tiny_config()))["finetune"]["tta"] == "none"
    with pytest.raises(ConfigError) as err:
        cfgmod.resolve(cfgmod.load(tiny_config(tta="flp")))
    assert str(err.value).splitlines() == [
        "config: finetune.tta must be one of none, flip, got 'flp' (did you mean 'flip'?)"]


@pytest.mark.slow
def test_a_run_with_tta_flip_trains_and_selects_alike_and_only_tests_differently(tiny_run, tmp_path):
    run_dir, plain = tiny_run
    flipped = sftcore.run(tiny_config(epochs=1, pretrain=True, tta="flip"), out=tmp_path / "run")
    for stage in ("finetune",):
        for key in ("train_loss", "train_accuracy", "val_accuracy", "selected_epoch"):
            assert flipped[stage][key] == plain[stage][key], key
        assert flipped[stage]["test_loss"] != plain[stage]["test_loss"]
    assert flipped["pretrain"]["test_loss"] == plain["pretrain"]["test_loss"]  # pretrain keeps tta: none
    before = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    after = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in before]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in after]
