"""The built-in lenet backbone and the embedded shapes dataset."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sftcore.api import Backbone, BackboneContext, DatasetContext, DataSplits, ImageSet
from sftcore.errors import ConfigError
from sftcore._train.model import TransferModel
from sftcore._plugins.manager import get_registry


def lenet(random_init: bool = False, **options) -> Backbone:
    torch.manual_seed(0)
    return get_registry().get("backbones", "lenet").create(BackboneContext(seed=0, random_init=random_init),
                                                            **options)


def shapes(seed_ctx: int = 0, **options) -> DataSplits:
    ctx = DatasetContext(seed=seed_ctx, input_size=(3, 32, 32), stage="finetune")
    return get_registry().get("datasets", "shapes").create(ctx, **options)


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- lenet
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("img_size", [16, 28, 32, 64])
def test_lenet_shapes_and_spec(in_chans, img_size):
    bb = lenet(in_chans=in_chans, img_size=img_size)
    assert bb.input_size == (in_chans, img_size, img_size)
    assert bb.num_features == 84 and bb.head is None and bb.source_classes is None
    assert bb.blocks == ["stage1", "stage2", "fc1", "fc2"] and bb.feature_maps == ["stage1", "stage2"]
    assert bb.mean is None and bb.std is None and bb.fixed_input_size
    x = torch.randn(3, in_chans, img_size, img_size)
    feats = bb.features(x)
    assert feats.shape == (3, 84)
    assert (feats >= 0).all()  # ends in a ReLU
    s1 = (img_size - 4) // 2
    s2 = (s1 - 4) // 2
    assert bb.features.stage1(x).shape == (3, 6, s1, s1)
    assert bb.features.fc1[0].in_features == 16 * s2 * s2
    model = TransferModel(bb, nn.Linear(84, 7))
    assert model(x).shape == (3, 7)
    n_params = sum(p.numel() for p in bb.features.parameters())
    assert n_params == (6 * in_chans * 25 + 6) + (16 * 6 * 25 + 16) + (16 * s2 * s2 * 120 + 120) + (120 * 84 + 84)


@pytest.mark.parametrize("img_size", [15, 8, 1])
def test_lenet_rejects_small_images(img_size):
    with pytest.raises(ConfigError, match=f"lenet needs img_size >= 16, got {img_size}"):
        lenet(img_size=img_size)


def test_lenet_rejects_unknown_options():
    with pytest.raises(ConfigError, match="has no option 'depth'"):
        lenet(depth=3)


def test_lenet_init_follows_the_torch_seed():
    a, b = lenet(), lenet()
    for (n, pa), (_, pb) in zip(a.features.named_parameters(), b.features.named_parameters()):
        assert torch.equal(pa, pb), n


def save_checkpoint(path, in_chans=3, img_size=32, classes=("x", "y", "z", "w"), mean=(0.1, 0.2, 0.3),
                    std=(0.4, 0.5, 0.6), head=True):
    """A model file as the runner writes it (``checkpoints/<stage>.pt``)."""
    torch.manual_seed(123)
    bb = lenet(in_chans=in_chans, img_size=img_size)
    torch.manual_seed(123)
    with torch.no_grad():
        for p in bb.features.parameters():
            p.normal_()
    model = TransferModel(bb, nn.Linear(84, len(classes)))
    state = model.state_dict() if head else {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    torch.save({"stage": "pretrain", "model": state, "classes": list(classes), "mean": list(mean),
                "std": list(std), "config": {}}, path)
    return model


def test_lenet_weights_load_a_sftcore_checkpoint(tmp_path):
    path = tmp_path / "pretrain.pt"
    saved = save_checkpoint(path)
    bb = lenet(weights=str(path))
    for (n, a), (_, b) in zip(saved.backbone.state_dict().items(), bb.features.state_dict().items()):
        assert torch.equal(a, b), n
    assert isinstance(bb.head, nn.Linear) and bb.head.out_features == 4
    assert torch.equal(bb.head.weight, saved.head.weight) and torch.equal(bb.head.bias, saved.head.bias)
    assert bb.source_classes == ["x", "y", "z", "w"]
    assert list(bb.mean) == pytest.approx([0.1, 0.2, 0.3]) and list(bb.std) == pytest.approx([0.4, 0.5, 0.6])
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(TransferModel(bb, bb.head)(x), saved(x))


def test_lenet_weights_without_a_head(tmp_path):
    path = tmp_path / "backbone.pt"
    saved = save_checkpoint(path, head=False)
    bb = lenet(weights=str(path))
    assert bb.head is None
    assert torch.equal(bb.features.fc2[0].weight, saved.backbone.fc2[0].weight)


def test_lenet_random_init_ignores_weights(tmp_path):
    path = tmp_path / "pretrain.pt"
    saved = save_checkpoint(path)
    bb = lenet(random_init=True, weights=str(path))
    assert bb.head is None and bb.source_classes is None and bb.mean is None and bb.std is None
    assert not torch.equal(bb.features.stage1[0].weight, saved.backbone.stage1[0].weight)
    assert torch.equal(bb.features.stage1[0].weight, lenet().features.stage1[0].weight)
    lenet(random_init=True, weights=str(tmp_path / "missing.pt"))  # not even read


def test_lenet_weights_errors(tmp_path):
    with pytest.raises(ConfigError, match="weights file .*missing.pt' not found"):
        lenet(weights=str(tmp_path / "missing.pt"))
    path = tmp_path / "grey.pt"
    save_checkpoint(path, in_chans=1)
    with pytest.raises(ConfigError, match=r"does not fit lenet\(in_chans=3, img_size=32\)"):
        lenet(weights=str(path))
    other = tmp_path / "other.pt"
    torch.save({"weights": {}}, other)
    with pytest.raises(ConfigError, match="not a sftcore model file"):
        lenet(weights=str(other))
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="weights file .*junk.pt' is truncated or corrupt"):
        lenet(weights=str(junk))


@pytest.mark.slow
def test_lenet_weights_from_a_real_run(tmp_path):
    import sftcore

    ds = {"name": "shapes", "task": "source", "train_per_class": 3, "test_per_class": 1, "size": 20}
    sftcore.run({"name": "pre", "device": "cpu", "backbone": {"name": "lenet", "img_size": 20},
                 "pretrain": {"dataset": ds, "epochs": 1, "batch_size": 8}}, out=tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "pretrain.pt"
    state = torch.load(ckpt, weights_only=True)
    bb = lenet(img_size=20, weights=str(ckpt))
    assert bb.source_classes == shapes(train_per_class=1, test_per_class=1).classes
    assert list(bb.mean) == pytest.approx([0.5] * 3) and list(bb.std) == pytest.approx([0.25] * 3)
    for k, v in bb.features.state_dict().items():
        assert torch.equal(v, state["model"][f"backbone.{k}"]), k
    assert torch.equal(bb.head.weight, state["model"]["head.weight"])


# --------------------------------------------------------------------------- shapes
def test_shapes_source_and_target_tasks():
    src = shapes(task="source", train_per_class=4, test_per_class=2)
    tgt = shapes(task="target", train_per_class=4, test_per_class=2)
    assert len(src.classes) == 10 and len(tgt.classes) == 5
    assert len(set(src.classes)) == 10 and len(set(tgt.classes)) == 5
    assert set(src.classes).isdisjoint(tgt.classes)
    assert src.val is None and tuple(src.mean) == (0.5,) * 3 and tuple(src.std) == (0.25,) * 3
    assert src.augment.crop_padding == 2 and src.augment.flip
    for splits, k in ((src, 10), (tgt, 5)):
        for part, per in ((splits.train, 4), (splits.test, 2)):
            assert isinstance(part, ImageSet)
            assert part.images.dtype == torch.uint8 and part.images.shape == (k * per, 3, 32, 32)
            assert part.labels.dtype == torch.int64
            assert torch.equal(torch.bincount(part.labels, minlength=k), torch.full((k,), per))
            assert part.images.float().std() > 10  # not blank


def test_shapes_are_deterministic_given_the_seed_and_differ_across_seeds():
    a = shapes(task="target", train_per_class=3, test_per_class=2, seed=5)
    b = shapes(seed_ctx=99, task="target", train_per_class=3, test_per_class=2, seed=5)
    c = shapes(task="target", train_per_class=3, test_per_class=2, seed=6)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.train.labels, b.train.labels)
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images, a.test.images[: len(a.train.images)])
    # train and test never share an image
    train = {bytes(img.numpy()) for img in a.train.images}
    assert not any(bytes(img.numpy()) in train for img in a.test.images)


def test_shapes_size_noise_and_rotation_options():
    small = shapes(task="source", train_per_class=2, test_per_class=1, size=16)
    assert small.train.images.shape == (20, 3, 16, 16)
    quiet = shapes(task="target", train_per_class=2, test_per_class=1, noise=0.0, rotation=0.0)
    loud = shapes(task="target", train_per_class=2, test_per_class=1, noise=0.5, rotation=0.0)
    assert not torch.equal(quiet.train.images, loud.train.images)
    assert torch.equal(quiet.train.labels, loud.train.labels)


@pytest.mark.parametrize("options, message", [
    ({"task": "foo"}, "task must be 'source' or 'target', got 'foo'"),
    ({"size": 8}, "size must be an integer from 16 to 512, got 8"),
    ({"colour": True}, "has no option 'colour'"),
])
def test_shapes_options_are_validated(options, message):
    with pytest.raises(ConfigError, match=message):
        shapes(**options)


@pytest.mark.slow
def test_shapes_task_error_through_the_config(tmp_path):
    import sftcore

    with pytest.raises(ConfigError, match="task must be 'source' or 'target'"):
        sftcore.run({"name": "bad", "device": "cpu", "checkpoints": False,
                     "finetune": {"dataset": {"name": "shapes", "task": "foo"}, "epochs": 1}},
                    out=tmp_path / "run")
