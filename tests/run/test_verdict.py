"""The honest verdict: statistics over seeds, McNemar for one seed, and the warnings it carries."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from sftcore._analysis import report


# --------------------------------------------------------------------------- statistics
def test_t_quantiles_from_the_table_and_beyond():
    assert report.t975(1) == 12.706 and report.t975(2) == 4.303 and report.t975(30) == 2.042
    # past the table: the expansion meets the table at 30 and tends to the normal quantile
    assert report.t975(31) == pytest.approx(2.040, abs=2e-3)
    assert report.t975(60) == pytest.approx(2.000, abs=2e-3)
    assert report.t975(120) == pytest.approx(1.980, abs=2e-3)
    assert report.t975(10 ** 6) == pytest.approx(1.960, abs=1e-3)
    assert math.isnan(report.t975(0))


def _binomial_two_sided(b: int, c: int) -> float:
    n = b + c
    tail = sum(Fraction(math.comb(n, k), 2 ** n) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


@pytest.mark.parametrize("b,c", [(10, 0), (0, 10), (7, 3), (5, 5), (1, 0), (30, 12), (600, 540)])
def test_mcnemar_is_the_exact_binomial_test_of_discordant_pairs(b, c):
    # b examples only the first model gets right, c only the second; concordant pairs do not count
    first = [True] * b + [False] * c + [True] * 40 + [False] * 13
    second = [False] * b + [True] * c + [True] * 40 + [False] * 13
    assert report.mcnemar_p(first, second) == pytest.approx(_binomial_two_sided(b, c), rel=1e-12)


def test_mcnemar_known_values():
    assert report.mcnemar_p([True] * 10, [False] * 10) == pytest.approx(2 / 1024)
    assert report.mcnemar_p([True, False], [True, False]) == 1.0  # no discordant pair: no evidence
    assert 0 < report.mcnemar_p([True] * 1100 + [False] * 900, [False] * 1100 + [True] * 900) < 1e-5


def test_paired_interval_is_196_standard_errors():
    a = [True, True, False, True, False, True]
    b = [False, True, False, False, True, True]
    diff = [x - y for x, y in zip(a, b)]
    mean = sum(diff) / len(diff)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diff) / (len(diff) - 1))
    assert report.paired_interval(a, b) == pytest.approx(196 * sd / math.sqrt(len(diff)))


# --------------------------------------------------------------------------- the verdict over seeds
def _stage(test, train=1.0, classes=5, tests=200):
    return {"test_accuracy": test, "train_accuracy": train, "classes": classes, "test_examples": tests,
            "seconds": 1.0, "epochs": 3, "selected_epoch": 3}


def _runs(pairs, **kw):
    return [{"finetune": _stage(ft, **kw), "baseline": _stage(bl, **kw)} for ft, bl in pairs]


def test_gain_is_the_mean_of_per_seed_gains_with_a_t_interval():
    per_seed = _runs([(0.70, 0.60), (0.72, 0.60), (0.74, 0.60)])  # gains 10, 12, 14
    out = report.transfer_verdict(per_seed, [{}] * 3)
    assert [r["transfer_gain"] for r in per_seed] == pytest.approx([10, 12, 14])
    assert out["transfer_gain"] == pytest.approx(12) and out["transfer_gain_sd"] == pytest.approx(2)
    assert out["transfer_gain_ci95"] == pytest.approx(4.303 * 2 / math.sqrt(3), abs=1e-3)
    assert out["transfer_gain_p"] is None
    line = out["verdict"]
    assert line.startswith("transfer helped: +12.0 points")
    assert "mean of 3 seeds" in line and "95% CI ±5.0 over seeds" in line and "200 test examples" in line
    assert out["verdict_warnings"] == [] and "warning" not in line


@pytest.mark.parametrize("pairs,start", [
    ([(0.65, 0.60), (0.55, 0.60), (0.61, 0.60)], "no clear difference: +0.3 points"),
    ([(0.50, 0.60), (0.49, 0.60), (0.52, 0.60)], "transfer hurt: -9.7 points"),
])
def test_verdict_follows_the_interval_over_seeds(pairs, start):
    out = report.transfer_verdict(_runs(pairs), [{}] * len(pairs))
    assert out["verdict"].startswith(start), out["verdict"]


def test_one_seed_uses_mcnemar_and_says_so():
    ft = [True] * 30 + [False] * 10
    bl = [False] * 20 + [True] * 10 + [False] * 10
    per_seed = _runs([(30 / 40, 10 / 40)], tests=40)
    out = report.transfer_verdict(per_seed, [{"finetune": ft, "baseline": bl}])
    assert out["transfer_gain_p"] == pytest.approx(report.mcnemar_p(ft, bl)) and out["transfer_gain_p"] < 0.05
    assert out["transfer_gain_sd"] is None
    assert out["transfer_gain_ci95"] == pytest.approx(report.paired_interval(ft, bl), abs=1e-3)
    assert out["verdict"].startswith("transfer helped: +50.0 points")
    assert "one seed: test sampling only" in out["verdict"] and "40 test examples" in out["verdict"]


def test_one_seed_without_significance_is_no_clear_difference():
    ft = [True, False] * 10
    bl = [False, True] * 9 + [True, True]
    out = report.transfer_verdict(_runs([(0.5, 0.55)], tests=20), [{"finetune": ft, "baseline": bl}])
    assert out["verdict"].startswith("no clear difference") and out["transfer_gain_p"] > 0.05


def test_no_verdict_without_a_tested_baseline():
    runs = [{"finetune": _stage(0.7)}]
    out = report.transfer_verdict(runs, [{}])
    assert out["verdict"] is None and out["transfer_gain"] is None and out["verdict_warnings"] == []


# --------------------------------------------------------------------------- warnings
def test_unconverged_models_are_named_in_the_line_and_the_list():
    per_seed = _runs([(0.70, 0.40), (0.72, 0.42)])
    per_seed[1]["baseline"]["train_accuracy"] = 0.45
    out = report.transfer_verdict(per_seed, [{}] * 2)
    assert len(out["verdict_warnings"]) == 1
    warning = out["verdict_warnings"][0]
    assert "the verdict compares unconverged models" in warning and "baseline 0.45" in warning
    assert "finetune" not in warning
    assert f"warning: {warning}" in out["verdict"]


def test_both_models_at_chance_are_flagged():
    out = report.transfer_verdict(_runs([(0.22, 0.19), (0.21, 0.20)], tests=500), [{}] * 2)
    assert any("within chance level (20% for 5 classes)" in w for w in out["verdict_warnings"])
    # one model clearly above chance: no such warning
    out = report.transfer_verdict(_runs([(0.60, 0.19), (0.61, 0.20)], tests=500), [{}] * 2)
    assert not any("chance" in w for w in out["verdict_warnings"])


def test_random_start_is_flagged():
    out = report.transfer_verdict(_runs([(0.6, 0.5), (0.6, 0.55)]), [{}] * 2, random_start=True)
    assert any("measures nothing" in w and "random init" in w for w in out["verdict_warnings"])


# --------------------------------------------------------------------------- aggregation and table
def test_aggregate_means_sd_and_per_seed_epochs():
    results = [dict(_stage(0.6), val_accuracy=0.5, epochs=30, selected_epoch=30),
               dict(_stage(0.7), val_accuracy=0.7, epochs=50, selected_epoch=50)]
    out = report.aggregate(results)
    assert out["test_accuracy"] == pytest.approx(0.65) and out["test_accuracy_sd"] == pytest.approx(0.0707, abs=1e-4)
    assert out["val_accuracy"] == pytest.approx(0.6) and out["seeds"] == 2 and out["seconds"] == 2.0
    assert out["epochs_per_seed"] == [30, 50] and out["selected_epoch_per_seed"] == [30, 50]
    single = report.aggregate([_stage(0.6)])
    assert single["test_accuracy"] == 0.6 and single["test_accuracy_sd"] is None and "epochs_per_seed" not in single


def test_table_shows_mean_sd_epochs_range_and_validation_size():
    stage = {**_stage(0.65), "dataset": "shapes", "train_examples": 45, "val_examples": 5, "epochs": 40,
             "epochs_auto": True, "select": "last", "test_accuracy_sd": 0.03, "epochs_per_seed": [40, 54]}
    table = report.results_table({"finetune": stage, "seeds": [0, 1], "verdict": "transfer helped: ..."})
    assert "65.0 ± 3.0%" in table and "40-54 auto" in table and "last (val 5)" in table
    assert "mean ± sd over seeds 0, 1" in table and table.endswith("transfer helped: ...")


def test_mcnemar_is_fast_on_a_large_test_set():
    import time

    t0 = time.perf_counter()
    p = report.mcnemar_p([True] * 16_000 + [False] * 15_000, [False] * 16_000 + [True] * 15_000)
    assert time.perf_counter() - t0 < 1.0 and 0 < p < 1e-6
