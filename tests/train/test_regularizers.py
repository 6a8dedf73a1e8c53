"""Regularizers and what they see: L2 and L2-SP computed by hand, the stage-start snapshot
(w0, ``TrainContext.start_model``, ``Step.start_outputs``) and feature-map recording.

Everything runs on tiny models on the CPU: lenet (conv/linear only) and a small conv+BatchNorm
net for the "kernels only, no norm layers or biases" default.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sftcore.api import Backbone, BackboneContext, Step, TrainContext, freeze
from sftcore._data.batches import Batches, BatchTransform
from sftcore.errors import ConfigError
from sftcore._train.model import TransferModel
from sftcore._plugins.manager import get_registry
from sftcore._train.loop import MetricsLog, Performance, Stage, StageParts, make_optimizer

CPU = torch.device("cpu")
LENET_WEIGHTS = ["backbone.stage1.0.weight", "backbone.stage2.0.weight", "backbone.fc1.0.weight",
                 "backbone.fc2.0.weight"]
LENET_BIASES = [n.replace("weight", "bias") for n in LENET_WEIGHTS]


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- helpers
def lenet_backbone(img_size: int = 32, in_chans: int = 3) -> Backbone:
    torch.manual_seed(0)
    return get_registry().get("backbones", "lenet").create(BackboneContext(seed=0), in_chans=in_chans,
                                                            img_size=img_size)


def bn_backbone() -> Backbone:
    """conv -> BatchNorm -> ReLU -> pool -> linear: kernels, biases and norm parameters."""
    torch.manual_seed(1)
    features = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), bn=nn.BatchNorm2d(4), relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 6),
    ))
    return Backbone(features=features, num_features=6, input_size=(3, 8, 8), blocks=["conv", "bn", "fc"],
                    feature_maps=["conv", "bn"])


def make_model(backbone: Backbone, num_classes: int = 3, seed: int = 2) -> TransferModel:
    torch.manual_seed(seed)
    return TransferModel(backbone, nn.Linear(backbone.num_features, num_classes))


def make_ctx(model: TransferModel, classes=("a", "b", "c")) -> TrainContext:
    ctx = TrainContext(stage="finetune", backbone=model.spec, classes=list(classes), epochs=2, device=CPU,
                       seed=0, extract_features=lambda: (torch.zeros(0), torch.zeros(0)),
                       train_batches=lambda: iter(()))
    ctx.model = model
    return ctx


def regularizer(name: str, **options):
    return get_registry().get("regularizers", name).create(**options)


def step_for(ctx: TrainContext, x: torch.Tensor | None = None, feature_maps: bool = False) -> Step:
    if x is None:
        shape = ctx.model.spec.input_size
        x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(5))
    logits, features, maps = ctx.model.forward_all(x, feature_maps=feature_maps)
    return Step(ctx, 0, x, torch.zeros(len(x), dtype=torch.long), logits, features, maps)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def sq(t: torch.Tensor) -> float:
    return float(t.detach().double().pow(2).sum())


def perturb(model: nn.Module, seed: int = 3, scale: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


# --------------------------------------------------------------------------- L2
def test_l2_default_covers_conv_and_linear_kernels_only():
    model = make_model(lenet_backbone())
    ctx = make_ctx(model)
    reg = regularizer("l2", alpha=0.3)
    reg.setup(ctx)
    p = params(model)
    expected = 0.5 * 0.3 * sum(sq(p[n]) for n in LENET_WEIGHTS + ["head.weight"])
    value = reg.penalty(step_for(ctx))
    assert value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-5)
    # the biases really are left out: they are not zero, so including them would change the value
    with_biases = expected + 0.5 * 0.3 * sum(sq(p[n]) for n in LENET_BIASES + ["head.bias"])
    assert with_biases > expected * 1.0001


def test_l2_params_all_covers_every_parameter():
    model = make_model(bn_backbone())
    ctx = make_ctx(model)
    reg = regularizer("l2", alpha=0.2, params="all")
    reg.setup(ctx)
    perturb(model)  # BatchNorm starts at weight 1, bias 0: make every parameter count
    expected = 0.5 * 0.2 * sum(sq(p) for p in model.parameters())
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(expected, rel=1e-5)


def test_l2_match_glob_over_model_parameter_names():
    model = make_model(lenet_backbone())
    ctx = make_ctx(model)
    p = params(model)
    head_only = regularizer("l2", alpha=1.0, match="head.*")
    head_only.setup(ctx)
    assert head_only.penalty(step_for(ctx)).item() == pytest.approx(0.5 * sq(p["head.weight"]), rel=1e-5)
    stage1_all = regularizer("l2", alpha=2.0, params="all", match="backbone.stage1.*")
    stage1_all.setup(ctx)
    expected = 0.5 * 2.0 * (sq(p["backbone.stage1.0.weight"]) + sq(p["backbone.stage1.0.bias"]))
    assert stage1_all.penalty(step_for(ctx)).item() == pytest.approx(expected, rel=1e-5)
    fc = regularizer("l2", alpha=1.0, match="backbone.fc*")
    fc.setup(ctx)
    expected = 0.5 * (sq(p["backbone.fc1.0.weight"]) + sq(p["backbone.fc2.0.weight"]))
    assert fc.penalty(step_for(ctx)).item() == pytest.approx(expected, rel=1e-5)
    nothing = regularizer("l2", alpha=1.0, match="no.such.*")
    nothing.setup(ctx)
    value = nothing.penalty(step_for(ctx))
    assert value.item() == 0.0 and not value.requires_grad


def test_l2_skips_frozen_parameters():
    model = make_model(lenet_backbone())
    ctx = make_ctx(model)
    reg = regularizer("l2", alpha=0.5)
    reg.setup(ctx)
    full = reg.penalty(step_for(ctx)).item()
    freeze(model.backbone)
    head = 0.5 * 0.5 * sq(model.head.weight)
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(head, rel=1e-5)
    assert head < full
    freeze(model)
    value = reg.penalty(step_for(ctx))
    assert value.item() == 0.0 and not value.requires_grad
    # the frozen state is read on every call, not at setup
    model.head.weight.requires_grad_(True)
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(head, rel=1e-5)


def test_l2_gradient_is_alpha_times_w():
    alpha = 0.7
    model = make_model(lenet_backbone())
    ctx = make_ctx(model)
    reg = regularizer("l2", alpha=alpha)
    reg.setup(ctx)
    reg.penalty(step_for(ctx)).backward()
    for name, p in model.named_parameters():
        if name in LENET_WEIGHTS or name == "head.weight":
            torch.testing.assert_close(p.grad, alpha * p.detach())
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("params_opt", ["weights", "all"])
def test_l2_with_sgd_is_weight_decay(params_opt):
    """One SGD step on loss + l2 equals one SGD step on loss with weight_decay=alpha (no momentum).

    ``make_optimizer`` never decays 1-D parameters, which is exactly what ``params: weights`` leaves
    out; for ``params: all`` the reference decays every parameter with plain torch SGD.
    """
    alpha, lr = 0.05, 0.1
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1])
    a = make_model(lenet_backbone())
    b = copy.deepcopy(a)
    before = copy.deepcopy(a)

    ctx = make_ctx(a)
    reg = regularizer("l2", alpha=alpha, params=params_opt)
    reg.setup(ctx)
    opt_a = make_optimizer([{"params": list(a.parameters())}],
                           {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False})
    step = step_for(ctx, x)
    loss = nn.functional.cross_entropy(step.logits, y) + reg.penalty(step)
    loss.backward()
    opt_a.step()

    if params_opt == "weights":
        opt_b = make_optimizer([{"params": list(b.parameters())}],
                               {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": alpha, "nesterov": False})
    else:
        opt_b = torch.optim.SGD(b.parameters(), lr=lr, weight_decay=alpha)
    nn.functional.cross_entropy(b(x), y).backward()
    opt_b.step()

    for (n, pa), (_, pb), (_, p0) in zip(a.named_parameters(), b.named_parameters(), before.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7, msg=n)
        assert not torch.equal(pa, p0), n  # the step really moved every parameter
    # and the decay term mattered: without it the step lands elsewhere
    c = copy.deepcopy(before)
    torch.optim.SGD(c.parameters(), lr=lr).zero_grad()
    nn.functional.cross_entropy(c(x), y).backward()
    with torch.no_grad():
        for p in c.parameters():
            p.sub_(lr * p.grad)
    assert not torch.allclose(c.head.weight, a.head.weight, rtol=1e-6, atol=1e-7)


def test_l2_options_are_checked():
    with pytest.raises(ConfigError, match="params must be 'weights'"):
        regularizer("l2", params="biases")
    with pytest.raises(ConfigError, match="has no option 'beta'"):
        regularizer("l2", beta=1.0)
    reg = regularizer("l2")
    assert reg.alpha == 0.01 and reg.params == "weights" and reg.match is None
    assert not reg.needs_feature_maps


def started_l2sp(backbone, **options):
    """A model, its context snapshotted at the start, and an l2_sp set up on it."""
    model = make_model(backbone)
    ctx = make_ctx(model)
    ctx.snapshot()
    reg = regularizer("l2_sp", **options)
    reg.setup(ctx)
    return model, ctx, reg


# --------------------------------------------------------------------------- L2-SP
def test_l2sp_value_by_hand():
    alpha, beta = 0.3, 0.05
    model, ctx, reg = started_l2sp(lenet_backbone(), alpha=alpha, beta=beta)
    w0 = {n: t.clone() for n, t in ctx.start_state().items()}
    perturb(model, scale=0.05)
    p = params(model)
    sp = sum(sq(p[n] - w0[n]) for n in LENET_WEIGHTS)
    expected = 0.5 * alpha * sp + 0.5 * beta * sq(p["head.weight"])
    value = reg.penalty(step_for(ctx))
    assert value.dtype == torch.float32 and value.ndim == 0
    assert value.item() == pytest.approx(expected, rel=1e-5)
    assert sp > 0


def test_l2sp_at_the_start_is_only_the_head_term():
    model, ctx, reg = started_l2sp(lenet_backbone(), alpha=10.0, beta=0.2)
    head = 0.5 * 0.2 * sq(model.head.weight)
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(head, rel=1e-6)
    no_beta = regularizer("l2_sp", alpha=10.0, beta=0.0)
    no_beta.setup(ctx)
    assert no_beta.penalty(step_for(ctx)).item() == pytest.approx(0.0, abs=1e-12)


def test_l2sp_gradient():
    alpha, beta = 0.4, 0.1
    model, ctx, reg = started_l2sp(lenet_backbone(), alpha=alpha, beta=beta)
    w0 = {n: t.clone() for n, t in ctx.start_state().items()}
    perturb(model)
    reg.penalty(step_for(ctx)).backward()
    for name, p in model.named_parameters():
        if name in LENET_WEIGHTS:
            torch.testing.assert_close(p.grad, alpha * (p.detach() - w0[name]))
        elif name == "head.weight":
            torch.testing.assert_close(p.grad, beta * p.detach())
        else:
            assert p.grad is None, name


def test_l2sp_w0_is_the_snapshot_not_a_live_view():
    alpha = 2.0
    model, ctx, reg = started_l2sp(lenet_backbone(), alpha=alpha, beta=0.0)
    start = ctx.start_state()
    before = {n: t.clone() for n, t in start.items()}
    with torch.no_grad():
        for n in LENET_WEIGHTS:
            params(model)[n].add_(0.5)  # in place: a live view of the model would follow
    n_elems = sum(params(model)[n].numel() for n in LENET_WEIGHTS)
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(0.5 * alpha * n_elems * 0.25, rel=1e-5)
    for n, t in ctx.start_state().items():
        assert torch.equal(t, before[n]), n
    assert set(start) == {n for n, _ in model.named_parameters()}


def test_l2sp_snapshots_on_first_use_when_nobody_did():
    model = make_model(lenet_backbone())
    ctx = make_ctx(model)
    reg = regularizer("l2_sp", alpha=1.0, beta=0.0)
    reg.setup(ctx)
    assert reg.penalty(step_for(ctx)).item() == 0.0
    perturb(model)
    assert reg.penalty(step_for(ctx)).item() > 0.0


def test_l2sp_uses_a_restored_snapshot():
    alpha = 1.5
    model, ctx, reg = started_l2sp(lenet_backbone(), alpha=alpha, beta=0.0)
    reg.penalty(step_for(ctx))  # caches the first start state
    other = make_model(lenet_backbone(), seed=9)
    perturb(other, seed=11)
    restored = {k: v.detach().clone() for k, v in other.state_dict().items()}
    ctx.snapshot(restored)
    p = params(model)
    expected = 0.5 * alpha * sum(sq(p[n] - restored[n]) for n in LENET_WEIGHTS)
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(expected, rel=1e-5)
    assert all(torch.equal(ctx.start_state()[n], restored[n]) for n in LENET_WEIGHTS)


def test_l2sp_default_set_is_kernels_not_biases_or_norm_layers():
    model, ctx, reg = started_l2sp(bn_backbone(), alpha=1.0, beta=0.0)
    assert [n for n, _ in reg.transferred] == ["backbone.conv.weight", "backbone.fc.weight"]
    with torch.no_grad():  # biases and norm parameters move: no penalty
        model.backbone.bn.weight.add_(1.0)
        model.backbone.bn.bias.add_(1.0)
        model.backbone.conv.bias.add_(1.0)
        model.backbone.fc.bias.add_(1.0)
        model.backbone.bn.running_mean.add_(3.0)
    assert reg.penalty(step_for(ctx)).item() == 0.0
    with torch.no_grad():
        model.backbone.conv.weight.add_(0.5)
    expected = 0.5 * 0.25 * model.backbone.conv.weight.numel()
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(expected, rel=1e-5)
    everything = regularizer("l2_sp", alpha=1.0, beta=0.0, params="all")
    everything.setup(ctx)
    assert {n for n, _ in everything.transferred} == {f"backbone.{n}" for n, _ in model.backbone.named_parameters()}
    expected += 0.5 * (4 + 4 + 4 + 6)  # bn weight, bn bias, conv bias, fc bias, each moved by 1
    assert everything.penalty(step_for(ctx)).item() == pytest.approx(expected, rel=1e-5)


def test_l2sp_beta_covers_the_head_and_params_all_adds_its_bias():
    model, ctx, weights = started_l2sp(bn_backbone(), alpha=0.0, beta=1.0)
    assert weights.penalty(step_for(ctx)).item() == pytest.approx(0.5 * sq(model.head.weight), rel=1e-5)
    everything = regularizer("l2_sp", alpha=0.0, beta=1.0, params="all")
    everything.setup(ctx)
    expected = 0.5 * (sq(model.head.weight) + sq(model.head.bias))
    assert everything.penalty(step_for(ctx)).item() == pytest.approx(expected, rel=1e-5)


def test_l2sp_match_glob_and_frozen_parameters():
    model, ctx, reg = started_l2sp(lenet_backbone(), alpha=1.0, beta=1.0, match="backbone.fc*")
    assert [n for n, _ in reg.transferred] == ["backbone.fc1.0.weight", "backbone.fc2.0.weight"]
    with torch.no_grad():
        for n, p in model.backbone.named_parameters():
            p.add_(1.0)
    p = params(model)
    fc = sum(p[n].numel() for n in ("backbone.fc1.0.weight", "backbone.fc2.0.weight"))
    head = sq(p["head.weight"])
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(0.5 * fc + 0.5 * head, rel=1e-5)
    freeze(model.backbone)  # a linear probe: the backbone term drops out
    assert reg.penalty(step_for(ctx)).item() == pytest.approx(0.5 * head, rel=1e-5)
    freeze(model.head)
    value = reg.penalty(step_for(ctx))
    assert value.item() == 0.0 and not value.requires_grad


def test_l2sp_options_are_checked():
    with pytest.raises(ConfigError, match="l2_sp: params must be"):
        regularizer("l2_sp", params="kernels")
    with pytest.raises(ConfigError, match="has no option 'gamma'"):
        regularizer("l2_sp", gamma=1.0)
    reg = regularizer("l2_sp")
    assert (reg.alpha, reg.beta, reg.params, reg.match) == (0.1, 0.01, "weights", None)


def _stage(model: TransferModel, ctx: TrainContext, regs, strategy=None, epochs: int = 1) -> Stage:
    g = torch.Generator().manual_seed(0)
    shape = model.spec.input_size
    from sftcore.api import HeadStrategy, ImageSet

    data = ImageSet(torch.randint(0, 256, (8, *shape), dtype=torch.uint8, generator=g), torch.arange(8) % 3)
    cfg = {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False},
           "schedule": {"name": "none", "warmup_epochs": 0}, "epochs": epochs, "backbone_lr_mult": 1.0,
           "label_smoothing": 0.0, "select": "last"}
    tf = BatchTransform((0.5,) * 3, (0.25,) * 3, None, shape, shape, CPU)
    return Stage(StageParts(name="finetune", cfg=cfg, model=model, ctx=ctx, strategy=strategy or HeadStrategy(),
                 regularizers=regs, train=Batches(data, 4, CPU, shuffle=True), val=None, train_transform=tf,
                 eval_transform=tf, perf=Performance(CPU), log=MetricsLog(None)))


@pytest.mark.slow
def test_stage_snapshots_the_start_and_l2sp_pulls_towards_it():
    model = make_model(lenet_backbone())
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ctx = make_ctx(model)
    reg = regularizer("l2_sp", alpha=0.1, beta=0.01)
    stage = _stage(model, ctx, [reg], epochs=2)
    assert ctx._start_state is not None
    assert all(torch.equal(ctx._start_state[k], v) for k, v in start.items())
    result = stage.run()
    assert result["epochs"] == 2
    assert all(h["penalty"] is not None and h["penalty"] >= 0 for h in stage.history)
    # training moved the model, the snapshot stayed where it was
    assert not torch.equal(model.backbone.stage1[0].weight, start["backbone.stage1.0.weight"])
    assert all(torch.equal(ctx.start_state()[n], start[n]) for n, _ in model.named_parameters())
    # resuming restores the start state from the checkpoint dict, not from the current model
    saved = stage.state_dict(1)
    model2 = make_model(lenet_backbone(), seed=7)
    ctx2 = make_ctx(model2)
    stage2 = _stage(model2, ctx2, [regularizer("l2_sp", alpha=0.1, beta=0.01)], epochs=2)
    stage2.load_state_dict(saved)
    assert all(torch.equal(ctx2.start_state()[n], start[n]) for n, _ in model2.named_parameters())


# --------------------------------------------------------------------------- start model and outputs
def test_start_model_is_a_frozen_copy_of_the_start():
    model = make_model(bn_backbone())
    model.train()
    ctx = make_ctx(model)
    ctx.snapshot()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    perturb(model)  # training happens after the snapshot
    frozen = ctx.start_model()
    assert frozen is not model and frozen.backbone is not model.backbone
    assert not frozen.training and all(not m.training for m in frozen.modules())
    assert all(not p.requires_grad for p in frozen.parameters())
    assert all(p.requires_grad for p in model.parameters()) and model.training
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, start[k]), k
    assert ctx.start_model() is frozen  # made once
    with torch.no_grad():
        model.head.weight.mul_(3.0)
    assert torch.equal(frozen.head.weight, start["head.weight"])
    # a new snapshot (resume) makes a new start model from that state
    ctx.snapshot({k: v + 1 if v.is_floating_point() else v for k, v in start.items()})
    again = ctx.start_model()
    assert again is not frozen
    torch.testing.assert_close(again.head.weight, start["head.weight"] + 1)


def test_start_model_without_a_snapshot_copies_the_model_as_it_is():
    model = make_model(lenet_backbone())
    ctx = make_ctx(model)
    frozen = ctx.start_model()
    for (n, a), (_, b) in zip(model.named_parameters(), frozen.named_parameters()):
        assert torch.equal(a, b) and not b.requires_grad, n


def test_step_start_outputs_are_the_start_model_on_the_same_inputs():
    model = make_model(lenet_backbone())
    ctx = make_ctx(model)
    ctx.snapshot()
    reference = copy.deepcopy(model).eval()
    perturb(model, scale=0.2)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    step = step_for(ctx, x)
    logits0, feats0, maps0 = step.start_outputs()
    assert set(maps0) == {"stage1", "stage2"} == set(model.spec.feature_maps)
    with torch.no_grad():
        torch.testing.assert_close(logits0, reference(x))
        torch.testing.assert_close(feats0, reference.backbone(x))
        torch.testing.assert_close(maps0["stage1"], reference.backbone.stage1(x))
        torch.testing.assert_close(maps0["stage2"], reference.backbone.stage2(reference.backbone.stage1(x)))
    assert maps0["stage1"].shape == (3, 6, 14, 14) and maps0["stage2"].shape == (3, 16, 5, 5)
    assert not logits0.requires_grad and not maps0["stage2"].requires_grad
    assert not torch.allclose(logits0, step.logits)  # the current model has moved on
    assert step.start_outputs() is step.start_outputs()  # computed once per step


def test_step_start_outputs_with_a_batchnorm_model_use_running_statistics():
    model = make_model(bn_backbone())
    ctx = make_ctx(model)
    ctx.snapshot()
    reference = copy.deepcopy(model).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(6)) * 3 + 1
    step = step_for(ctx, x)  # a training-mode forward: the live model's running statistics move
    assert not torch.equal(model.backbone.bn.running_mean, torch.zeros(4))
    logits0, _, maps0 = step.start_outputs()
    with torch.no_grad():
        torch.testing.assert_close(logits0, reference(x))
        torch.testing.assert_close(maps0["bn"], reference.backbone.bn(reference.backbone.conv(x)))
    # the start model's running statistics did not move
    assert torch.equal(ctx.start_model().backbone.bn.running_mean, torch.zeros(4))


# --------------------------------------------------------------------------- feature maps
@pytest.mark.parametrize("img_size, s1, s2", [(32, 14, 5), (28, 12, 4), (64, 30, 13)])
def test_forward_all_records_lenet_stage_maps(img_size, s1, s2):
    model = make_model(lenet_backbone(img_size=img_size))
    x = torch.randn(2, 3, img_size, img_size)
    logits, feats, maps = model.forward_all(x)
    assert maps == {} and logits.shape == (2, 3) and feats.shape == (2, 84)
    logits, feats, maps = model.forward_all(x, feature_maps=True)
    assert list(maps) == ["stage1", "stage2"]
    assert maps["stage1"].shape == (2, 6, s1, s1) and maps["stage2"].shape == (2, 16, s2, s2)
    assert maps["stage2"].requires_grad  # a regularizer can backpropagate through them
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(maps["stage1"], model.backbone.stage1(x))
    # hooks are installed once, and a plain forward afterwards records nothing
    model.forward_all(x, feature_maps=True)
    assert len(model.backbone.stage1._forward_hooks) == 1 and len(model.backbone.stage2._forward_hooks) == 1
    assert model.forward_all(x)[2] == {}


@pytest.mark.parametrize("hooks_first", [True, False])
def test_a_deepcopy_records_feature_maps_too(hooks_first):
    model = make_model(lenet_backbone())
    x = torch.randn(2, 3, 32, 32)
    if hooks_first:
        model.forward_all(x, feature_maps=True)
    clone = copy.deepcopy(model)
    perturb(clone)
    _, _, maps = clone.forward_all(x, feature_maps=True)
    assert set(maps) == {"stage1", "stage2"}
    torch.testing.assert_close(maps["stage1"], clone.backbone.stage1(x))
    assert not torch.allclose(maps["stage1"], model.backbone.stage1(x))  # the copy's own maps
    _, _, original = model.forward_all(x, feature_maps=True)
    torch.testing.assert_close(original["stage1"], model.backbone.stage1(x))
    assert len(clone.backbone.stage1._forward_hooks) == 1


@pytest.mark.slow
def test_a_regularizer_asking_for_feature_maps_gets_them_in_the_stage():
    seen = []

    from sftcore.api import Regularizer

    class MapsPenalty(Regularizer):
        needs_feature_maps = True

        def penalty(self, step):
            logits0, _, maps0 = step.start_outputs()
            seen.append((set(step.feature_maps), tuple(step.feature_maps["stage2"].shape), set(maps0)))
            return sum((step.feature_maps[k] - maps0[k]).pow(2).mean() for k in maps0)

    model = make_model(lenet_backbone())
    ctx = make_ctx(model)
    stage = _stage(model, ctx, [MapsPenalty()])
    stage.run()
    assert len(seen) == 2  # 8 examples, batch size 4
    assert all(s == ({"stage1", "stage2"}, (4, 16, 5, 5), {"stage1", "stage2"}) for s in seen)
    assert stage.history[0]["penalty"] >= 0


class _WrongKind:
    """A plugin whose factories break the contract: a regularizer factory returning 42, penalties not scalars."""

    @staticmethod
    @__import__("sftcore").hookimpl
    def register_regularizers(register):
        from sftcore.api import Regularizer

        class FloatPenalty(Regularizer):
            def penalty(self, step):
                return 0.5

        class VectorPenalty(Regularizer):
            def penalty(self, step):
                return step.logits.sum(0)

        register("returns_42", lambda: 42, "returns 42")
        register("float_penalty", FloatPenalty, "a float penalty")
        register("vector_penalty", VectorPenalty, "a vector penalty")


def test_a_factory_returning_the_wrong_type_is_one_line_at_resolve(plugin):
    from sftcore._config import resolve as cfgmod
    from sftcore.errors import PluginError
    from sftcore.testing import registry, tiny_config

    plugin(_WrongKind, "wrong-kind")
    cfg = tiny_config(regularizers=[{"name": "returns_42"}])
    with pytest.raises(PluginError) as err:
        cfgmod.resolve(cfg, registry())
    line = str(err.value)
    assert "returns_42" in line and "returned int, not sftcore.api.Regularizer" in line and "\n" not in line


@pytest.mark.parametrize("name, shape", [("float_penalty", "returned float"), ("vector_penalty", "a tensor of shape")])
def test_a_penalty_that_is_not_a_scalar_tensor_is_one_line(plugin, name, shape):
    from sftcore.errors import PluginError
    from sftcore.testing import create, make_step, train_context

    plugin(_WrongKind, "wrong-kind")
    ctx = train_context()
    reg = create("regularizers", name)
    reg.setup(ctx)
    from sftcore._train.loop import _penalty

    with pytest.raises(PluginError, match=shape) as err:
        _penalty(reg, make_step(ctx))
    assert "not a scalar tensor" in str(err.value)


@pytest.mark.slow
def test_a_bad_penalty_of_the_finetune_stage_fails_before_pretraining(plugin, tmp_path):
    """The pipeline probes the later stages' regularizers on one batch before pretraining (Stage.probe): the
    error is the one line a step would give, and no pretraining epoch ran."""
    import sftcore
    from sftcore.api import Callback
    from sftcore.errors import PluginError
    from sftcore.testing import tiny_config

    plugin(_WrongKind, "wrong-kind")
    cfg = tiny_config(regularizers=[{"name": "float_penalty"}], pretrain={"epochs": 50})
    events = []

    class Watch(Callback):
        def on_epoch_end(self, stage, record):
            events.append((stage.stage, record.get("epoch")))

    with pytest.raises(PluginError, match="FloatPenalty.penalty returned float, not a scalar tensor"):
        sftcore.run(cfg, out=tmp_path / "run", callbacks=[Watch()])
    assert events == []  # not one pretraining epoch


def test_probing_the_regularizers_leaves_the_random_state_alone():
    """The probe builds a stage (which seeds torch) inside fork_rng: a run with it draws what it drew without."""
    import torch

    from sftcore._config import resolve as cfgmod
    from sftcore._run.pipeline import Pipeline
    from sftcore.testing import registry, tiny_config

    cfg = cfgmod.resolve(tiny_config(regularizers=[{"name": "l2_sp", "alpha": 0.01}], pretrain=True), registry())
    pipe = Pipeline(cfg, None, False, None)
    backbone = pipe.build_backbone()
    before = torch.get_rng_state()
    pipe._probe_regularizers(backbone)
    assert torch.equal(torch.get_rng_state(), before)
    assert pipe._splits  # it used the stage data the run loads anyway
