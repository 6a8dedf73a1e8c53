"""Issue 27: VTAB's few-label protocol, a fixed number of training examples in all (``train_examples``),
stratified by the classes' shares, beside labels_per_class and fraction."""

import pytest
import torch

import sftcore
import tiny
from sftcore._data.batches import few_label_index, stratified_counts
from sftcore.errors import ConfigError


def test_counts_follow_the_classes_shares_by_largest_remainder():
    assert stratified_counts([100, 100, 100], 30) == [10, 10, 10]
    assert stratified_counts([600, 300, 100], 100) == [60, 30, 10]
    assert stratified_counts([10, 10, 10], 10) == [4, 3, 3]  # the remainder to the earlier class
    assert stratified_counts([1000, 1, 1], 3) == [1, 1, 1]  # one per class first
    assert stratified_counts([5, 5], 20) == [5, 5]  # never more than a class has
    counts = stratified_counts([37, 512, 3, 90, 1], 200)
    assert sum(counts) == 200 and all(1 <= c <= n for c, n in zip(counts, [37, 512, 3, 90, 1]))


def test_the_subset_is_stratified_seeded_and_exact():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    idx = few_label_index(labels, seed=3, train_examples=10)
    assert len(idx) == 10 and torch.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert torch.equal(idx, few_label_index(labels, seed=3, train_examples=10))
    assert not torch.equal(idx, few_label_index(labels, seed=4, train_examples=10))
    assert len(few_label_index(labels, seed=0, train_examples=100)) == 100


def test_config_keeps_one_protocol_and_bounds_it():
    from sftcore._config.resolve import resolve

    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["finetune"]["dataset"] = {**cfg["finetune"]["dataset"], "labels_per_class": None, "train_examples": 0}
    with pytest.raises(ConfigError, match=r"finetune.dataset.train_examples must be"):
        resolve(cfg)
    cfg["finetune"]["dataset"].update(train_examples=10, fraction=0.5)
    with pytest.raises(ConfigError, match="sets both fraction and train_examples; keep one"):
        resolve(cfg)
    cfg["finetune"]["dataset"].update(fraction=None)
    assert resolve(cfg)["finetune"]["dataset"]["train_examples"] == 10


@pytest.mark.slow
def test_a_run_trains_on_train_examples_and_says_how_many(tmp_path):
    cfg = tiny.config(pretrain=False, baseline=False)
    cfg["finetune"]["dataset"] = {**cfg["finetune"]["dataset"], "labels_per_class": None, "train_examples": 13}
    cfg["finetune"]["dataset"]["val_fraction"] = 0
    summary = sftcore.run(cfg, out=tmp_path / "r")
    assert summary["finetune"]["train_examples"] == 13
    cfg["finetune"]["dataset"]["train_examples"] = 4  # the target has 5 classes: one each is the least
    with pytest.raises(ConfigError, match=r"train_examples is 4 but must be at least 5, one per class"):
        sftcore.run(cfg, out=tmp_path / "s")
