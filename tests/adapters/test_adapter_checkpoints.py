"""Compact checkpoints under an adapter: a stage's model and progress files hold only the tensors it can change
plus the sha256 of the frozen base they apply to; sftcore.load rebuilds the base (the backbone as built, or the
run's pretrain model), checks the hash, and a base that differs is one line."""

import copy

import pytest
import torch

import sftcore
from sftcore.api import BackboneContext
from sftcore.errors import ConfigError, SftError
from sftcore.testing import create, tiny_config
from sftcore._plugins.contracts import pin_frozen
from sftcore._rundir import checkpoints
from sftcore._train.model import TransferModel

pytest.importorskip("peft")
LORA = {"name": "lora", "r": 2, "target": "fc1\\.0|fc2\\.0"}


def lora_model(backbone, **options):
    adapter = create("adapters", "lora", **options)
    adapter.apply(backbone)
    pin_frozen(backbone.features)
    return TransferModel(backbone, torch.nn.Linear(backbone.num_features, 10))


def test_a_lora_checkpoint_of_a_vit_tiny_holds_about_a_megabyte():
    """All 12 blocks of ViT-Tiny (5.5M parameters, 22 MB in float32); LoRA r=8 on qkv, fc1 and fc2."""
    from sftcore_plugins.backbones.timm_backbone import timm_backbone

    backbone = timm_backbone(BackboneContext(seed=0), model="vit_tiny_patch16_224", img_size=32)
    full = sum(t.numel() * t.element_size() for t in backbone.features.state_dict().values())
    model = lora_model(backbone, r=8, target="qkv|fc1|fc2")
    compact = checkpoints.model_bytes(model)
    lora = 12 * 8 * ((192 + 576) + (192 + 768) + (768 + 192)) * 4
    assert full > 20e6 and compact < 1.2e6 and compact >= lora
    state = checkpoints.compact({"model": model.state_dict()}, model)
    assert state["frozen_base"]["tensors"] == len(
        [n for n, p in model.named_parameters() if not p.requires_grad and ".lora_" not in n])


def test_a_whole_model_is_written_whole():
    model = TransferModel(create("backbones", "lenet", BackboneContext(seed=0), img_size=16), torch.nn.Linear(84, 3))
    state = {"model": model.state_dict()}
    assert checkpoints.compact(state, model) is state
    assert checkpoints.model_bytes(model) == sum(p.numel() * 4 for p in model.parameters())


def test_loading_fills_the_base_back_only_onto_the_same_base(tmp_path):
    lenet = create("backbones", "lenet", BackboneContext(seed=0), img_size=16)
    model = lora_model(copy.deepcopy(lenet), **{k: v for k, v in LORA.items() if k != "name"})
    state = checkpoints.compact({"model": model.state_dict(), "start_state": model.state_dict()}, model)
    assert not any(k.endswith("fc1.0.base_layer.weight") for k in state["model"])
    same = lora_model(copy.deepcopy(lenet), **{k: v for k, v in LORA.items() if k != "name"})
    checkpoints.load_model(same, state, tmp_path / "f.pt")
    assert state["model"].keys() == state["start_state"].keys() == model.state_dict().keys()
    other = lora_model(create("backbones", "lenet", BackboneContext(seed=1), img_size=16),
                       **{k: v for k, v in LORA.items() if k != "name"})
    with pytest.raises(ConfigError, match="holds only what its adapter trained, for a frozen base with sha256") as info:
        checkpoints.load_model(other, checkpoints.compact({"model": model.state_dict()}, model), tmp_path / "f.pt")
    assert "\n" not in str(info.value)


@pytest.fixture(scope="module")
def pretrained_lora_run(tmp_path_factory):
    """Pretrain, then finetune under LoRA: the finetune's frozen base is the pretrain stage's backbone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("compact") / "run"
    summary = sftcore.run(tiny_config(adapter=LORA, pretrain=True, epochs=1), out=out)
    yield out, summary
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_model_and_progress_files_are_compact_and_load_rebuilds_the_base(pretrained_lora_run):
    run, summary = pretrained_lora_run
    final = torch.load(run / "checkpoints" / "finetune.pt", weights_only=True)
    progress = torch.load(run / "checkpoints" / "finetune-last.pt", weights_only=True)
    assert final["frozen_base"]["start"] == {"pretrain": "pretrain"} and final["frozen_base"]["sha256"]
    for state in (final, progress):
        assert not any(k.endswith("base_layer.weight") or k == "backbone.stage1.0.weight" for k in state["model"])
    assert progress["frozen_base"]["sha256"] == final["frozen_base"]["sha256"]
    bytes_ = sum(t.numel() * t.element_size() for t in final["model"].values())
    assert summary["finetune"]["checkpoint_bytes"] == bytes_ < 4 * summary["finetune"]["total_params"]
    assert summary["pretrain"]["checkpoint_bytes"] == 4 * summary["pretrain"]["total_params"]  # whole, no adapter
    model = sftcore.load(run)
    pretrain = torch.load(run / "checkpoints" / "pretrain.pt", weights_only=True)["model"]
    merged = model.module.backbone.state_dict()
    assert torch.equal(merged["stage1.0.weight"], pretrain["backbone.stage1.0.weight"])  # the base, not merged
    assert not torch.equal(merged["fc1.0.weight"], pretrain["backbone.fc1.0.weight"])  # LoRA folded in


@pytest.mark.slow
def test_a_compact_file_without_its_base_or_used_as_weights_is_one_line(pretrained_lora_run, tmp_path):
    run, _ = pretrained_lora_run
    alone = tmp_path / "finetune.pt"
    alone.write_bytes((run / "checkpoints" / "finetune.pt").read_bytes())
    with pytest.raises(SftError, match="keep checkpoints/pretrain.pt beside it") as info:
        sftcore.load(alone)
    assert "\n" not in str(info.value)
    cfg = tiny_config(backbone={"name": "lenet", "img_size": 16, "weights": str(alone)})
    with pytest.raises(ConfigError, match="holds only the adapter's tensors; export it merged"):
        sftcore.run(cfg, out=tmp_path / "again")
