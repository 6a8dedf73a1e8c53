"""DELTA: the channel attention it measures and the class-balanced sample it measures on, the penalty
against a hand computation, its gradient, the maps it reads (any submodule; conv3 on a timm ResNet),
resume state, options and a tiny run."""

from __future__ import annotations

import io
import json

import pytest
import torch

import sft_example_plugin.delta as delta_module
from sftcore.api import BackboneContext
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


def measured_labels(monkeypatch) -> list:
    """Spy on channel_importance: the labels of every sample DELTA measures attention on, one tensor per setup."""
    seen, real = [], delta_module.channel_importance

    def spy(backbone, head, layers, batches, limit):
        batches = list(batches)
        seen.append(torch.cat([y for _, y in batches]))
        return real(backbone, head, layers, batches, limit)

    monkeypatch.setattr(delta_module, "channel_importance", spy)
    return seen


def test_attention_examples_limits_the_measurement(monkeypatch):
    """Was: only the first 2 batches drawn (the first 7 examples). A class-balanced draw needs every
    example once, so now the whole training data is read (no forward pass) and 7 of them measured."""
    ctx = train_context(per_class=8, batch_size=5)
    drawn, batches, measured = [], ctx.train_batches, measured_labels(monkeypatch)

    def counted():
        for x, y in batches():
            drawn.append(len(x))
            yield x, y

    ctx.train_batches = counted
    delta(ctx, attention_examples=7, attention_head="model")
    assert drawn == [5, 5, 5, 5, 4]  # one pass over the 24 examples
    [labels] = measured
    assert sorted(labels.bincount(minlength=3).tolist()) == [2, 2, 3]  # 7 over 3 classes


def test_attention_is_measured_on_every_class_in_equal_numbers(monkeypatch):
    """train_context stores its examples class by class, as image folders do."""
    ctx = train_context(classes=4, per_class=8, batch_size=8)
    first = torch.cat([y for _, y in ctx.train_batches()])[:8]
    assert first.bincount(minlength=4).tolist() == [8, 0, 0, 0]  # the old sample: the first 8, one class
    measured = measured_labels(monkeypatch)
    delta(ctx, attention_examples=8)
    delta(ctx, attention_examples=12)
    assert [labels.bincount(minlength=4).tolist() for labels in measured] == [[2, 2, 2, 2], [3, 3, 3, 3]]


def test_attention_sample_does_not_depend_on_the_order_of_the_batches(monkeypatch):
    ctx = train_context(classes=4, per_class=8, batch_size=8)
    data = list(ctx.train_batches())
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    ctx.train_batches = lambda: iter(zip(x[order].split(8), y[order].split(8)))  # shuffled, as the runner yields
    measured = measured_labels(monkeypatch)
    delta(ctx, attention_examples=8)
    assert measured[0].bincount(minlength=4).tolist() == [2, 2, 2, 2]


def test_balanced_sample_takes_a_quota_per_class_drawn_at_random():
    labels = torch.arange(4).repeat_interleave(10)  # class by class
    inputs = torch.arange(40.0).unsqueeze(1)  # an example's value is its index
    batches = lambda: zip(inputs.split(6), labels.split(6))  # noqa: E731
    picks = torch.zeros(40)
    for seed in range(200):
        x, y, batch_size = delta_module.balanced_sample(batches(), 4, 8, torch.Generator().manual_seed(seed))
        assert y.bincount(minlength=4).tolist() == [2, 2, 2, 2] and batch_size == 6
        assert torch.equal(labels[x.squeeze(1).long()], y)  # inputs and labels stay paired
        picks[x.squeeze(1).long()] += 1
    assert picks.min() >= 20 and picks.max() <= 60  # uniform within each class: 200 * 2/10 = 40 each
    x1, _, _ = delta_module.balanced_sample(batches(), 4, 8, torch.Generator().manual_seed(0))
    x2, _, _ = delta_module.balanced_sample(batches(), 4, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x1, x2)  # seeded


def test_balanced_sample_small_classes_and_fewer_examples_than_classes():
    labels = torch.tensor([0] + [1] * 10 + [2] * 10)
    inputs = torch.arange(21.0).unsqueeze(1)
    x, y, _ = delta_module.balanced_sample(zip(inputs.split(4), labels.split(4)), 3, 9, torch.Generator())
    assert y.bincount(minlength=3).tolist() == [1, 3, 3]  # all of the small class, no more of the others
    labels = torch.arange(5).repeat(4)
    for seed in range(5):
        _, y, _ = delta_module.balanced_sample(zip(torch.zeros(20, 1).split(4), labels.split(4)), 5, 2,
                                               torch.Generator().manual_seed(seed))
        assert len(y) == 2 and len(set(y.tolist())) == 2  # one each from two different classes
    with pytest.raises(ConfigError, match="training data is empty"):
        delta_module.balanced_sample(iter([]), 3, 9, torch.Generator())


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


def test_delta_layers_may_name_any_submodule():
    """stage2.0 is the conv inside stage2, before its ReLU: not a declared map, recorded on request."""
    ctx = train_context()
    reg = delta(ctx, layers=["stage2.0"], beta=0.0)
    assert list(reg.attention) == ["stage2.0"] and reg.attention["stage2.0"].shape == (8,)
    seen = {}
    ctx.model.backbone.stage2[0].register_forward_hook(lambda _m, _i, out: seen.__setitem__("conv", out))
    step = make_step(ctx)
    assert step.feature_maps["stage2.0"] is seen["conv"]
    assert reg.penalty(step).item() == 0.0
    move(ctx.model.backbone, 0.05)
    assert reg.penalty(make_step(ctx)).item() > 0


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
    ({"layers": ["stage1", ""]}, "layers must be a list of feature-map names"),
    ({"aplha": 1.0}, "did you mean 'alpha'"),
])
def test_delta_options_are_checked_in_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as err:
        create("regularizers", "delta", **options)
    assert "\n" not in str(err.value)


def test_delta_setup_errors_name_the_fix():
    # layers may now name any submodule, so the error suggests close names rather than listing the declared maps
    with pytest.raises(ConfigError, match=r"layers: the backbone has no submodule 'stage3' \(did you mean "
                                          r"'stage2' or 'stage1'.*declared feature maps: \['stage1', 'stage2'\]"
                                          r".*bottleneck_conv3") as err:
        delta(layers=["stage1", "stage3"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="bottleneck_conv3 found no conv3 .* name the submodules in layers"):
        delta(layers="bottleneck_conv3")
    backbone = tiny_backbone()
    backbone.feature_maps = []
    with pytest.raises(ConfigError, match="needs a backbone that declares feature_maps.*use l2_sp"):
        delta(train_context(backbone))
    assert list(delta(train_context(backbone), layers=["stage2"]).attention) == ["stage2"]  # named: fine


# --------------------------------------------------------------------------- the authors' maps on a timm ResNet
RESNET50_CONV3 = ["layer1.2.conv3", "layer2.3.conv3", "layer3.5.conv3", "layer4.2.conv3"]  # TLlib's return_layers


def timm_resnet(model: str, **options):
    return create("backbones", "timm", BackboneContext(seed=0), model=model, pretrained=False, **options)


def test_bottleneck_conv3_is_the_authors_choice_on_resnet50():
    """The README's numbers: 3,840 channels in the four conv3 maps, 3,904 in the declared ones (act1 adds 64)."""
    backbone = timm_resnet("resnet50")
    assert backbone.feature_maps == ["act1", "layer1", "layer2", "layer3", "layer4"]
    assert delta_module.resolve_layers(backbone, "bottleneck_conv3") == RESNET50_CONV3
    channels = [backbone.features.get_submodule(n).out_channels for n in RESNET50_CONV3]
    assert channels == [256, 512, 1024, 2048] and sum(channels) == 3840
    assert sum(info["num_chs"] for info in backbone.features.feature_info) == 3904


def test_delta_on_the_bottleneck_conv3_of_a_timm_resnet():
    """A narrow resnet26 (2 bottlenecks a stage): the maps are conv3's outputs, before bn3 and the residual
    add; with BatchNorm in eval mode the model at the start gives exactly 0; hooks are installed once."""
    backbone = timm_resnet("resnet26", img_size=32,
                           model_args={"channels": [4, 8, 8, 8], "stem_width": 8, "zero_init_last": False})
    ctx = train_context(backbone, classes=3, per_class=2, batch_size=6)
    reg = delta(ctx, layers="bottleneck_conv3", beta=0.0, attention_examples=6)
    names = ["layer1.1.conv3", "layer2.1.conv3", "layer3.1.conv3", "layer4.1.conv3"]
    assert reg.maps == names and [len(reg.attention[n]) for n in names] == [16, 32, 32, 32]
    assert all(w.std() > 0 for w in reg.attention.values())  # measured through conv3, not uniform
    reg.setup(ctx)  # a second setup asks to record the same names again
    seen = {}
    for name in names:
        ctx.model.backbone.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out))
    ctx.model.eval()
    step = make_step(ctx)
    for name in names:
        assert step.feature_maps[name] is seen[name]
    _, _, start_maps = step.start_outputs()
    assert sorted(start_maps) == sorted([*backbone.feature_maps, *names])
    assert reg.penalty(step).item() == 0.0
    for model in (ctx.model, ctx.start_model()):  # one recording hook each (plus the test's own on ctx.model)
        hooks = [len(model.backbone.get_submodule(n)._forward_hooks) for n in names]
        assert hooks == ([2] * 4 if model is ctx.model else [1] * 4)
    move(ctx.model.backbone, 0.01)
    assert reg.penalty(make_step(ctx)).item() > 0


def test_record_feature_maps_checks_names_and_reaches_a_later_copy():
    ctx = train_context(snapshot=False)
    with pytest.raises(ConfigError, match=r"'stage2\.9' is not a submodule of the backbone \(did you mean"):
        ctx.model.record_feature_maps(["stage2.9"])
    ctx.model.record_feature_maps(["stage1.0", "stage2", "stage1.0"])  # stage2 is declared: already recorded
    assert ctx.model.forward_all(torch.zeros(1, 3, 8, 8), feature_maps=True)[2].keys() == {"stage1", "stage2",
                                                                                           "stage1.0"}
    ctx.snapshot()
    _, _, maps = ctx.start_model().forward_all(torch.zeros(1, 3, 8, 8), feature_maps=True)
    assert sorted(maps) == ["stage1", "stage1.0", "stage2"]


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
