"""The scores kind: LogME, LEEP, NCE and H-score equal to their authors' code (reference_scores.py) on fixed
features, the empirical scores checked by their definitions, and the contract every score keeps."""

from __future__ import annotations

import numpy as np
import pytest
import reference_scores as ref
import torch

from sftcore._plugins import components
from sftcore._plugins.manager import get_registry
from sftcore.api import Score
from sftcore.errors import ConfigError, PluginError, ScoreUnavailable, SftError

RTOL = 1e-4  # the bound; the measured differences are ~1e-13
BUILTINS = {"logme", "leep", "nce", "hscore", "ncm_accuracy", "logistic_accuracy"}
# (N, D, target classes, source classes, seed): N > D and D > N, and the last class has a single example
CASES = [
    (50, 10, 3, 5, 0),
    (200, 32, 10, 20, 1),
    (120, 16, 6, 12, 2),
    (40, 64, 4, 7, 3),
    (30, 100, 5, 3, 4),
    (300, 256, 20, 50, 5),
]
IDS = [f"N{n}-D{d}-C{c}" for n, d, c, _, _ in CASES]


def score(name: str, **options) -> Score:
    return components.build(get_registry(), "scores", {"name": name, **options}, f"scores[{name}]")


def case(n: int, d: int, c: int, cs: int, seed: int):
    """Features with some class structure, labels with every class present (the last one once), and source
    probabilities (a softmax): as numpy float64 arrays."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(c), rng.integers(0, c - 1, n - c)])
    features = rng.normal(size=(n, d)) + 1.5 * rng.normal(size=(c, d))[labels]
    logits = 2.0 * rng.normal(size=(n, cs)) + rng.normal(size=(c, cs))[labels]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return features, labels, probs / probs.sum(1, keepdims=True)


def ours(name: str, features, labels, probs=None) -> float:
    source = None if probs is None else torch.from_numpy(probs)
    return score(name)(torch.from_numpy(features), torch.from_numpy(labels), source)


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# --------------------------------------------------------------------------- the kind
def test_the_builtin_scores_are_registered_and_built_as_scores():
    registry = get_registry()
    assert {c.name for c in registry.list("scores")["scores"]} >= BUILTINS
    assert {registry.get("scores", name).plugin for name in BUILTINS} == {"sftcore.scores"}
    made = {name: score(name) for name in BUILTINS}
    assert all(isinstance(s, Score) for s in made.values())
    assert {name for name, s in made.items() if s.needs_source} == {"leep", "nce"}


def test_a_third_party_score_is_an_ordinary_plugin(plugin):
    from sftcore import hookimpl

    class MeanNorm(Score):
        """The features' mean norm (a toy score)."""

        def __call__(self, features, labels, source_probs=None) -> float:
            return float(features.norm(dim=1).mean())

    class Plugin:
        @hookimpl
        def register_scores(self, register):
            register("mean_norm", MeanNorm)
            register("not_a_score", lambda: 1.0, "returns a float, not a Score")

    info = plugin(Plugin(), "toy-scores")
    assert info.errors == []
    assert score("mean_norm")(torch.ones(3, 4), torch.tensor([0, 1, 1])) == pytest.approx(2.0)
    with pytest.raises(PluginError, match="returned float, not sftcore.api.Score"):
        score("not_a_score")


def test_the_hook_reference_example_is_a_working_score(plugin):
    import re
    import types
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "hooks.md").read_text(encoding="utf-8")
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "def register_scores(" in b]
    module = types.ModuleType("hooks_md_score")
    exec(compile(code, "docs/hooks.md", "exec"), module.__dict__)
    assert plugin(module, "hooks-md-score").errors == []
    f, y, _ = case(60, 8, 3, 3, 16)
    fisher = score("fisher_ratio")(torch.from_numpy(f), torch.from_numpy(y))
    assert fisher > score("fisher_ratio")(
        torch.from_numpy(np.random.default_rng(0).normal(size=(60, 8))), torch.from_numpy(y)
    )


# --------------------------------------------------------------------------- against the authors' code
@pytest.mark.parametrize("n,d,c,cs,seed", CASES, ids=IDS)
def test_logme_is_thuml_logme_with_the_full_log_determinant(n, d, c, cs, seed):
    f, y, _ = case(n, d, c, cs, seed)
    got = ours("logme", f, y)
    assert relative(got, ref.logme(f, y, pr24=True)) < RTOL
    if n > d:  # full column rank: the padding changes nothing, this is LogME.fit's own number
        assert relative(got, ref.logme(f, y)) < RTOL
    else:  # LogME.fit leaves out D - N eigenvalues of A (thuml/LogME issue #23) and overrates the features
        assert ref.logme(f, y) > got + 0.1
    # TLlib's ICML iteration stops at a 1% change of alpha/beta: the same maximum, less exactly
    assert relative(got, ref.logme_icml(f, y)) < 1e-2


@pytest.mark.parametrize("n,d,c,cs,seed", CASES, ids=IDS)
def test_leep_is_tllibs(n, d, c, cs, seed):
    f, y, p = case(n, d, c, cs, seed)
    assert relative(ours("leep", f, y, p), ref.leep(p, y)) < RTOL


@pytest.mark.parametrize("n,d,c,cs,seed", CASES, ids=IDS)
def test_nce_is_tllibs_on_the_argmax_of_the_source_probabilities(n, d, c, cs, seed):
    f, y, p = case(n, d, c, cs, seed)
    assert relative(ours("nce", f, y, p), ref.nce(p.argmax(1), y)) < RTOL


@pytest.mark.parametrize("n,d,c,cs,seed", CASES, ids=IDS)
def test_hscore_is_tllibs(n, d, c, cs, seed):
    from sftcore_plugins.scores.hscore import hscore

    f, y, _ = case(n, d, c, cs, seed)
    got = hscore(torch.from_numpy(f), torch.from_numpy(y), c)
    assert relative(got, ref.h_score(f, y)) < RTOL
    if d >= n - 1:  # every centred direction is in the features' span: H-score is then classes - 1, for any features
        assert got == pytest.approx(c - 1)
        with pytest.raises(ScoreUnavailable, match=rf"classes - 1 for any features .*\({d} >= {n} - 1\)"):
            ours("hscore", f, y)  # the score says it cannot rank, instead of a tie
    else:
        assert relative(ours("hscore", f, y), ref.h_score(f, y)) < RTOL


def test_rank_deficient_features_keep_to_the_references():
    f, y, p = case(120, 16, 6, 12, 7)
    f = np.concatenate([f, 2.0 * f[:, :5], np.zeros((120, 3))], axis=1)  # repeated and dead features
    assert relative(ours("hscore", f, y), ref.h_score(f, y)) < RTOL
    assert relative(ours("logme", f, y), ref.logme(f, y, pr24=True)) < RTOL


def test_nce_gets_a_source_class_no_example_falls_in_and_leep_a_class_with_no_probability():
    f, y, p = case(60, 8, 4, 6, 8)
    p[:, 5] = 0.0  # source class 5 never predicted: its P(y | z) is 0/0
    p /= p.sum(1, keepdims=True)
    assert relative(ours("nce", f, y, p), ref.nce(p.argmax(1), y)) < RTOL
    with np.errstate(invalid="ignore"):
        assert np.isnan(ref.leep(p, y))  # the reference divides 0 by 0; the class can add nothing
    assert relative(ours("leep", f, y, p), ref.leep(p[:, :5], y)) < RTOL


@pytest.mark.parametrize("name", ["logme", "leep", "nce", "hscore"])
def test_labels_with_gaps_count_only_the_classes_present(name):
    f, y, p = case(80, 12, 4, 6, 9)
    gappy = np.array([0, 3, 4, 9])[y]
    assert ours(name, f, gappy, p) == pytest.approx(ours(name, f, y, p), rel=1e-12)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_float32_features_are_computed_in_float64(name):
    f, y, p = case(60, 8, 4, 6, 10)
    f32, p32 = f.astype(np.float32), p.astype(np.float32)
    got = score(name)(torch.from_numpy(f32), torch.from_numpy(y), torch.from_numpy(p32))
    assert isinstance(got, float)
    assert got == pytest.approx(ours(name, f32.astype(np.float64), y, p32.astype(np.float64)), rel=1e-12)


# --------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("name", ["leep", "nce"])
def test_a_score_that_needs_the_source_says_so_and_is_unavailable_without_it(name):
    f, y, _ = case(30, 4, 3, 3, 11)
    made = score(name)
    assert made.needs_source
    with pytest.raises(ScoreUnavailable, match=rf"score '{name}' needs the source classifier's probabilities"):
        made(torch.from_numpy(f), torch.from_numpy(y), None)
    assert issubclass(ScoreUnavailable, SftError)


@pytest.mark.parametrize("name", ["logme", "hscore", "ncm_accuracy"])
def test_a_score_that_needs_no_source_ignores_it(name):
    f, y, p = case(30, 4, 3, 3, 12)
    assert not score(name).needs_source
    assert ours(name, f, y, p) == ours(name, f, y) == score(name)(torch.from_numpy(f), torch.from_numpy(y), "junk")


def _bad_inputs():
    f, y, p = torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), torch.full((6, 4), 0.25)
    nan = f.clone()
    nan[2, 1] = float("nan")
    return [
        ("logme", (f, y[:5], None), "5 labels for 6 feature rows"),
        ("logme", (f[:1], y[:1], None), "needs at least 2 examples, got 1"),
        ("hscore", (f, torch.zeros(6, dtype=torch.int64), None), "the labels hold 1 class; a score needs at least 2"),
        ("hscore", (nan, y, None), "features hold NaN or infinite values"),
        ("logme", (f[:, 0], y, None), r"features must be 2-D \[N, D\], got shape \[6\]"),
        ("logme", (f.to(torch.int64), y, None), "features must be floating point"),
        ("ncm_accuracy", (f, y.double(), None), "labels must be integer class indices"),
        ("ncm_accuracy", (f, y - 1, None), "labels must be class indices >= 0, got -1"),
        ("leep", (f, y, p[:5]), "source_probs has 5 rows for 6 feature rows"),
        ("leep", (f, y, p * 4), r"source_probs must be probabilities \(rows >= 0 summing to 1\)"),
        ("nce", (f, y, p - 0.25 + torch.eye(6, 4)), "must be probabilities"),
        ("logme", ("features", y, None), "features must be a tensor"),
    ]


@pytest.mark.parametrize("name,args,message", _bad_inputs())
def test_bad_inputs_are_one_sftcore_error_line(name, args, message):
    with pytest.raises(SftError, match=message) as caught:
        score(name)(*args)
    assert type(caught.value) is SftError and str(caught.value).startswith(f"score '{name}': ")
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- the empirical scores
def test_ncm_accuracy_is_leave_one_out_nearest_cosine_class_mean():
    f, y, _ = case(45, 6, 4, 3, 13)
    unit = torch.nn.functional.normalize(torch.from_numpy(f), dim=1)
    right = 0
    for i in range(len(y)):  # the definition, one example at a time
        others = torch.arange(len(y)) != i
        sims = [
            float(unit[i] @ torch.nn.functional.normalize(unit[others & (torch.from_numpy(y) == c)].mean(0), dim=0))
            if ((torch.from_numpy(y) == c) & others).any()
            else -np.inf
            for c in range(4)
        ]
        right += int(np.argmax(sims) == y[i])
    assert ours("ncm_accuracy", f, y) == pytest.approx(right / len(y))


@pytest.mark.parametrize("name", ["ncm_accuracy", "logistic_accuracy"])
def test_the_accuracies_are_1_on_separated_classes_and_near_chance_on_noise(name, one_thread):
    g = torch.Generator().manual_seed(14)
    y = torch.arange(4).repeat(25)
    separated = 10 * torch.eye(4, 8)[y] + torch.randn(100, 8, generator=g)
    assert score(name)(separated, y) == 1.0
    assert 0.0 <= score(name)(torch.randn(100, 8, generator=g), y) <= 0.5


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_logistic_accuracy_trains_when_called_without_gradients(mode, one_thread):
    f, y, _ = case(40, 4, 2, 2, 17)
    expected = ours("logistic_accuracy", f, y)
    with mode():
        features = torch.from_numpy(f).float()  # an inference tensor under inference_mode
        assert score("logistic_accuracy")(features, torch.from_numpy(y)) == pytest.approx(expected, abs=1 / 40)


def test_logistic_accuracy_deals_stratified_folds_from_its_seed():
    from sftcore_plugins.scores.empirical import stratified_folds

    y = torch.tensor([0] * 11 + [1] * 7 + [2] * 2)
    folds = stratified_folds(y, 5, seed=3)
    assert torch.bincount(folds).tolist() == [4, 4, 4, 4, 4]
    assert all(
        torch.bincount(folds[y == c], minlength=5).max() - torch.bincount(folds[y == c], minlength=5).min() <= 1
        for c in range(3)
    )
    assert torch.equal(folds, stratified_folds(y, 5, seed=3)) and not torch.equal(folds, stratified_folds(y, 5, 4))


def test_logistic_accuracy_agrees_with_sklearns_logistic_regression(one_thread):
    """Same folds, same objective (sklearn's C = 1 / (l2 * n_train)): the same accuracy, give or take an
    example near a boundary."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    from sftcore_plugins.scores.empirical import stratified_folds

    f, y, _ = case(150, 10, 3, 3, 15)
    folds = stratified_folds(torch.from_numpy(y), 5, 0).numpy()
    right = 0
    for k in range(5):
        train, test = folds != k, folds == k
        mean, std = f[train].mean(0), f[train].std(0)
        model = sklearn.LogisticRegression(C=1 / (1e-3 * train.sum()), tol=1e-10, max_iter=10_000)
        model.fit((f[train] - mean) / std, y[train])
        right += int((model.predict((f[test] - mean) / std) == y[test]).sum())
    assert abs(ours("logistic_accuracy", f, y) - right / len(y)) <= 2 / len(y)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"folds": 1}, "folds must be an integer from 2 to 100, got 1"),
        ({"l2": -1.0}, "l2 must be a finite number >= 0.0, got -1.0"),
        ({"max_iter": "many"}, "max_iter must be an integer from 1 to 100000, got 'many'"),
        ({"seed": True}, "seed must be an integer"),
    ],
)
def test_logistic_accuracy_options_are_checked(options, message):
    from sftcore.testing import rejects

    assert message in rejects("scores", "logistic_accuracy", **options)
    with pytest.raises(ConfigError, match=rf"config: scores\[x\]\.{message.split()[0]} "):
        components.build(get_registry(), "scores", {"name": "logistic_accuracy", **options}, "scores[x]")
