"""Heads computed from the frozen backbone's features (plugins/heads/fast.py): ``ncm`` and ``logistic``, lp_ft's
``probe_head``, and ``sftcore.api.fit_logistic``, checked against scikit-learn's LogisticRegression."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sftcore
from sftcore.api import fit_logistic
from sftcore.errors import ConfigError
from sftcore.testing import create, tiny_config, train_context

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n_per: int = 20, classes: int = 3, dim: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64) * 2
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + torch.randn(len(y), dim, generator=g, dtype=torch.float64), y


@pytest.mark.parametrize("l2", [1e-3, 0.1, 1.0])
def test_fit_logistic_is_sklearns_multinomial_logistic_regression(l2):
    sklearn = pytest.importorskip("sklearn.linear_model")
    f, y = _blobs()
    w, b = fit_logistic(f, y, 3, l2, max_iter=500)
    ref = sklearn.LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(f.numpy(), y.numpy())
    ours = torch.softmax(f @ w.T + b, 1).numpy()
    # sklearn's coefficients are defined up to a shift shared by the classes: compare the probabilities
    assert abs(ours - ref.predict_proba(f.numpy())).max() < 1e-4
    with torch.inference_mode():  # it still trains when called without gradients
        w2, _ = fit_logistic(f, y, 3, l2, max_iter=500)
    torch.testing.assert_close(w2, w)


def test_ncm_untrained_predicts_the_nearest_class_mean_by_cosine():
    ctx = train_context(classes=3, per_class=6)
    head = create("heads", "ncm").build_head(ctx)
    features, labels = ctx.extract_features()
    unit = nn.functional.normalize(features.double(), dim=1)
    means = torch.stack([nn.functional.normalize(unit[labels == c].mean(0), dim=0) for c in range(3)])
    expected = (unit @ means.T).argmax(1)
    assert torch.equal(head(features).argmax(1), expected)
    assert create("heads", "ncm").usable_untrained and create("heads", "logistic").usable_untrained


def test_logistic_chooses_its_l2_on_the_validation_split_and_folds_the_standardisation_in():
    ctx = train_context(classes=3, per_class=8, seed=1)
    strategy = create("heads", "logistic")
    head = strategy.build_head(ctx)  # no validation split: the default strength
    assert strategy.chosen_l2 == 1e-3
    f, y = ctx.extract_features()
    f = f.double()
    mean, std = f.mean(0), f.std(0, correction=0)
    w, b = fit_logistic((f - mean) / std, y, 3, 1e-3, 200)
    torch.testing.assert_close(head(f.float()).double(), (f - mean) / std @ w.T + b, rtol=1e-4, atol=1e-4)
    val = train_context(classes=3, per_class=4, seed=2)
    ctx._val_batches = val.train_batches  # a validation split: the strength of the grid that does best on it
    chosen = create("heads", "logistic")
    chosen.build_head(ctx)
    from sftcore_plugins.heads.fast import L2_GRID

    assert chosen.chosen_l2 in L2_GRID
    fixed = create("heads", "logistic", l2=0.5)
    fixed.build_head(ctx)
    assert fixed.chosen_l2 == 0.5


@pytest.mark.parametrize("name, options, says", [
    ("logistic", {"l2": -1}, "l2 must be"), ("logistic", {"max_iter": 0}, "max_iter must be"),
    ("ncm", {"scale": 0}, "scale must be"), ("lp_ft", {"probe_head": "svm"}, "probe_head must be one of"),
])
def test_bad_options_are_one_line(name, options, says):
    with pytest.raises(ConfigError, match=says) as err:
        create("heads", name, **options)
    assert "\n" not in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("head, epochs", [("ncm", 0), ("logistic", 0), ("logistic", 2),
                                          ({"name": "lp_ft", "probe_head": "logistic", "probe_epochs": 1}, 2),
                                          ({"name": "lp_ft", "probe_head": "ncm"}, 0)])
def test_a_run_with_a_computed_head(tmp_path, head, epochs):
    summary = sftcore.run(tiny_config(head=head, epochs=epochs, augment=[]), out=tmp_path / "run")
    assert summary["finetune"]["epochs"] == epochs and 0 <= summary["finetune"]["test_accuracy"] <= 1
