"""``discriminative`` param groups: rates against the formula, every parameter once, each built-in head
strategy through the loop's own sequence (``strategy_epochs``), bad options, and a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from sftcore.api import Backbone
from sftcore.testing import create, rejects, run_tiny, strategy_epochs, tiny_backbone, train_context

BUILTIN_HEADS = ["reinit", "linear_probe", "lp_ft", "gradual_unfreeze", "match_classes", "imprint"]


def groups_of(ctx, lr=0.1, mult=1.0, **options):
    return create("param_groups", "discriminative", **options).groups(ctx, lr, mult)


def names_by_id(ctx) -> dict[int, str]:
    return {id(p): n for n, p in ctx.model.named_parameters()}


def assert_each_parameter_once(ctx, groups):
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)), "a parameter is in two groups"
    assert set(ids) == {id(p) for p in ctx.model.parameters()}, "a parameter is in no group"


def four_block_backbone() -> Backbone:
    """A stem and a final norm outside the declared blocks, and one block declared as two submodules."""
    features = nn.Sequential()
    features.add_module("stem", nn.Conv2d(3, 4, 3, padding=1))
    for i in range(4):
        features.add_module(f"b{i}", nn.Conv2d(4, 4, 3, padding=1))
    features.add_module("extra", nn.Conv2d(4, 4, 1))
    features.add_module("pool", nn.AdaptiveAvgPool2d(1))
    features.add_module("flatten", nn.Flatten())
    features.add_module("norm", nn.LayerNorm(4))
    return Backbone(features=features, num_features=4, input_size=(3, 8, 8),
                    blocks=["b0", "b1", "b2", ["b3", "extra"]])


# --------------------------------------------------------------------------- the groups
def test_blocks_are_spaced_geometrically_from_lr_over_div_to_lr():
    ctx = train_context(four_block_backbone())
    groups = groups_of(ctx, lr=0.2, mult=0.5, div=8.0)
    assert [g["name"] for g in groups] == ["block0_b0", "block1_b1", "block2_b2", "block3_b3+extra", "head"]
    base = 0.2 * 0.5
    expected = [base / 8.0, base / 4.0, base / 2.0, base]  # 8 ** (-3/3), 8 ** (-2/3), 8 ** (-1/3), 1
    for group, lr in zip(groups, expected):
        assert group["lr"] == pytest.approx(lr, rel=1e-12)
    assert groups[-1]["lr"] == 0.2  # the head: the optimizer's lr, no multiplier
    ratios = [b["lr"] / a["lr"] for a, b in zip(groups[:3], groups[1:4])]
    assert ratios == pytest.approx([2.0, 2.0, 2.0])
    assert_each_parameter_once(ctx, groups)


def test_parameters_outside_every_block_go_with_the_first_block():
    ctx = train_context(four_block_backbone())
    names = names_by_id(ctx)
    by_group = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in groups_of(ctx)}
    assert by_group["block0_b0"] == sorted(["backbone.stem.weight", "backbone.stem.bias", "backbone.b0.weight",
                                            "backbone.b0.bias", "backbone.norm.weight", "backbone.norm.bias"])
    assert by_group["block3_b3+extra"] == sorted(["backbone.b3.weight", "backbone.b3.bias",
                                                  "backbone.extra.weight", "backbone.extra.bias"])
    assert by_group["head"] == ["head.bias", "head.weight"]


def test_undeclared_blocks_and_div_one():
    backbone = tiny_backbone()
    backbone.blocks = []  # the whole backbone is one block: it learns at lr * backbone_lr_mult
    ctx = train_context(backbone)
    groups = groups_of(ctx, lr=0.1, mult=0.3)
    assert [(g["name"], g["lr"]) for g in groups] == [("block0_backbone", pytest.approx(0.03)), ("head", 0.1)]
    assert_each_parameter_once(ctx, groups)
    flat = groups_of(train_context(), lr=0.1, div=1.0)  # div 1: no spacing at all
    assert [g["lr"] for g in flat] == pytest.approx([0.1, 0.1, 0.1])


def test_defaults_are_fastais_slice():
    component = create("param_groups", "discriminative")
    assert component.div == 10.0
    lrs = [g["lr"] for g in component.groups(train_context(), 0.1, 1.0)]
    assert lrs == pytest.approx([0.01, 0.1, 0.1])  # tiny_backbone: two blocks, lr/10 and lr; then the head


@pytest.mark.parametrize("options, words", [
    ({"div": 0.5}, "div must be a finite number >= 1"),
    ({"div": 0}, "div must be"),
    ({"div": -3}, "div must be"),
    ({"div": float("nan")}, "div must be a finite number"),
    ({"div": float("inf")}, "div must be a finite number"),
    ({"div": "10"}, "div must be a finite number"),
    ({"div": True}, "div must be a finite number"),
    ({"div": None}, "div must be"),
    ({"dvi": 10}, "did you mean 'div'"),
])
def test_bad_options_are_one_line(options, words):
    assert words in rejects("param_groups", "discriminative", **options)


# --------------------------------------------------------------------------- with every head strategy
def context_for(head: str, epochs: int):
    ctx = train_context(classes=["c0", "c1", "c2"], epochs=epochs, snapshot=False)
    if head == "match_classes":  # it copies rows of a source head whose classes it matches by name
        ctx.source_classes = ["c0", "c1", "other"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)
            ctx.source_head = nn.Linear(ctx.backbone.num_features, 3)
    return ctx


@pytest.mark.parametrize("head", BUILTIN_HEADS + ["zero_init"])
def test_with_each_head_strategy(head):
    epochs = 4
    states = strategy_epochs(create("heads", head), epochs=epochs, ctx=context_for(head, epochs),
                             param_groups=create("param_groups", "discriminative", div=4.0), lr=0.1,
                             backbone_lr_mult=0.5)
    assert len(states) == epochs
    for state in states:
        lrs = state.lrs  # the optimizer's groups (weights and biases split): every one named after its block
        assert set(lrs) == {"block0_stage1", "block1_stage2", "head"}
        assert lrs["block0_stage1"] == pytest.approx(0.1 * 0.5 / 4.0)
        assert lrs["block1_stage2"] == pytest.approx(0.1 * 0.5)
        assert lrs["head"] == pytest.approx(0.1)
        assert lrs["block0_stage1"] < lrs["block1_stage2"] <= lrs["head"]  # ordered from input to output
        assert state.changed <= state.trainable, f"epoch {state.epoch}: a frozen parameter changed"
        assert {"head.weight", "head.bias"} <= state.trainable
    assert any(state.changed for state in states)
    if head in ("linear_probe",):
        assert all(not any(n.startswith("backbone.") for n in s.trainable) for s in states)


def test_strategy_epochs_frozen_blocks_keep_their_values_under_gradual_unfreeze():
    states = strategy_epochs(create("heads", "gradual_unfreeze"), epochs=3,
                             param_groups=create("param_groups", "discriminative"))
    stage1 = {"backbone.stage1.0.weight", "backbone.stage1.0.bias"}
    stage2 = {"backbone.stage2.0.weight", "backbone.stage2.0.bias"}
    assert not (states[0].changed & (stage1 | stage2))
    assert not (states[1].changed & stage1) and stage2 <= states[1].trainable
    assert stage1 <= states[2].trainable


# --------------------------------------------------------------------------- a run
@pytest.mark.slow
def test_a_tiny_run_with_discriminative_param_groups(tmp_path):
    summary = run_tiny(tmp_path / "run", epochs=2, param_groups={"name": "discriminative", "div": 4.0})
    finetune = summary["finetune"]
    assert finetune["epochs"] == 2
    assert 0.0 <= finetune["test_accuracy"] <= 1.0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "discriminative" in config and "div: 4.0" in config
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["stage"] == "finetune"] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in records)


def test_run_refuses_a_bad_div_before_training(tmp_path):
    from sftcore import run
    from sftcore.errors import ConfigError
    from sftcore.testing import tiny_config

    with pytest.raises(ConfigError, match=r"param_groups.*div must be a finite number >= 1"):
        run(tiny_config(param_groups={"name": "discriminative", "div": 0.1}), out=tmp_path / "bad")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
