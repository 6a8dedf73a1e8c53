"""The built-in optimizers, schedules and parameter groupings (plugins/optim, plugins/param_groups)."""

from __future__ import annotations

import copy
import dataclasses
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from sftcore.api import BackboneContext, HeadStrategy, ScheduleContext, unfreeze
from sftcore.errors import ConfigError
from sftcore.testing import registered, rejects, tiny_backbone, train_context

import sftcore_plugins.optim as optim_plugin
import sftcore_plugins.param_groups as groups_plugin
from sftcore_plugins.optim import optimizers, schedules
from sftcore_plugins.param_groups.groups import BackboneHead, LayerDecay

OPTIMIZERS = ["adam", "adamw", "sgd"]
SCHEDULES = ["cosine", "none", "one_cycle", "step", "warmup_cosine"]
PARAM_GROUPS = ["backbone_head", "layer_decay"]


@pytest.fixture(scope="module", autouse=True)
def builtins():
    """The built-in plugins, registered (an installed sftcore loads them from its entry points already;
    a stale egg-info on sys.path may not list them)."""
    with registered(optim_plugin, "sftcore.optim"), registered(groups_plugin, "sftcore.param_groups"):
        yield


def registry():
    from sftcore._plugins.manager import get_registry

    return get_registry()


# --------------------------------------------------------------------------- registration
def test_the_registry_lists_them():
    reg = registry()
    for kind, names in (("optimizers", OPTIMIZERS), ("schedules", SCHEDULES), ("param_groups", PARAM_GROUPS)):
        assert sorted(c.name for c in reg.list(kind)[kind]) == names
        for name in names:
            comp = reg.get(kind, name)
            assert comp.description and callable(getattr(comp.load(), "validate_options", None))
    assert reg.get("optimizers", "sgd").load() is optimizers.sgd
    assert reg.get("schedules", "one_cycle").load() is schedules.one_cycle
    # a param_groups class's first docstring line is its `sft list` description
    for name in PARAM_GROUPS:
        comp = reg.get("param_groups", name)
        assert comp.description == comp.load().__doc__.strip().splitlines()[0]


def test_defaults_are_plain_yaml_values():
    import yaml

    for kind, names in (("optimizers", OPTIMIZERS), ("schedules", SCHEDULES), ("param_groups", PARAM_GROUPS)):
        for name in names:
            defaults = registry().get(kind, name).defaults()
            assert yaml.safe_load(yaml.safe_dump(defaults)) == defaults, (kind, name)


@pytest.mark.slow
def test_registering_imports_no_torch(tmp_path):
    code = ("import sys; from sftcore._plugins.manager import get_registry; r = get_registry(); "
            "[r.get(k, n) for k, n in (('optimizers', 'sgd'), ('schedules', 'one_cycle'), "
            "('param_groups', 'layer_decay'))]; "
            "import sftcore_plugins.optim, sftcore_plugins.param_groups; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- today's behaviour, bit for bit
def old_schedule(cfg: dict, epochs: int, steps_per_epoch: int):
    """sftcore._train.loop._schedule as it was before schedules became components."""
    total = max(1, epochs * steps_per_epoch)
    warmup = cfg.get("warmup_epochs", 0) * steps_per_epoch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg["name"] == "cosine":
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        if cfg["name"] == "step":
            return cfg["gamma"] ** ((step // steps_per_epoch) // cfg["step_size"])
        return 1.0

    return factor


def split_decay(groups: list[dict]) -> list[dict]:
    split = []
    for group in groups:
        decay = [p for p in group["params"] if p.ndim > 1]
        no_decay = [p for p in group["params"] if p.ndim <= 1]
        base = {k: v for k, v in group.items() if k != "params"}
        if decay:
            split.append({**base, "params": decay})
        if no_decay:
            split.append({**base, "params": no_decay, "weight_decay": 0.0})
    return split


def old_optimizer(groups: list[dict], cfg: dict) -> torch.optim.Optimizer:
    """sftcore._train.loop.make_optimizer as it was (torch directly)."""
    split = split_decay(groups)
    if cfg["name"] == "sgd":
        return torch.optim.SGD(split, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                               nesterov=cfg["nesterov"] and cfg["momentum"] > 0)
    return torch.optim.AdamW(split, lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=tuple(cfg["betas"]))


OLD_OPTIMIZERS = {"sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False},
                  "adamw": {"lr": 0.001, "weight_decay": 0.01, "betas": [0.9, 0.999]}}
OLD_SCHEDULES = {"cosine": {"warmup_epochs": 0}, "step": {"step_size": 10, "gamma": 0.1, "warmup_epochs": 0},
                 "none": {"warmup_epochs": 0}}


@pytest.mark.parametrize("name,options", [
    ("cosine", {}), ("cosine", {"warmup_epochs": 2}), ("step", {}), ("step", {"step_size": 2, "gamma": 0.5}),
    ("step", {"step_size": 1, "gamma": 0.3, "warmup_epochs": 1}), ("none", {}), ("none", {"warmup_epochs": 3}),
])
def test_schedules_are_todays_bit_for_bit(name, options):
    for epochs, per_epoch in ((5, 7), (1, 1), (12, 3)):
        old = old_schedule({"name": name, **OLD_SCHEDULES[name], **options}, epochs, per_epoch)
        new = registry().get("schedules", name).create(ScheduleContext(epochs, per_epoch), **options)
        assert [new(s) for s in range(epochs * per_epoch + 3)] == [old(s) for s in range(epochs * per_epoch + 3)]


def _train(make_optimizer, make_factor, steps: int = 6) -> dict:
    """A few steps on the tiny model (backbone at half the lr), as the loop steps them; the parameters after."""
    ctx = train_context(tiny_backbone(batchnorm=True), classes=3, per_class=4, batch_size=4)
    groups = HeadStrategy().param_groups(ctx, 0.05, 0.5)
    optimizer = make_optimizer(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, make_factor())
    batches = list(ctx.train_batches())
    for i in range(steps):
        x, y = batches[i % len(batches)]
        optimizer.zero_grad()
        nn.functional.cross_entropy(ctx.model(x), y).backward()
        optimizer.step()
        scheduler.step()
    return {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}


@pytest.mark.parametrize("opt,opt_options,sched,sched_options", [
    ("sgd", {"lr": 0.05, "weight_decay": 1e-3, "nesterov": True}, "cosine", {"warmup_epochs": 1}),
    ("sgd", {}, "none", {}),
    ("sgd", {"momentum": 0, "nesterov": True}, "step", {"step_size": 1, "gamma": 0.5}),
    ("adamw", {"lr": 0.01, "betas": [0.8, 0.99]}, "step", {"step_size": 1, "gamma": 0.5, "warmup_epochs": 1}),
    ("adamw", {}, "cosine", {}),
])
def test_sgd_and_adamw_train_as_today_bit_for_bit(opt, opt_options, sched, sched_options, one_thread):
    epochs, per_epoch = 3, 3
    opt_cfg = {"name": opt, **OLD_OPTIMIZERS[opt], **opt_options}
    sched_cfg = {"name": sched, **OLD_SCHEDULES[sched], **sched_options}
    if opt == "sgd":
        opt_cfg["lr"] = float(opt_cfg["lr"])
        opt_cfg["momentum"] = float(opt_cfg["momentum"])  # the old config made every number a float
    old = _train(lambda groups: old_optimizer(groups, opt_cfg), lambda: old_schedule(sched_cfg, epochs, per_epoch))
    reg = registry()
    new = _train(lambda groups: reg.get("optimizers", opt).create(split_decay(groups), **opt_options),
                 lambda: reg.get("schedules", sched).create(ScheduleContext(epochs, per_epoch), **sched_options))
    assert old.keys() == new.keys()
    assert all(torch.equal(old[k], new[k]) for k in old)
    # and something did train
    start = train_context(tiny_backbone(batchnorm=True), classes=3, per_class=4, batch_size=4).model.state_dict()
    assert not torch.equal(start["head.weight"], new["head.weight"])


def test_optimizers_pass_the_groups_as_given():
    w, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    groups = [{"name": "a", "params": [w], "lr": 0.5}, {"name": "a", "params": [b], "weight_decay": 0.0}]
    sgd = optimizers.sgd([dict(g) for g in groups], lr=0.1, weight_decay=0.01)
    assert [g["lr"] for g in sgd.param_groups] == [0.5, 0.1]
    assert [g["weight_decay"] for g in sgd.param_groups] == [0.01, 0.0]
    assert sgd.param_groups[0]["name"] == "a"
    adam = optimizers.adam([dict(g) for g in groups], weight_decay=0.1, betas=[0.5, 0.6])
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.5, 0.6)
    assert [g["weight_decay"] for g in adam.param_groups] == [0.1, 0.0]
    adamw = optimizers.adamw([dict(g) for g in groups])
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.01


def test_adam_is_coupled_l2():
    """Adam's weight_decay goes into the gradient (through the moments); AdamW's does not."""
    def one_step(factory):
        p = nn.Parameter(torch.tensor([2.0]))
        opt = factory([{"params": [p]}], lr=0.1, weight_decay=0.5)
        p.grad = torch.zeros(1)
        opt.step()
        return p.item()

    assert one_step(optimizers.adam) == pytest.approx(2.0 - 0.1)  # Adam's normalised step of grad 0.5 * 2
    assert one_step(optimizers.adamw) == pytest.approx(2.0 * (1 - 0.1 * 0.5))  # decoupled shrink only


# --------------------------------------------------------------------------- the new schedules
@pytest.mark.parametrize("epochs,per_epoch,options", [
    (10, 7, {}), (3, 5, {"pct_start": 0.3, "div_factor": 10.0, "final_div_factor": 100.0}),
    (4, 1, {"pct_start": 0.5}), (2, 50, {"pct_start": 0.9, "div_factor": 2, "final_div_factor": 1}),
])
def test_one_cycle_is_torchs_one_cycle_lr(epochs, per_epoch, options):
    total = epochs * per_epoch
    factor = registry().get("schedules", "one_cycle").create(ScheduleContext(epochs, per_epoch), **options)
    max_lr = 0.3
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=max_lr)
    torch_options = {"pct_start": 0.25, "div_factor": 25.0, "final_div_factor": 1e4, **options}
    reference = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, anneal_strategy="cos",
                                                    three_phase=False, cycle_momentum=False, **torch_options)
    for step in range(total):
        assert factor(step) * max_lr == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=0), step
        opt.step()
        if step < total - 1:
            reference.step()
    initial = 1 / torch_options["div_factor"]
    assert factor(0) == pytest.approx(initial, rel=1e-12)
    assert factor(total - 1) == pytest.approx(initial / torch_options["final_div_factor"], rel=1e-12)
    assert factor(total + 5) == factor(total - 1)  # stays at the bottom past the end
    assert max(factor(s) for s in range(total)) <= 1.0


def test_one_cycle_with_a_first_phase_shorter_than_a_step_is_finite():
    for total in (1, 2, 4):  # pct_start * total == 1 would divide by zero in OneCycleLR
        factor = schedules.one_cycle(ScheduleContext(total, 1))
        values = [factor(s) for s in range(total + 1)]
        assert all(math.isfinite(v) and 0 < v <= 1 for v in values)


@pytest.mark.parametrize("epochs,per_epoch,warmup,low", [(10, 4, 2, 0.0), (5, 3, 1, 0.1), (3, 2, 0, 0.5)])
def test_warmup_cosine_endpoints(epochs, per_epoch, warmup, low):
    from timm.scheduler import CosineLRScheduler

    total, w = epochs * per_epoch, warmup * per_epoch
    factor = registry().get("schedules", "warmup_cosine").create(ScheduleContext(epochs, per_epoch),
                                                                 warmup_epochs=warmup, min_factor=low)
    if w:
        assert factor(0) == pytest.approx(1 / w)
        assert factor(w - 1) == 1.0
        assert [factor(s) for s in range(w)] == sorted(factor(s) for s in range(w))
    assert factor(w) == 1.0
    assert factor(total) == pytest.approx(low) and factor(total + 10) == pytest.approx(low)
    values = [factor(s) for s in range(w, total)]
    assert values == sorted(values, reverse=True) and min(values) > low
    # from the end of the warmup on, timm's CosineLRScheduler in steps
    p = nn.Parameter(torch.zeros(1))
    lr = 0.2
    timm_sched = CosineLRScheduler(torch.optim.SGD([p], lr=lr), t_initial=total - w, lr_min=low * lr, warmup_t=w,
                                   warmup_prefix=True, t_in_epochs=False)
    for s in range(w, total + 3):
        assert factor(s) * lr == pytest.approx(timm_sched._get_lr(s)[0], rel=1e-9, abs=1e-15), s


# --------------------------------------------------------------------------- bad options
@pytest.mark.parametrize("kind,name,options,says", [
    ("optimizers", "sgd", {"lr": 0}, "config: optimizers.lr must be"),
    ("optimizers", "sgd", {"lr": -1.0}, ".lr must be"),
    ("optimizers", "sgd", {"lr": "fast"}, ".lr must be"),
    ("optimizers", "sgd", {"lr": float("nan")}, ".lr must be a finite number"),
    ("optimizers", "sgd", {"momentum": 1.5}, ".momentum must be a finite number from 0.0 to 1.0"),
    ("optimizers", "sgd", {"weight_decay": -0.1}, ".weight_decay must be"),
    ("optimizers", "sgd", {"nesterov": "yes"}, ".nesterov must be true or false"),
    ("optimizers", "sgd", {"nesterov": 1}, ".nesterov must be true or false"),
    ("optimizers", "sgd", {"betas": [0.9, 0.99]}, "has no option 'betas'"),
    ("optimizers", "adamw", {"betas": [0.9]}, ".betas must be two numbers in [0, 1)"),
    ("optimizers", "adamw", {"betas": "0.9"}, ".betas must be two numbers"),
    ("optimizers", "adamw", {"betas": [0.9, 1.0]}, ".betas[1] must be a finite number >= 0.0 and < 1.0"),
    ("optimizers", "adamw", {"betas": [-0.1, 0.9]}, ".betas[0] must be"),
    ("optimizers", "adamw", {"betas": [0.9, float("inf")]}, ".betas[1] must be"),
    ("optimizers", "adamw", {"betas": [True, 0.9]}, ".betas[0] must be"),
    ("optimizers", "adam", {"lr": None}, ".lr must be"),
    ("optimizers", "adam", {"weight_decay": -1}, ".weight_decay must be"),
    ("schedules", "cosine", {"warmup_epochs": -1}, ".warmup_epochs must be an integer >= 0"),
    ("schedules", "cosine", {"warmup_epochs": 1.5}, ".warmup_epochs must be an integer"),
    ("schedules", "none", {"warmup_epochs": True}, ".warmup_epochs must be an integer"),
    ("schedules", "step", {"step_size": 0}, ".step_size must be an integer from 1 to 1000000"),
    ("schedules", "step", {"step_size": 10**7}, ".step_size must be"),
    ("schedules", "step", {"gamma": 1.5}, ".gamma must be a finite number from 0.0 to 1.0"),
    ("schedules", "one_cycle", {"pct_start": 0}, ".pct_start must be a finite number > 0.0 and < 1.0"),
    ("schedules", "one_cycle", {"pct_start": 1.0}, ".pct_start must be a finite number > 0.0 and < 1.0"),
    ("schedules", "one_cycle", {"div_factor": 0}, ".div_factor must be a finite number > 0.0"),
    ("schedules", "one_cycle", {"final_div_factor": float("inf")}, ".final_div_factor must be"),
    ("schedules", "warmup_cosine", {"min_factor": 1.0}, ".min_factor must be a finite number >= 0.0 and < 1.0"),
    ("schedules", "warmup_cosine", {"warmup_epochs": -2}, ".warmup_epochs must be"),
    ("param_groups", "backbone_head", {"backbone_lr_mult": -1}, ".backbone_lr_mult must be a finite number >= 0.0"),
    ("param_groups", "layer_decay", {"decay": 0}, ".decay must be a finite number > 0.0 and <= 1.0"),
    ("param_groups", "layer_decay", {"decay": 1.5}, ".decay must be"),
    ("param_groups", "layer_decay", {"min_scale": 2}, ".min_scale must be a finite number from 0.0 to 1.0"),
    ("param_groups", "layer_decay", {"min_scale": "low"}, ".min_scale must be"),
])
def test_bad_options_are_one_line_config_errors(kind, name, options, says):
    args = {"optimizers": ([{"params": [nn.Parameter(torch.zeros(1))]}],),
            "schedules": (ScheduleContext(5, 2),), "param_groups": ()}[kind]
    message = rejects(kind, name, *args, **options)
    assert says in message, message


def test_the_config_prefix_comes_from_where_and_direct_calls_check_too():
    with pytest.raises(ConfigError, match=r"^config: finetune\.optimizer\.momentum must be"):
        optimizers.sgd.validate_options("config: finetune.optimizer", momentum=2)
    with pytest.raises(ConfigError, match=r"^config: pretrain\.schedule\.gamma must be"):
        schedules.step.validate_options("config: pretrain.schedule", gamma=-1)
    with pytest.raises(ConfigError, match=r"^config: optimizer\.lr must be"):
        optimizers.adamw([{"params": [nn.Parameter(torch.zeros(1))]}], lr=0)
    with pytest.raises(ConfigError, match=r"^config: schedule\.pct_start must be"):
        schedules.one_cycle(ScheduleContext(1, 1), pct_start=2)
    with pytest.raises(ConfigError, match=r"^config: param_groups\.decay must be"):
        LayerDecay(decay=-1)


# --------------------------------------------------------------------------- parameter groups
def each_once(ctx, groups) -> None:
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in ctx.model.parameters()}


def test_backbone_head_is_the_head_strategys_default():
    ctx = train_context()
    default = HeadStrategy().param_groups(ctx, 0.1, 0.5)
    for made in (BackboneHead(), registry().get("param_groups", "backbone_head").create()):
        groups = made.groups(ctx, 0.1, 0.5)
        assert [(g["name"], g["lr"], [id(p) for p in g["params"]]) for g in groups] == \
            [(g["name"], g["lr"], [id(p) for p in g["params"]]) for g in default]
    own = BackboneHead(backbone_lr_mult=0.1).groups(ctx, 0.1, 0.5)
    assert [g["lr"] for g in own] == [0.1 * 0.1, 0.1]
    assert BackboneHead(backbone_lr_mult=0).groups(ctx, 0.1, 0.5)[0]["lr"] == 0.0


def by_name(groups) -> dict:
    return {g["name"]: g for g in groups}


def test_layer_decay_on_the_tiny_backbone():
    ctx = train_context()  # blocks stage1, stage2; the head; nothing else holds parameters
    lr, mult, decay = 0.1, 0.5, 0.5
    groups = by_name(LayerDecay(decay=decay).groups(ctx, lr, mult))
    assert list(groups) == ["layer_1", "layer_2", "layer_3"]  # no stem
    model = ctx.model
    assert groups["layer_1"]["params"] == list(model.backbone.stage1.parameters())
    assert groups["layer_2"]["params"] == list(model.backbone.stage2.parameters())
    assert groups["layer_3"]["params"] == list(model.head.parameters())
    assert groups["layer_1"]["lr"] == lr * mult * decay ** 2
    assert groups["layer_2"]["lr"] == lr * mult * decay
    assert groups["layer_3"]["lr"] == lr
    each_once(ctx, groups.values())
    floored = by_name(LayerDecay(decay=0.1, min_scale=0.05).groups(ctx, lr, 1.0))
    assert floored["layer_1"]["lr"] == lr * 0.05 and floored["layer_2"]["lr"] == pytest.approx(lr * 0.1)


def _wrapped_backbone():
    """tiny_backbone's stages with parameters before, between and after them."""
    backbone = tiny_backbone()
    old = backbone.features
    features = nn.Sequential()
    features.add_module("stem", nn.Conv2d(3, 3, 1))
    features.add_module("stage1", old.stage1)
    features.add_module("mid", nn.Conv2d(4, 4, 1))
    features.add_module("stage2", old.stage2)
    features.add_module("pool", old.pool)
    features.add_module("flatten", old.flatten)
    features.add_module("norm", nn.LayerNorm(8))
    return dataclasses.replace(backbone, features=features)


def test_layer_decay_puts_the_stem_before_and_a_final_norm_after_the_blocks():
    ctx = train_context(_wrapped_backbone())
    f = ctx.model.backbone
    groups = by_name(LayerDecay(decay=0.5).groups(ctx, 1.0, 1.0))
    assert list(groups) == ["layer_0", "layer_1", "layer_2", "layer_3"]
    assert groups["layer_0"]["params"] == list(f.stem.parameters())
    assert groups["layer_1"]["params"] == [*f.stage1.parameters(), *f.mid.parameters()]  # between: preceding
    assert groups["layer_2"]["params"] == list(f.stage2.parameters())
    assert groups["layer_3"]["params"] == [*f.norm.parameters(), *ctx.model.head.parameters()]
    assert [groups[f"layer_{i}"]["lr"] for i in range(4)] == [0.125, 0.25, 0.5, 1.0]
    each_once(ctx, groups.values())


def test_layer_decay_without_declared_blocks_and_with_list_blocks():
    backbone = _wrapped_backbone()
    ctx = train_context(dataclasses.replace(backbone, blocks=[]))
    groups = by_name(LayerDecay(decay=0.5).groups(ctx, 1.0, 0.5))
    assert list(groups) == ["layer_1", "layer_2"]  # the whole backbone is one block
    assert groups["layer_1"]["params"] == list(ctx.model.backbone.parameters())
    assert groups["layer_1"]["lr"] == 0.25 and groups["layer_2"]["lr"] == 1.0
    ctx = train_context(dataclasses.replace(backbone, blocks=[["stem", "stage1"], "stage2"]))
    groups = by_name(LayerDecay(decay=0.5).groups(ctx, 1.0, 1.0))
    assert list(groups) == ["layer_1", "layer_2", "layer_3"]
    f = ctx.model.backbone
    assert groups["layer_1"]["params"] == [*f.stem.parameters(), *f.stage1.parameters(), *f.mid.parameters()]
    each_once(ctx, groups.values())


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return registry().get("backbones", "timm").create(BackboneContext(seed=0), model="resnet18", pretrained=False)


def test_layer_decay_on_a_timm_resnet18(resnet18):
    ctx = train_context(resnet18, head=nn.Linear(resnet18.num_features, 3), snapshot=False)
    f = ctx.model.backbone
    assert ctx.model.spec.blocks == [["conv1", "bn1"], "layer1", "layer2", "layer3", "layer4"]
    decay = 0.75
    groups = by_name(LayerDecay(decay=decay).groups(ctx, 0.1, 1.0))
    assert list(groups) == [f"layer_{i}" for i in range(1, 7)]  # the stem is a declared block: no layer 0
    assert groups["layer_1"]["params"] == [*f.conv1.parameters(), *f.bn1.parameters()]
    for i in range(1, 5):
        assert groups[f"layer_{i + 1}"]["params"] == list(getattr(f, f"layer{i}").parameters())
        assert groups[f"layer_{i + 1}"]["lr"] == 0.1 * 1.0 * decay ** (5 - i)
    assert groups["layer_1"]["lr"] == 0.1 * decay ** 5
    assert groups["layer_6"]["params"] == list(ctx.model.head.parameters()) and groups["layer_6"]["lr"] == 0.1
    each_once(ctx, groups.values())
    # declared blocks that leave the stem before them and a stage after them
    ctx = train_context(dataclasses.replace(resnet18, blocks=["layer1", "layer3"]),
                        head=nn.Linear(resnet18.num_features, 3), snapshot=False)
    groups = by_name(LayerDecay(decay=0.5, min_scale=0.2).groups(ctx, 1.0, 1.0))
    assert groups["layer_0"]["params"] == [*f.conv1.parameters(), *f.bn1.parameters()]
    assert groups["layer_1"]["params"] == [*f.layer1.parameters(), *f.layer2.parameters()]
    assert groups["layer_2"]["params"] == list(f.layer3.parameters())
    assert groups["layer_3"]["params"] == [*f.layer4.parameters(), *ctx.model.head.parameters()]
    assert [groups[f"layer_{i}"]["lr"] for i in range(4)] == [0.2, 0.25, 0.5, 1.0]
    each_once(ctx, groups.values())


def test_layer_decay_and_weight_decay_on_a_vit_match_timms_param_groups_layer_decay():
    """Per parameter, the lr scale and weight decay of sftcore's layer_decay + adamw equal timm's
    ``param_groups_layer_decay`` with the model's ``no_weight_decay()``: the ViT's cls_token and pos_embed sit in
    the stem's layer with patch_embed and are not decayed."""
    import timm
    from timm.optim._param_groups import param_groups_layer_decay

    from sftcore._train.optim import make_optimizer

    torch.manual_seed(0)
    vit = registry().get("backbones", "timm").create(BackboneContext(seed=0), model="vit_tiny_patch16_224",
                                                     pretrained=False)
    assert vit.blocks[0] == ["cls_token", "pos_embed", "patch_embed"] and vit.blocks[-1] == ["blocks.11", "norm"]
    assert set(vit.no_weight_decay) >= {"cls_token", "pos_embed"}
    ctx = train_context(vit, head=nn.Linear(vit.num_features, 3), snapshot=False)
    lr, decay, wd = 0.1, 0.75, 0.05
    groups = LayerDecay(decay=decay).groups(ctx, lr, 1.0)
    entry = {"name": "adamw", "lr": lr, "weight_decay": wd, "betas": [0.9, 0.999]}
    ours = make_optimizer(groups, entry, registry(), exempt=ctx.model.no_weight_decay())
    mine = {id(p): (g["lr"] / lr, g["weight_decay"]) for g in ours.param_groups for p in g["params"]}

    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    theirs = param_groups_layer_decay(net, weight_decay=wd, no_weight_decay_list=net.no_weight_decay(),
                                      layer_decay=decay)
    reference = {id(p): (g["lr_scale"], g["weight_decay"]) for g in theirs for p in g["params"]}
    timm_named = dict(net.named_parameters())
    our_named = {**{f"backbone.{n}": p for n, p in ctx.model.backbone.named_parameters()},
                 **{f"head.{n}": p for n, p in ctx.model.head.named_parameters()}}
    assert len(our_named) == len(timm_named)
    for name, p in timm_named.items():
        ours_name = name if name.startswith("head.") else f"backbone.{name}"
        scale, weight_decay = mine[id(our_named[ours_name])]
        assert scale == pytest.approx(reference[id(p)][0], rel=1e-12), name
        assert weight_decay == reference[id(p)][1], name
    by_param = {n: mine[id(p)] for n, p in our_named.items()}
    assert by_param["backbone.cls_token"] == by_param["backbone.patch_embed.proj.bias"]  # one layer, no decay
    assert by_param["backbone.pos_embed"][0] == by_param["backbone.patch_embed.proj.weight"][0]


STRATEGIES = [("reinit", {}), ("linear_probe", {}), ("lp_ft", {"probe_epochs": 1}),
              ("gradual_unfreeze", {}), ("gradual_unfreeze", {"every": 2, "blocks_per_step": 2}),
              ("match_classes", {}), ("imprint", {})]


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
@pytest.mark.parametrize("strategy,options", STRATEGIES)
def test_layer_decay_composes_with_each_head_strategys_freezing(strategy, options, backbone, request, one_thread):
    spec = request.getfixturevalue("resnet18") if backbone == "resnet18" else _wrapped_backbone()
    ctx = train_context(copy.deepcopy(spec), head=nn.Linear(spec.num_features, 3), snapshot=False, epochs=4,
                        per_class=2)
    strat = registry().get("heads", strategy).create(**options)
    x, y = next(iter(ctx.train_batches()))
    epochs = range(3) if strategy in ("lp_ft", "gradual_unfreeze") else range(1)
    seen_frozen = set()
    for epoch in epochs:
        unfreeze(ctx.model)
        strat.on_epoch_start(epoch, ctx)
        optimizer = optimizers.sgd(split_decay(LayerDecay(decay=0.5).groups(ctx, 0.1, 1.0)), lr=0.1, momentum=0.0,
                                   weight_decay=0.0)
        before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(ctx.model(x), y).backward()
        optimizer.step()
        moved = 0
        for n, p in ctx.model.named_parameters():
            changed = not torch.equal(before[n], p.detach())
            if not p.requires_grad:  # frozen: no gradient, not stepped
                assert p.grad is None and not changed, (epoch, n)
                seen_frozen.add(n)
            else:  # trainable: in the optimizer and stepped (a zero-initialised residual branch, or a
                # step below float resolution at a decayed lr, may leave one as it was)
                assert p.grad is not None, (epoch, n)
                moved += changed
        assert moved
    if strategy in ("linear_probe", "lp_ft", "gradual_unfreeze"):
        assert seen_frozen  # the strategy did freeze something, and it stayed put
