"""BSS against singular values computed by hand, its gradient, precision, options and a tiny run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sftcore.errors import ConfigError
from sftcore.testing import create, make_step, run_tiny, train_context


def orthonormal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def with_singular_values(values, rows: int = 6, cols: int = 5) -> torch.Tensor:
    """A rows x cols matrix U diag(values) V^T whose singular values are exactly ``values``."""
    s = torch.zeros(rows, cols, dtype=torch.float64)
    s[range(len(values)), range(len(values))] = torch.tensor(values, dtype=torch.float64)
    return orthonormal(rows, 1) @ s @ orthonormal(cols, 2).T


def step_with(features: torch.Tensor):
    return dataclasses.replace(make_step(train_context()), features=features)


def test_bss_is_eta_times_the_smallest_squared_singular_value():
    features = with_singular_values([4.0, 3.0, 2.0, 1.5, 0.5]).float()
    value = create("regularizers", "bss", eta=0.1).penalty(step_with(features))
    assert value.ndim == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(0.1 * 0.5 ** 2, rel=1e-4)
    two = create("regularizers", "bss", eta=0.1, k=2).penalty(step_with(features))
    assert two.item() == pytest.approx(0.1 * (0.5 ** 2 + 1.5 ** 2), rel=1e-4)


def test_bss_defaults_are_the_published_ones():
    reg = create("regularizers", "bss")
    assert (reg.eta, reg.k) == (0.001, 1)
    assert not reg.needs_feature_maps
    features = with_singular_values([3.0, 2.0, 1.0, 0.7, 0.25]).float()
    assert reg.penalty(step_with(features)).item() == pytest.approx(0.001 * 0.25 ** 2, rel=1e-4)


def test_bss_gradient_shrinks_the_smallest_direction():
    """d(eta * s_min^2)/dF = 2 eta s_min u v^T, for the singular pair (u, v) of s_min."""
    base = with_singular_values([4.0, 3.0, 2.0, 1.5, 0.5])
    features = base.float().requires_grad_(True)
    create("regularizers", "bss", eta=0.2).penalty(step_with(features)).backward()
    u, s, vh = torch.linalg.svd(base)
    expected = 2 * 0.2 * s[-1] * torch.outer(u[:, len(s) - 1], vh[-1])
    torch.testing.assert_close(features.grad.double(), expected, rtol=1e-4, atol=1e-6)


def test_bss_gradient_reaches_the_backbone_and_not_the_head():
    ctx = train_context()
    step = make_step(ctx)
    create("regularizers", "bss", eta=1.0).penalty(step).backward()
    grads = {n: p.grad for n, p in ctx.model.named_parameters()}
    assert all(grads[n] is None for n in grads if n.startswith("head."))
    backbone = [g for n, g in grads.items() if n.startswith("backbone.")]
    assert backbone and all(g is not None for g in backbone)
    assert sum(float(g.abs().sum()) for g in backbone) > 0


def test_bss_runs_the_svd_in_float32_under_autocast():
    features = with_singular_values([4.0, 3.0, 2.0, 1.5, 0.5]).to(torch.bfloat16)
    exact = 0.1 * torch.linalg.svdvals(features.double())[-1] ** 2  # of the bf16-rounded matrix
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = create("regularizers", "bss", eta=0.1).penalty(step_with(features))
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(exact.item(), rel=1e-4)


def test_bss_a_batch_of_at_most_k_examples_adds_nothing():
    one = torch.tensor([[3.0, 4.0, 0.0]])  # its one singular value, 5, is the whole signal
    assert create("regularizers", "bss", eta=1.0).penalty(step_with(one)).item() == 0.0
    two = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert create("regularizers", "bss", eta=1.0, k=2).penalty(step_with(two)).item() == 0.0
    assert create("regularizers", "bss", eta=1.0, k=1).penalty(step_with(two)).item() == pytest.approx(4.0)


@pytest.mark.parametrize("options, message", [
    ({"eta": -1.0}, "eta must be a number >= 0, got -1.0"),
    ({"eta": "big"}, "eta must be a number >= 0, got 'big'"),
    ({"k": 0}, "k must be an integer >= 1, got 0"),
    ({"k": 1.5}, "k must be an integer >= 1, got 1.5"),
    ({"kk": 2}, "has no option 'kk'"),
])
def test_bss_options_are_checked_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        create("regularizers", "bss", **options)
    assert "\n" not in str(err.value)


def test_bss_in_a_tiny_run(tmp_path):
    summary = run_tiny(tmp_path / "run", regularizers=[{"name": "bss", "eta": 0.01, "k": 2}])
    assert summary["finetune"]["regularizers"] == ["bss"]
    [record] = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["penalty"] > 0
