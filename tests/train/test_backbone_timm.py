"""The timm backbone: any timm model split into features + source head, weights from a local file.

Everything here is offline: models are built without hub weights, and the one hub test runs in a
child process with HF_HUB_OFFLINE=1 and empty caches, where it must fail with a clear message.
"""

import argparse
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from torch import nn

from sftcore.api import BackboneContext
from sftcore.errors import ConfigError
from sftcore._train.model import TransferModel
from sftcore_plugins.backbones.timm_backbone import timm_backbone

# (model, model_args, fixed input size): a CNN, a ViT at 32 px, and a CNN whose pre-logits
# layer (conv_head) makes the feature width differ from timm's num_features.
FAMILIES = [
    ("resnet10t", None, False),
    ("vit_tiny_patch16_224", {"img_size": 32, "depth": 4}, True),  # 4 of 12 blocks: fast on a CPU
    ("mobilenetv3_small_050", None, False),
]
IDS = [f[0] for f in FAMILIES]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def batch():
    return X


def ctx(random_init=False):
    return BackboneContext(seed=0, random_init=random_init)


def save_reference(path, model, model_args, num_classes=7):
    """A timm model with a 7-row classifier, saved as a plain state dict (as users download them)."""
    torch.manual_seed(1)
    ref = timm.create_model(model, num_classes=num_classes, **(model_args or {})).eval()
    torch.save(ref.state_dict(), path)
    return ref


def resolve_block(features, block):
    names = [block] if isinstance(block, str) else block
    assert names and all(isinstance(n, str) for n in names)
    return [_member(features, n) for n in names]


def _member(features, name):
    """A block names a submodule, or a parameter sitting directly on one (a ViT's cls_token)."""
    try:
        return features.get_submodule(name)
    except AttributeError:
        return features.get_parameter(name)


@pytest.mark.parametrize("model,model_args,fixed", FAMILIES + [("convnext_atto", None, False)],
                         ids=IDS + ["convnext_atto"])
def test_structure(model, model_args, fixed):
    b = timm_backbone(ctx(), model=model, model_args=model_args)
    out = b.features.eval()(batch())
    assert out.shape == (2, b.num_features)
    assert b.head is None and b.source_classes is None  # no weights: no source head
    assert b.mean is None and b.std is None  # no weights: the runner uses the dataset's normalisation
    assert b.fixed_input_size is fixed
    assert b.input_size[0] == 3 and (b.input_size == (3, 32, 32)) == fixed
    assert len(b.blocks) >= 4
    for block in b.blocks:
        resolve_block(b.features, block)
    assert b.feature_maps
    for name in b.feature_maps:
        b.features.get_submodule(name)
    # Blocks are disjoint and in forward order: the first holds the stem, the last the deepest stage.
    flat = [n for blk in b.blocks for n in ([blk] if isinstance(blk, str) else blk)]
    assert len(flat) == len(set(flat))


def test_resnet_blocks_follow_timm_groups():
    b = timm_backbone(ctx(), model="resnet10t")
    assert b.blocks == [["conv1", "bn1"], "layer1", "layer2", "layer3", "layer4"]
    assert b.feature_maps == ["act1", "layer1", "layer2", "layer3", "layer4"]


@pytest.mark.parametrize("model,model_args,fixed", FAMILIES, ids=IDS)
def test_weights_file_keeps_its_head(tmp_path, model, model_args, fixed):
    path = tmp_path / "w.pth"
    ref = save_reference(path, model, model_args)
    b = timm_backbone(ctx(), model=model, weights=str(path), model_args=model_args)
    assert isinstance(b.head, nn.Linear) and b.head.out_features == 7
    assert b.head.in_features == b.num_features
    saved = torch.load(path, weights_only=True)
    key = next(k for k in b.features.state_dict() if k.endswith("weight"))
    assert torch.equal(b.features.state_dict()[key], saved[key])
    # The split is faithful: head(features(x)) is the original model's output.
    b.features.eval()
    with torch.no_grad():
        torch.testing.assert_close(b.head(b.features(batch())), ref(batch()), atol=1e-5, rtol=1e-4)
    assert b.mean == tuple(ref.pretrained_cfg["mean"]) and b.std == tuple(ref.pretrained_cfg["std"])
    assert b.source_classes is None  # 7 unnamed rows
    assert "state_dict" not in b.features.pretrained_cfg  # no second copy of the weights kept around


def test_classes_name_the_head_rows(tmp_path):
    path = tmp_path / "w.pth"
    save_reference(path, "resnet10t", None)
    names = [f"c{i}" for i in range(7)]
    assert timm_backbone(ctx(), model="resnet10t", weights=str(path), classes=names).source_classes == names


def test_other_file_formats(tmp_path):
    """A .safetensors file and a timm training checkpoint (EMA weights first, argparse args inside)."""
    from safetensors.torch import save_file

    ref = save_reference(tmp_path / "w.pth", "resnet10t", None)
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    torch.save({"epoch": 3, "args": argparse.Namespace(lr=0.1), "state_dict": ref.state_dict(),
                "state_dict_ema": {f"module.{k}": v for k, v in ema.items()}}, tmp_path / "train.pth.tar")
    b = timm_backbone(ctx(), model="resnet10t", weights=str(tmp_path / "w.safetensors"))
    assert b.head.out_features == 7 and torch.equal(b.features.conv1[0].weight, ref.conv1[0].weight)
    b = timm_backbone(ctx(), model="resnet10t", weights=str(tmp_path / "train.pth.tar"))
    assert torch.equal(b.head.weight, ema["fc.weight"]) and torch.equal(b.features.conv1[0].weight,
                                                                         ema["conv1.0.weight"])


def test_random_init_ignores_weights(tmp_path):
    path = tmp_path / "w.pth"
    save_reference(path, "resnet10t", None)
    b = timm_backbone(ctx(random_init=True), model="resnet10t", weights=str(path), classes=["x"] * 7)
    assert b.head is None and b.source_classes is None and b.mean is None
    saved = torch.load(path, weights_only=True)
    assert not torch.equal(b.features.state_dict()["layer1.0.conv1.weight"], saved["layer1.0.conv1.weight"])
    # Same architecture as the loaded one (the baseline must differ by weights only).
    loaded = timm_backbone(ctx(), model="resnet10t", weights=str(path))
    assert list(b.features.state_dict()) == list(loaded.features.state_dict())
    assert b.num_features == loaded.num_features and b.blocks == loaded.blocks


def test_vit_weights_at_another_resolution(tmp_path):
    """224-px ViT weights into a 32-px ViT: timm's checkpoint filter resamples the position embedding."""
    path = tmp_path / "vit224.pth"
    ref = save_reference(path, "vit_tiny_patch16_224", {"depth": 2})
    b = timm_backbone(ctx(), model="vit_tiny_patch16_224", weights=str(path), model_args={"img_size": 32, "depth": 2})
    assert b.features.pos_embed.shape == (1, 1 + 2 * 2, 192)
    assert torch.equal(b.features.blocks[1].mlp.fc1.weight, ref.blocks[1].mlp.fc1.weight)
    assert b.features(batch()).shape == (2, 192) and b.head.out_features == 7


def test_imagenet_sized_head_gets_imagenet_names(tmp_path):
    path = tmp_path / "in1k.pth"
    save_reference(path, "resnet10t", None, num_classes=1000)
    b = timm_backbone(ctx(), model="resnet10t", weights=str(path))
    assert b.head.out_features == 1000
    assert len(b.source_classes) == 1000 and b.source_classes[0].startswith("tench")


def test_in_chans_adapts_first_conv(tmp_path):
    path = tmp_path / "w.pth"
    save_reference(path, "resnet10t", None)
    b = timm_backbone(ctx(), model="resnet10t", weights=str(path), in_chans=1)
    assert b.input_size[0] == 1 and len(b.mean) == 1
    assert b.features(torch.randn(2, 1, 32, 32)).shape == (2, 512)


def test_sftcore_checkpoint_loads(tmp_path):
    first = timm_backbone(ctx(), model="mobilenetv3_small_050")
    torch.manual_seed(3)
    tm = TransferModel(first, nn.Linear(first.num_features, 3))
    path = tmp_path / "finetune.pt"
    torch.save({"stage": "finetune", "model": tm.state_dict(), "classes": ["a", "b", "c"], "config": {}}, path)
    b = timm_backbone(ctx(), model="mobilenetv3_small_050", weights=str(path))
    assert b.source_classes == ["a", "b", "c"] and b.head.out_features == 3
    assert torch.equal(b.head.weight, tm.head.weight)
    for k, v in tm.backbone.state_dict().items():
        assert torch.equal(b.features.state_dict()[k], v), k
    assert b.mean is None  # a sftcore checkpoint does not say how it was normalised
    tm.eval()
    b.features.eval()
    with torch.no_grad():
        torch.testing.assert_close(b.head(b.features(batch())), tm(batch()))


def test_sftcore_checkpoint_with_a_non_linear_head_loads_the_backbone(tmp_path):
    first = timm_backbone(ctx(), model="resnet10t")
    tm = TransferModel(first, nn.Sequential(nn.Linear(first.num_features, 8), nn.ReLU(), nn.Linear(8, 3)))
    path = tmp_path / "mlp.pt"
    torch.save({"model": tm.state_dict(), "classes": ["a", "b", "c"]}, path)
    with pytest.warns(UserWarning, match="only the backbone"):
        b = timm_backbone(ctx(), model="resnet10t", weights=str(path))
    assert b.head is None and b.source_classes is None
    assert torch.equal(b.features.conv1[0].weight, tm.backbone.conv1[0].weight)


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_unknown_model():
    with pytest.raises(ConfigError) as exc:
        timm_backbone(ctx(), model="resnt18")
    text = one_line(exc)
    assert "resnt18" in text and "'resnet18'" in text and "timm.list_models(" in text


def test_unknown_tag():
    with pytest.raises(ConfigError) as exc:
        timm_backbone(ctx(), model="resnet10t.nope")
    assert "c3_in1k" in one_line(exc)


@pytest.mark.parametrize("content,match", [(None, "is not a file"), (b"not a checkpoint", "could not be read"),
                                           ("empty", "no state dict")])
def test_bad_weights_file(tmp_path, content, match):
    path = tmp_path / "w.pth"
    if content == "empty":
        torch.save({}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=match) as exc:
        timm_backbone(ctx(), model="resnet10t", weights=str(path))
    assert str(path) in one_line(exc)


def test_weights_for_another_model(tmp_path):
    path = tmp_path / "w.pth"
    save_reference(path, "resnet10t", None)
    with pytest.raises(ConfigError, match="does not fit timm model 'resnet14t'") as exc:
        timm_backbone(ctx(), model="resnet14t", weights=str(path))
    one_line(exc)


def test_option_errors(tmp_path):
    with pytest.raises(ConfigError, match="either pretrained"):
        timm_backbone(ctx(), model="resnet10t", pretrained=True, weights="x.pth")
    with pytest.raises(ConfigError, match="set by the backbone itself; use the backbone option in_chans"):
        timm_backbone(ctx(), model="resnet10t", model_args={"in_chans": 1})
    with pytest.raises(ConfigError, match="model_args: timm model 'resnet10t' does not take"):
        timm_backbone(ctx(), model="resnet10t", model_args={"img_size": 32})
    with pytest.raises(ConfigError, match="classes"):
        timm_backbone(ctx(), model="resnet10t", classes=["a"])  # no weights, no head to name
    path = tmp_path / "w.pth"
    save_reference(path, "resnet10t", None)
    with pytest.raises(ConfigError, match="2 names but the weights' classifier has 7 rows"):
        timm_backbone(ctx(), model="resnet10t", weights=str(path), classes=["a", "b"])


OFFLINE_SCRIPT = """
from sftcore.api import BackboneContext
from sftcore.errors import SftError
from sftcore_plugins.backbones.timm_backbone import timm_backbone
try:
    timm_backbone(BackboneContext(seed=0), model="resnet10t", pretrained=True)
except SftError as exc:
    print("ERROR:" + str(exc))
else:
    print("LOADED")
"""


@pytest.mark.slow
def test_pretrained_offline_says_what_to_do(tmp_path):
    """Hub weights with no network and empty caches: one clear error, no hang, no download."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TIMM_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "TORCH_HOME": str(tmp_path / "torch"),
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("ERROR:", "LOADED"))]
    assert lines and lines[0].startswith("ERROR:"), proc.stdout + proc.stderr
    text = lines[0]
    assert "resnet10t" in text and "weights: PATH" in text


@pytest.mark.slow
def test_end_to_end_through_the_runner(tmp_path):
    import sftcore

    path = tmp_path / "w.pth"
    save_reference(path, "resnet10t", None)
    data = {"name": "shapes", "task": "target", "train_per_class": 6, "test_per_class": 2, "size": 32}
    summary = sftcore.run({
        "name": "t", "seed": 0, "seeds": 1, "device": "cpu",
        "backbone": {"name": "timm", "model": "resnet10t", "weights": str(path)},
        "finetune": {"dataset": data, "epochs": 1, "batch_size": 8},
        "baseline": {"name": "scratch", "epochs": 1},
    }, out=tmp_path / "run")
    assert summary["finetune"]["test_accuracy"] is not None
    assert "baseline" in summary
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["name"] == "t"
    # The run's own checkpoint is a sftcore model file: it loads back as timm weights.
    ckpt = tmp_path / "run" / "checkpoints" / "finetune.pt"
    b = timm_backbone(ctx(), model="resnet10t", weights=str(ckpt))
    assert b.head.out_features == 5 and len(b.source_classes) == 5


def test_img_size_resizes_batches_and_builds_fixed_size_models_for_it():
    from sftcore.api import BackboneContext
    from sftcore_plugins.backbones.timm_backbone import timm_backbone

    cnn = timm_backbone(BackboneContext(seed=0), model="resnet10t", img_size=48)
    assert cnn.input_size == (3, 48, 48) and cnn.fixed_input_size
    vit = timm_backbone(BackboneContext(seed=0), model="vit_tiny_patch16_224", img_size=32,
                        model_args={"depth": 1})
    assert vit.input_size == (3, 32, 32)
    assert vit.features(torch.zeros(2, 3, 32, 32)).shape == (2, vit.num_features)
    with pytest.raises(ConfigError, match="img_size"):
        timm_backbone(BackboneContext(seed=0), model="resnet10t", img_size=4)
