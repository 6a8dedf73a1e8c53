"""Two cheap empirical scores: accuracies of simple classifiers on the features, measured without training a
network. Unlike LogME or H-score they are in [0, 1] and read directly as "this much is linearly
separable", at the price of some noise (leave-one-out, k folds)."""

from __future__ import annotations

import torch

from sftcore.api import MAX_SEED, Score, check_option, fit_logistic

from ._inputs import prepare


class NCMAccuracy(Score):
    """Leave-one-out accuracy of a nearest-class-mean classifier with cosine similarity: each example, L2
    normalised, is assigned the class whose mean of normalised features (without the example itself) is
    most similar. An example alone in its class can only be wrong. In [0, 1]; higher is better."""

    def __call__(self, features, labels, source_probs=None) -> float:
        x = prepare("ncm_accuracy", features, labels)
        return ncm_accuracy(x.features, x.labels, x.classes)


def ncm_accuracy(f: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    """Leave-one-out NCM accuracy of float64 features ``[N, D]`` for labels ``y`` in [0, classes)."""
    unit = torch.nn.functional.normalize(f, dim=1)
    onehot = torch.nn.functional.one_hot(y, classes).to(f.dtype)
    sums = onehot.T @ unit  # [C, D]: cosine similarity ignores the 1/count of a mean
    sims = unit @ torch.nn.functional.normalize(sums, dim=1).T  # [N, C]
    own = sums[y] - unit  # each example's class without it
    own_sim = (unit * torch.nn.functional.normalize(own, dim=1)).sum(1)
    alone = onehot.sum(0)[y] == 1
    sims[torch.arange(len(y)), y] = torch.where(alone, torch.tensor(-torch.inf, dtype=f.dtype), own_sim)
    return float((sims.argmax(1) == y).to(f.dtype).mean())


class LogisticAccuracy(Score):
    """Stratified ``folds``-fold cross-validated accuracy of a multinomial logistic regression on the features,
    standardised with each training fold's mean and deviation, with ``l2``/2 * ||W||^2 (bias not penalised)
    added to the mean cross-entropy, fitted by L-BFGS (at most ``max_iter`` iterations) from zero weights.
    ``seed`` draws the folds, so the score is reproducible. In [0, 1]; higher is better."""

    def __init__(self, folds: int = 5, l2: float = 1e-3, max_iter: int = 100, seed: int = 0):
        self.folds = check_option("folds", folds, int, low=2, high=100)
        self.l2 = check_option("l2", l2, float, low=0.0)
        self.max_iter = check_option("max_iter", max_iter, int, low=1, high=100_000)
        self.seed = check_option("seed", seed, int, low=0, high=MAX_SEED)

    def __call__(self, features, labels, source_probs=None) -> float:
        with torch.inference_mode(False), torch.enable_grad():  # it trains, even when called under no_grad
            x = prepare("logistic_accuracy", features, labels)
            f, y = x.features.clone(), x.labels.clone()  # tensors made in inference mode cannot train
            fold = stratified_folds(y, self.folds, self.seed)
            correct = 0
            for k in range(self.folds):
                test = fold == k
                if bool(test.any()):
                    correct += int((self._fit_predict(f[~test], y[~test], f[test], x.classes) == y[test]).sum())
        return correct / len(y)

    def _fit_predict(self, f: torch.Tensor, y: torch.Tensor, f_test: torch.Tensor, classes: int) -> torch.Tensor:
        """Fit on (f, y), predict f_test's classes."""
        mean, std = f.mean(0), f.std(0, correction=0).clamp_min(1e-12)
        f, f_test = (f - mean) / std, (f_test - mean) / std
        weight, bias = fit_logistic(f, y, classes, self.l2, self.max_iter)
        return (f_test @ weight.T + bias).argmax(1)


def stratified_folds(y: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """A fold in [0, folds) per example: shuffled within each class (from ``seed``), then dealt out in turn,
    so every fold gets each class's share and the folds' sizes differ by at most one."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=g)
    order = order[torch.sort(y[order], stable=True).indices]  # by class, shuffled within it
    fold = torch.empty_like(y)
    fold[order] = torch.arange(len(y)) % folds
    return fold
