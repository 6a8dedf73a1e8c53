"""DELTA: the channel attention it measures, the penalty against a hand computation, its gradient,
resume state, options and a tiny run."""

from __future__ import annotations

import io
import json

import pytest
import torch

from sftcore.errors import ConfigError
from sftcore.testing import create, make_step, run_tiny, tiny_backbone, train_context


def delta(ctx=None, **options):
    """A delta regularizer set up on ``ctx`` (a fresh tiny context by default)."""
    reg = create("regularizers", "delta", **options)
    reg.setup(ctx if ctx is not None else train_context())
    return reg


def move(model: torch.nn.Module, scale: float, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def head_term(ctx, beta: float) -> float:
    return 0.5 * beta * sum(float(p.detach().double().pow(2).sum()) for p in ctx.model.head.parameters())


def by_hand(ctx, reg, step) -> float:
    """alpha * sum_j 1/2 sum_b sum_c C_j W_jc ||FM - FM0||^2 / S_j, one element at a time in float64."""
    with torch.no_grad():
        _, _, start = ctx.start_model().forward_all(step.inputs, feature_maps=True)
    total = 0.0
    for name in ctx.backbone.feature_maps:
        now, then = step.feature_maps[name].detach().double(), start[name].double()
        weights = reg.attention[name].double()
        n, c, h, w = now.shape
        for b in range(n):
            for k in range(c):
                total += 0.5 * c * float(weights[k]) * float((now[b, k] - then[b, k]).pow(2).sum()) / (h * w)
    return reg.alpha * total


# --------------------------------------------------------------------------- attention
def test_attention_is_one_weight_per_channel_summing_to_one_per_layer():
    reg = delta()
    assert list(reg.attention) == ["stage1", "stage2"]
    assert [w.shape for w in reg.attention.values()] == [(4,), (8,)]  # tiny_backbone(width=4): 4 and 8 channels
    for weights in reg.attention.values():
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert (weights > 0).all()
        assert weights.std() > 0  # measured, not uniform


def test_attention_goes_to_the_channel_the_loss_depends_on():
    """stage2 with every output channel but 0 dead: zeroing channel 0 costs loss, the others nothing."""
    ctx = train_context(tiny_backbone(width=4, seed=5), per_class=6)
    with torch.no_grad():
        conv = ctx.model.backbone.stage2[0]
        conv.weight[1:] = 0.0
        conv.bias[1:] = 0.0
    ctx.snapshot()  # the start is the model as edited
    weights = delta(ctx).attention["stage2"]
    assert int(weights.argmax()) == 0
    torch.testing.assert_close(weights[1:], weights[1:2].expand(7))  # the dead channels tie
    # softmax(z / 5) of the z-scores: channel 0 is sqrt(7) standard deviations above the 7 dead ones
    z = torch.tensor([7 ** 0.5] + [-(7 ** -0.5)] * 7, dtype=torch.float64)
    torch.testing.assert_close(weights.double(), torch.softmax(z / 5, 0), rtol=1e-5, atol=1e-6)


def test_attention_head_model_measures_with_the_stage_head():
    """With a zero head every masked loss equals the unmasked one: nothing to tell the channels apart."""
    ctx = train_context()
    with torch.no_grad():
        ctx.model.head.weight.zero_()
    ctx.snapshot()
    reg = delta(ctx, attention_head="model")
    for weights in reg.attention.values():
        torch.testing.assert_close(weights, torch.full_like(weights, 1 / len(weights)))
    assert delta(ctx).attention["stage2"].std() > 0  # the default probe still finds structure


def test_attention_examples_limits_the_measurement():
    ctx = train_context(per_class=8, batch_size=5)
    drawn, batches = [], ctx.train_batches

    def counted():
        for x, y in batches():
            drawn.append(len(x))
            yield x, y

    ctx.train_batches = counted
    delta(ctx, attention_examples=7)
    assert drawn == [5, 5]  # the second batch is cut to 2 examples, the rest never drawn


# --------------------------------------------------------------------------- the penalty
def test_delta_at_the_start_is_only_the_head_term():
    ctx = train_context()
    reg = delta(ctx, alpha=10.0, beta=0.3)
    assert reg.penalty(make_step(ctx)).item() == pytest.approx(head_term(ctx, 0.3), rel=1e-6)
    no_beta = delta(ctx, alpha=10.0, beta=0.0)
    assert no_beta.penalty(make_step(ctx)).item() == 0.0


def test_delta_grows_as_the_backbone_moves_and_matches_the_formula():
    ctx = train_context()
    reg = delta(ctx, alpha=0.5, beta=0.0)
    values = []
    for scale in (0.01, 0.03, 0.1):
        move(ctx.model.backbone, scale)
        step = make_step(ctx)
        value = reg.penalty(step).item()
        assert value == pytest.approx(by_hand(ctx, reg, step), rel=1e-4)
        values.append(value)
    assert 0 < values[0] < values[1] < values[2]


def test_delta_gradient_flows_to_the_backbone_only_through_the_current_model():
    ctx = train_context()
    reg = delta(ctx, alpha=1.0, beta=0.0)
    move(ctx.model.backbone, 0.05)
    reg.penalty(make_step(ctx)).backward()
    backbone = [p.grad for p in ctx.model.backbone.parameters()]
    assert all(g is not None for g in backbone) and sum(float(g.abs().sum()) for g in backbone) > 0
    assert all(p.grad is None for p in ctx.model.head.parameters())  # beta=0: the head is not in the penalty
    assert all(p.grad is None for p in ctx.start_model().parameters())


def test_delta_head_term_gradient_is_beta_times_w():
    ctx = train_context()
    delta(ctx, alpha=0.0, beta=0.4).penalty(make_step(ctx)).backward()
    for p in ctx.model.head.parameters():
        torch.testing.assert_close(p.grad, 0.4 * p.detach())


def test_delta_skips_what_is_frozen():
    ctx = train_context()
    reg = delta(ctx, alpha=1.0, beta=0.2)
    move(ctx.model.backbone, 0.1)
    moved = reg.penalty(make_step(ctx)).item()
    assert moved > head_term(ctx, 0.2) * 1.01
    ctx.model.backbone.requires_grad_(False)  # a linear probe: the maps cannot move, only the head term is left
    assert reg.penalty(make_step(ctx)).item() == pytest.approx(head_term(ctx, 0.2), rel=1e-6)
    ctx.model.head.requires_grad_(False)
    value = reg.penalty(make_step(ctx))
    assert value.item() == 0.0 and not value.requires_grad


def test_delta_layers_option_picks_feature_maps():
    ctx = train_context()
    only2, only1, both = (delta(ctx, layers=layers, beta=0.0) for layers in (["stage2"], ["stage1"], None))
    assert list(only2.attention) == ["stage2"] and list(both.attention) == ["stage1", "stage2"]
    move(ctx.model.backbone, 0.05)
    step = make_step(ctx)
    parts = only1.penalty(step).item(), only2.penalty(step).item()
    assert min(parts) > 0
    assert both.penalty(step).item() == pytest.approx(sum(parts), rel=1e-5)


# --------------------------------------------------------------------------- resume
def test_state_dict_round_trip_restores_the_measured_attention():
    ctx = train_context()
    reg = delta(ctx)
    move(ctx.model.backbone, 0.05)
    step = make_step(ctx)
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)  # as the stage checkpoint does
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other_ctx = train_context(tiny_backbone(seed=7), seed=7)  # another model: other attention
    other = delta(other_ctx)
    assert any(not torch.allclose(other.attention[n], reg.attention[n]) for n in reg.attention)
    other.load_state_dict(state)
    for name, weights in reg.attention.items():
        assert torch.equal(other.attention[name], weights)
    fresh = create("regularizers", "delta")
    fresh.setup(ctx)
    fresh.load_state_dict(state)
    assert fresh.penalty(step).item() == pytest.approx(reg.penalty(step).item(), rel=1e-6)


# --------------------------------------------------------------------------- options and errors
def test_delta_defaults_are_the_published_ones():
    reg = create("regularizers", "delta")
    assert (reg.alpha, reg.beta, reg.temperature, reg.attention_examples) == (0.01, 0.01, 5.0, 320)
    assert reg.attention_head == "probe" and reg.layers is None and reg.needs_feature_maps


@pytest.mark.parametrize("options, message", [
    ({"alpha": -0.1}, "alpha must be a number >= 0"),
    ({"beta": True}, "beta must be a number >= 0"),
    ({"temperature": 0}, "temperature must be a number > 0"),
    ({"attention_examples": 0}, "attention_examples must be an integer >= 1"),
    ({"attention_head": "fresh"}, "attention_head must be 'probe'"),
    ({"layers": "stage1"}, "layers must be a list of feature-map names"),
    ({"aplha": 1.0}, "did you mean 'alpha'"),
])
def test_delta_options_are_checked_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        create("regularizers", "delta", **options)
    assert "\n" not in str(err.value)


def test_delta_setup_errors_name_the_fix():
    with pytest.raises(ConfigError, match=r"layers \['stage3'\] are not feature maps .* choose from "
                                          r"\['stage1', 'stage2'\]"):
        delta(layers=["stage3"])
    backbone = tiny_backbone()
    backbone.feature_maps = []
    with pytest.raises(ConfigError, match="needs a backbone that declares feature_maps.*use l2_sp"):
        delta(train_context(backbone))


# --------------------------------------------------------------------------- end to end
def test_delta_in_a_tiny_run(tmp_path):
    summary = run_tiny(tmp_path / "run", regularizers=["delta"], epochs=2)
    assert summary["finetune"]["regularizers"] == ["delta"]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["penalty"] > 0 for r in records)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "finetune-last.pt", weights_only=True)
    [state] = saved["regularizers"]
    assert sorted(state["attention"]) == ["stage1", "stage2"]  # lenet's feature maps
    assert [len(w) for w in state["attention"].values()] == [6, 16]
