"""Adapters (parameter-efficient finetuning): what each built-in leaves trainable, the pinning rule that makes
head strategies compose with them, LoRA's numbers against peft's own layer, and tiny runs."""

import copy

import pytest
import torch

from sftcore.api import Adapter, BackboneContext, freeze, unfreeze
from sftcore.errors import ConfigError
from sftcore.testing import create, rejects, tiny_backbone, train_context
from sftcore._plugins.contracts import pin_frozen

peft = pytest.importorskip("peft")


def adapted(name, backbone=None, **options):
    """A backbone with the adapter applied and what it left frozen pinned, as the pipeline does."""
    backbone = backbone if backbone is not None else tiny_backbone()
    adapter = create("adapters", name, **options)
    assert isinstance(adapter, Adapter)
    adapter.apply(backbone)
    pin_frozen(backbone.features)
    return backbone, adapter


def trainable(module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def vit():
    """A 32-px ViT-Tiny with 2 blocks: a real timm transformer that builds in a second on a CPU."""
    from sftcore_plugins.backbones.timm_backbone import timm_backbone

    return timm_backbone(BackboneContext(seed=0), model="vit_tiny_patch16_224", img_size=32, model_args={"depth": 2})


# --------------------------------------------------------------------------- what trains
def test_bitfit_trains_the_biases_only():
    backbone, _ = adapted("bitfit")
    names = {n for n, _ in backbone.features.named_parameters()}
    assert trainable(backbone.features) == {n for n in names if n.endswith(".bias")} != set()


def test_norm_only_trains_the_norm_layers_only():
    backbone, _ = adapted("norm_only", tiny_backbone(batchnorm=True))
    assert trainable(backbone.features) == {"stage1.1.weight", "stage1.1.bias", "stage2.1.weight", "stage2.1.bias"}


def test_norm_only_on_the_vit_trains_its_layer_norms(vit):
    backbone, _ = adapted("norm_only", copy.deepcopy(vit))
    names = trainable(backbone.features)
    assert names and all(".norm" in f".{n}" for n in names)
    assert "blocks.0.norm1.weight" in names and "norm.bias" in names


def test_norm_only_without_norm_layers_is_one_line():
    with pytest.raises(ConfigError, match="no normalisation layer") as info:
        adapted("norm_only")
    assert "\n" not in str(info.value)


def test_lora_trains_its_factors_on_the_target_layers_only(vit):
    backbone, _ = adapted("lora", copy.deepcopy(vit), r=4, target="qkv|fc1|fc2")
    names = trainable(backbone.features)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert {n.split(".lora_")[0].rpartition(".")[2] for n in names} == {"qkv", "fc1", "fc2"}
    # r * (in + out) per wrapped layer: qkv 192 -> 576, fc1 192 -> 768, fc2 768 -> 192, in two blocks
    assert sum(p.numel() for p in backbone.features.parameters() if p.requires_grad) == 2 * 4 * (
        (192 + 576) + (192 + 768) + (768 + 192)
    )


def lenet():
    return create("backbones", "lenet", BackboneContext(seed=0), img_size=16)


def test_lora_without_target_wraps_every_linear_layer():
    backbone, _ = adapted("lora", lenet(), r=2)
    wrapped = {n.split(".lora_")[0] for n in trainable(backbone.features)}
    linear = {n for n, m in lenet().features.named_modules() if isinstance(m, torch.nn.Linear)}
    assert wrapped == linear != set()


# --------------------------------------------------------------------------- one-line errors
@pytest.mark.parametrize(
    "options",
    [{"r": 0}, {"r": 2.5}, {"r": True}, {"alpha": 0}, {"alpha": float("nan")}, {"dropout": 1.5}, {"target": 3},
     {"target": "("}, {"target": []}, {"target": ""}],
)
def test_bad_lora_options_are_one_line(options):
    rejects("adapters", "lora", **options)


def test_a_lora_target_matching_nothing_is_one_line_naming_candidates(vit):
    with pytest.raises(ConfigError) as info:
        adapted("lora", copy.deepcopy(vit), target="q_proj")
    message = str(info.value)
    assert "\n" not in message and "'q_proj'" in message and "blocks.0.attn.qkv" in message


def test_lora_on_a_backbone_without_linear_layers_is_one_line():
    with pytest.raises(ConfigError, match="^lora: the backbone has no Linear layer; its Linear and Conv layers: stage1.0, stage2.0$"):
        adapted("lora")


@pytest.mark.parametrize("name", ["bitfit", "norm_only"])
def test_bitfit_and_norm_only_take_no_options(name):
    rejects("adapters", name, r=1)


# --------------------------------------------------------------------------- pinning: head strategies compose
def test_unfreeze_leaves_what_the_adapter_froze_frozen():
    backbone, _ = adapted("bitfit")
    ctx = train_context(backbone)
    model = ctx.model
    unfreeze(model)  # the loop's reset before every epoch
    assert trainable(model.backbone) == {n for n, _ in model.backbone.named_parameters() if n.endswith(".bias")}
    assert trainable(model.head) == {"weight", "bias"}
    freeze(model)  # freeze still freezes everything
    assert trainable(model) == set()
    copied = copy.deepcopy(model)  # the pins travel with a copy (the stage's start model, a seed's copy)
    unfreeze(copied)
    assert trainable(copied.backbone) == {n for n, _ in model.backbone.named_parameters() if n.endswith(".bias")}


def test_lp_ft_and_gradual_unfreeze_unfreeze_only_what_the_adapter_left_trainable():
    from sftcore._train.loop import begin_epoch

    backbone, _ = adapted("bitfit")
    ctx = train_context(backbone, epochs=4)
    biases = {n for n, _ in ctx.model.backbone.named_parameters() if n.endswith(".bias")}
    lp_ft = create("heads", "lp_ft", probe_epochs=1)
    begin_epoch(lp_ft, 0, ctx)
    assert trainable(ctx.model.backbone) == set()  # probing: the head alone
    begin_epoch(lp_ft, 1, ctx)
    assert trainable(ctx.model.backbone) == biases
    gradual = create("heads", "gradual_unfreeze", every=1)
    begin_epoch(gradual, 1, ctx)  # the top block (stage2) only
    assert trainable(ctx.model.backbone) == {n for n in biases if n.startswith("stage2")}


def test_a_pinned_parameter_named_as_a_block_stays_pinned(vit):
    """A ViT's cls_token is named directly in its blocks: the module holding it keeps the pin."""
    from sftcore._train.model import TransferModel

    backbone, _ = adapted("lora", copy.deepcopy(vit), r=2, target="qkv")
    model = TransferModel(backbone, torch.nn.Linear(backbone.num_features, 3))
    for _, block in model.blocks():
        unfreeze(block)
    assert not backbone.features.cls_token.requires_grad and not backbone.features.pos_embed.requires_grad
    counts = model.parameter_counts()
    lora = sum(p.numel() for n, p in backbone.features.named_parameters() if ".lora_" in n)
    assert counts["trainable_params"] == lora + 3 * backbone.num_features + 3
    assert counts["total_params"] == sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- LoRA's numbers
def test_lora_is_w_plus_alpha_over_r_b_a_as_in_peft_and_merges_to_it(vit):
    backbone, adapter = adapted("lora", copy.deepcopy(vit), r=4, alpha=8.0, target="qkv|fc1|fc2")
    features = backbone.features
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at 0: give it values, so that the update is not zero
        for n, p in features.named_parameters():
            if ".lora_B." in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    layer = features.blocks[1].attn.qkv  # peft's own lora.Linear
    w, a, b = layer.base_layer.weight, layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = w + (8.0 / 4) * b @ a
    torch.testing.assert_close(w + layer.get_delta_weight("default"), expected, rtol=0, atol=1e-6)
    x = torch.randn(5, 192, generator=g)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, expected, layer.base_layer.bias),
                               rtol=1e-5, atol=1e-5)
    merged = adapter.merge(features)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    assert isinstance(merged.blocks[1].attn.qkv, torch.nn.Linear)
    torch.testing.assert_close(merged.blocks[1].attn.qkv.weight, expected, rtol=0, atol=1e-6)
    images = torch.randn(2, 3, 32, 32, generator=g)
    features.eval(), merged.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(images), features(images), rtol=1e-4, atol=1e-4)
    assert features.blocks[1].attn.qkv is layer  # merging copied: the training model is untouched


def test_lora_starts_from_the_backbone_s_own_function(vit):
    backbone, _ = adapted("lora", copy.deepcopy(vit), r=4, target="qkv|fc1|fc2")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    backbone.features.eval(), vit.features.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone.features(images), vit.features(images), rtol=0, atol=0)


def test_layers_peft_cannot_wrap_or_merge_are_one_line():
    from torch import nn

    from sftcore.api import Backbone

    def grouped():
        features = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(144, 8))
        return Backbone(features=features, num_features=8, input_size=(4, 8, 8))

    with pytest.raises(ConfigError, match=r"^lora: peft cannot merge LoRA into grouped convolutions \(0\)"):
        adapted("lora", grouped(), r=4, target="0")
    backbone, _ = adapted("lora", grouped(), r=4, target="2")  # the Linear layer alone is fine
    assert trainable(backbone.features) == {"2.lora_A.default.weight", "2.lora_B.default.weight"}
