"""Head strategies through the registry: what trains in which epoch, how heads are built
(match_classes, imprint), the optimizer groups (backbone_lr_mult, no decay on norms and biases)
and that a resumed stage freezes and trains exactly what an uninterrupted one does.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sftcore.api import Backbone, BackboneContext, HeadStrategy, ImageSet, TrainContext, freeze, unfreeze
from sftcore._data.batches import Batches, BatchTransform
from sftcore.errors import ConfigError, PluginError
from sftcore._train.model import TransferModel
from sftcore._plugins.manager import get_registry
from sftcore._train.loop import MetricsLog, Performance, Stage, StageParts, _freeze_frozen_norms, begin_epoch, make_optimizer

CPU = torch.device("cpu")
LENET_BLOCKS = ["stage1", "stage2", "fc1", "fc2"]
BUILTIN_HEADS = ["gradual_unfreeze", "imprint", "linear_probe", "logistic", "lp_ft", "match_classes", "ncm", "reinit"]


# --------------------------------------------------------------------------- helpers
def strategy(name: str, **options) -> HeadStrategy:
    return get_registry().get("heads", name).create(**options)


def lenet_backbone() -> Backbone:
    torch.manual_seed(0)
    return get_registry().get("backbones", "lenet").create(BackboneContext(seed=0))


def bn_backbone(blocks=("conv", "bn", "fc")) -> Backbone:
    torch.manual_seed(1)
    features = nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), bn=nn.BatchNorm2d(4), relu=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(4, 6),
    ))
    return Backbone(features=features, num_features=6, input_size=(3, 8, 8), blocks=list(blocks))


def make_ctx(backbone: Backbone, classes=("a", "b", "c"), epochs: int = 4, features=None,
             source_head=None, source_classes=None) -> TrainContext:
    return TrainContext(stage="finetune", backbone=backbone, classes=list(classes), epochs=epochs, device=CPU,
                        seed=0, extract_features=features or (lambda: (torch.zeros(0, 1), torch.zeros(0))),
                        train_batches=lambda: iter(()), source_classes=source_classes, source_head=source_head)


def build(name: str, backbone: Backbone | None = None, epochs: int = 4, **options):
    """``(strategy, ctx, model)`` as the runner wires them: head built first, then the model."""
    backbone = backbone or lenet_backbone()
    strat = strategy(name, **options)
    ctx = make_ctx(backbone, epochs=epochs)
    torch.manual_seed(3)
    ctx.model = TransferModel(backbone, strat.build_head(ctx))
    return strat, ctx, ctx.model


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def names(model: TransferModel, *prefixes: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefixes)}


def everything(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def stage_cfg(epochs: int = 2, lr: float = 0.1, mult: float = 1.0, weight_decay: float = 0.0,
              optimizer: str = "sgd", momentum: float = 0.0) -> dict:
    opt = ({"name": "sgd", "lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": False}
           if optimizer == "sgd" else {"name": "adamw", "lr": lr, "weight_decay": weight_decay, "betas": [0.9, 0.999]})
    return {"optimizer": opt, "schedule": {"name": "none", "warmup_epochs": 0}, "epochs": epochs,
            "backbone_lr_mult": mult, "label_smoothing": 0.0, "select": "last"}


def make_stage(model: TransferModel, ctx: TrainContext, strat: HeadStrategy, cfg: dict, regs=(), log=None,
               checkpoint=None, n: int = 12) -> Stage:
    shape = model.spec.input_size
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g),
                    torch.arange(n) % ctx.num_classes)
    tf = BatchTransform((0.5,) * 3, (0.25,) * 3, None, shape, shape, CPU)
    return Stage(StageParts(name="finetune", cfg=cfg, model=model, ctx=ctx, strategy=strat, regularizers=list(regs),
                 train=Batches(data, 4, CPU, shuffle=True, seed=1), val=None, train_transform=tf,
                 eval_transform=tf, perf=Performance(CPU), log=log or MetricsLog(None), checkpoint=checkpoint))


pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- registry
def test_every_builtin_strategy_is_registered_and_builds_a_linear_head():
    registered = {c.name: c for c in get_registry().list("heads")["heads"]}
    assert set(BUILTIN_HEADS) <= set(registered)
    for name in BUILTIN_HEADS:
        assert registered[name].plugin == "sftcore.heads"
        if name in ("match_classes", "imprint", "ncm", "logistic"):
            continue  # need a source head / training features, tested below (ncm, logistic: test_heads_fast.py)
        strat, ctx, model = build(name)
        assert isinstance(strat, HeadStrategy)
        assert isinstance(model.head, nn.Linear) and model.head.weight.shape == (3, 84)


# --------------------------------------------------------------------------- freeze schedules
def test_reinit_trains_everything_every_epoch():
    strat, ctx, model = build("reinit")
    for epoch in (0, 3, 1):
        freeze(model)
        begin_epoch(strat, epoch, ctx)
        assert trainable(model) == everything(model)


@pytest.mark.slow
def test_nothing_stays_frozen_from_an_earlier_stage():
    """A strategy that freezes nothing itself gets a fully trainable model, whatever ran before."""
    strat, ctx, model = build("linear_probe")
    begin_epoch(strat, 0, ctx)
    assert trainable(model) == {"head.weight", "head.bias"}
    plain = HeadStrategy()  # the base class: on_epoch_start does nothing
    ctx.model = model
    stage = make_stage(model, ctx, plain, stage_cfg(epochs=1))
    stage.run()
    assert stage.history[0]["trainable_params"] == sum(p.numel() for p in model.parameters())


def test_linear_probe_trains_only_the_head_every_epoch():
    strat, ctx, model = build("linear_probe")
    for epoch in (0, 1, 2, 3, 0):
        unfreeze(model)
        begin_epoch(strat, epoch, ctx)
        assert trainable(model) == {"head.weight", "head.bias"}


def test_linear_probe_keeps_frozen_batchnorm_in_eval_mode():
    strat, ctx, model = build("linear_probe", backbone=bn_backbone())
    begin_epoch(strat, 0, ctx)
    model.train()
    assert model.backbone.bn.training  # model.train() switches it on ...
    _freeze_frozen_norms(model)
    assert not model.backbone.bn.training  # ... the loop switches a fully frozen norm off again
    assert model.training and model.head.training and model.backbone.training
    # a norm layer that trains keeps training mode
    strat2, ctx2, model2 = build("reinit", backbone=bn_backbone())
    begin_epoch(strat2, 0, ctx2)
    model2.train()
    _freeze_frozen_norms(model2)
    assert model2.backbone.bn.training


@pytest.mark.slow
def test_linear_probe_stage_leaves_the_backbone_and_its_statistics_alone():
    strat, ctx, model = build("linear_probe", backbone=bn_backbone())
    before = copy.deepcopy(model.state_dict())
    stage = make_stage(model, ctx, strat, stage_cfg(epochs=2, lr=0.5, momentum=0.9))
    stage.run()
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(value, before[key]), key  # weights and running statistics alike
    assert not torch.equal(model.head.weight, before["head.weight"])
    assert [h["trainable_params"] for h in stage.history] == [6 * 3 + 3] * 2


def test_lp_ft_default_probe_is_half_the_epochs():
    strat, ctx, model = build("lp_ft", epochs=5)
    head = {"head.weight", "head.bias"}
    for epoch, expected in [(0, head), (1, head), (2, everything(model)), (3, everything(model)),
                            (4, everything(model))]:
        begin_epoch(strat, epoch, ctx)
        assert trainable(model) == expected, epoch


@pytest.mark.parametrize("probe, epochs, frozen_epochs", [(0, 3, []), (3, 4, [0, 1, 2]), (1, 2, [0]),
                                                          (5, 3, [0, 1, 2])])
def test_lp_ft_explicit_probe_epochs(probe, epochs, frozen_epochs):
    strat, ctx, model = build("lp_ft", epochs=epochs, probe_epochs=probe)
    for epoch in reversed(range(epochs)):  # any order: the state follows from the epoch alone
        begin_epoch(strat, epoch, ctx)
        expected = {"head.weight", "head.bias"} if epoch in frozen_epochs else everything(model)
        assert trainable(model) == expected, epoch


@pytest.mark.parametrize("bad", [-1, 1.5, "2"])
def test_lp_ft_rejects_bad_probe_epochs(bad):
    with pytest.raises(ConfigError, match="probe_epochs must be a non-negative integer"):
        strategy("lp_ft", probe_epochs=bad)


def expected_gradual(model: TransferModel, blocks: list[str], k: int) -> set[str]:
    k = min(k, len(blocks))
    if k == len(blocks):
        return everything(model)
    return names(model, "head.", *(f"backbone.{b}." for b in blocks[len(blocks) - k:]))


@pytest.mark.parametrize("every, per_step", [(1, 1), (2, 1), (1, 2), (3, 2)])
def test_gradual_unfreeze_unfreezes_the_top_blocks(every, per_step):
    strat, ctx, model = build("gradual_unfreeze", epochs=12, every=every, blocks_per_step=per_step)
    assert [n for n, _ in model.blocks()] == LENET_BLOCKS
    for epoch in range(12):
        begin_epoch(strat, epoch, ctx)
        k = (epoch // every) * per_step
        assert strat.unfrozen_blocks(epoch) == k
        assert trainable(model) == expected_gradual(model, LENET_BLOCKS, k), epoch
        assert {"head.weight", "head.bias"} <= trainable(model)


def test_gradual_unfreeze_epoch_by_epoch_for_lenet():
    strat, ctx, model = build("gradual_unfreeze")
    seq = [
        {"head.weight", "head.bias"},
        {"head.weight", "head.bias", "backbone.fc2.0.weight", "backbone.fc2.0.bias"},
        {"head.weight", "head.bias", "backbone.fc2.0.weight", "backbone.fc2.0.bias", "backbone.fc1.0.weight",
         "backbone.fc1.0.bias"},
        everything(model) - {"backbone.stage1.0.weight", "backbone.stage1.0.bias"},
        everything(model),
        everything(model),
    ]
    for epoch, expected in enumerate(seq):
        begin_epoch(strat, epoch, ctx)
        assert trainable(model) == expected, epoch


def test_gradual_unfreeze_freeze_state_depends_only_on_the_epoch():
    strat, ctx, model = build("gradual_unfreeze", every=1)
    reference = {}
    for epoch in range(6):
        begin_epoch(strat, epoch, ctx)
        reference[epoch] = trainable(model)
    for epoch in (3, 1, 5, 0, 2, 4, 3):
        fresh = strategy("gradual_unfreeze", every=1)  # e.g. a resumed run's new instance
        for s in (strat, fresh):
            unfreeze(model) if epoch % 2 else freeze(model)  # whatever came before
            begin_epoch(s, epoch, ctx)
            assert trainable(model) == reference[epoch], epoch


def test_gradual_unfreeze_without_declared_blocks_treats_the_backbone_as_one():
    strat, ctx, model = build("gradual_unfreeze", backbone=bn_backbone(blocks=()))
    assert [n for n, _ in model.blocks()] == ["backbone"]
    begin_epoch(strat, 0, ctx)
    assert trainable(model) == {"head.weight", "head.bias"}
    begin_epoch(strat, 1, ctx)
    assert trainable(model) == everything(model)


def test_gradual_unfreeze_grouped_blocks_and_parameters_outside_blocks():
    # "conv"+"bn" form one block; "fc" is the top block
    strat, ctx, model = build("gradual_unfreeze", backbone=bn_backbone(blocks=(["conv", "bn"], "fc")))
    assert [n for n, _ in model.blocks()] == ["conv+bn", "fc"]
    begin_epoch(strat, 1, ctx)
    assert trainable(model) == {"head.weight", "head.bias", "backbone.fc.weight", "backbone.fc.bias"}
    begin_epoch(strat, 2, ctx)
    assert trainable(model) == everything(model)
    # "bn" is in no block: it unfreezes with the last step
    strat, ctx, model = build("gradual_unfreeze", backbone=bn_backbone(blocks=("conv", "fc")))
    begin_epoch(strat, 1, ctx)
    assert trainable(model) == {"head.weight", "head.bias", "backbone.fc.weight", "backbone.fc.bias"}
    begin_epoch(strat, 2, ctx)
    assert trainable(model) == everything(model)


@pytest.mark.parametrize("key, bad", [("every", 0), ("blocks_per_step", 0), ("every", 1.5), ("every", "2")])
def test_gradual_unfreeze_rejects_bad_options(key, bad):
    with pytest.raises(ConfigError, match=f"{key} must be an integer >= 1"):
        strategy("gradual_unfreeze", **{key: bad})


def test_gradual_unfreeze_frozen_batchnorm_stays_in_eval_until_its_block_unfreezes():
    strat, ctx, model = build("gradual_unfreeze", backbone=bn_backbone(blocks=("conv", "bn", "fc")))
    for epoch, bn_trains in [(0, False), (1, False), (2, True), (3, True), (1, False)]:
        begin_epoch(strat, epoch, ctx)
        model.train()
        _freeze_frozen_norms(model)
        assert model.backbone.bn.training is bn_trains, epoch


# --------------------------------------------------------------------------- resume
class _Interrupt(Exception):
    pass


class _StopAfter(MetricsLog):
    """Raises when the record of epoch ``stop`` (1-based) is written: the checkpoint holds the one before."""

    def __init__(self, stop: int | None):
        super().__init__(None)
        self.stop = stop

    def write(self, record: dict) -> None:
        if record["epoch"] == self.stop:
            raise _Interrupt


@pytest.mark.slow
@pytest.mark.parametrize("name, options", [("gradual_unfreeze", {}), ("lp_ft", {"probe_epochs": 2}),
                                           ("linear_probe", {})])
def test_a_resumed_stage_freezes_and_trains_like_an_uninterrupted_one(tmp_path, name, options):
    epochs = 4
    cfg = stage_cfg(epochs=epochs, lr=0.05, momentum=0.9)

    def fresh(log=None, checkpoint=None):
        strat, ctx, model = build(name, epochs=epochs, **options)
        return make_stage(model, ctx, strat, cfg, log=log, checkpoint=checkpoint,
                          regs=[get_registry().get("regularizers", "l2_sp").create()])

    whole = fresh()
    whole.run()

    ckpt = tmp_path / "last.pt"
    broken = fresh(log=_StopAfter(3), checkpoint=ckpt)
    with pytest.raises(_Interrupt):
        broken.run()
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == 2 and state["batch"] == 0  # two epochs done, the third not saved
    resumed = fresh(checkpoint=ckpt)
    resumed.load_state_dict(state)
    assert resumed.start_epoch == 2
    resumed.run()
    assert [h["trainable_params"] for h in resumed.history] == [h["trainable_params"] for h in whole.history]
    for (n, a), (_, b) in zip(whole.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(a, b), n  # bit-exact: same steps, same RNG, same order
        assert a.requires_grad == b.requires_grad, n


# --------------------------------------------------------------------------- match_classes
SOURCE = ["tench, Tinca tinca", "Goldfish", "great_white-shark", "cat", "dog"]


def match_setup(target, **options):
    torch.manual_seed(0)
    src = nn.Linear(84, len(SOURCE))
    backbone = lenet_backbone()
    strat = strategy("match_classes", **options)
    ctx = make_ctx(backbone, classes=target, source_head=src, source_classes=SOURCE)
    torch.manual_seed(42)
    head = strat.build_head(ctx)
    torch.manual_seed(42)
    fresh = nn.Linear(84, len(target))
    return strat, ctx, src, head, fresh


def test_match_classes_copies_matching_rows_and_leaves_the_rest_fresh():
    target = ["Tinca tinca", "zebra", "GOLDFISH", "great white shark", "Great-White_Shark ", "tench"]
    strat, ctx, src, head, fresh = match_setup(target)
    assert isinstance(head, nn.Linear) and head.weight.shape == (6, 84)
    expected = {0: 0, 2: 1, 3: 2, 4: 2, 5: 0}
    for t in range(len(target)):
        if t in expected:
            assert torch.equal(head.weight[t], src.weight[expected[t]]), target[t]
            assert torch.equal(head.bias[t], src.bias[expected[t]]), target[t]
        else:
            assert torch.equal(head.weight[t], fresh.weight[t]) and torch.equal(head.bias[t], fresh.bias[t])
    assert strat.matched == {"Tinca tinca": SOURCE[0], "GOLDFISH": "Goldfish", "great white shark": SOURCE[2],
                             "Great-White_Shark ": SOURCE[2], "tench": SOURCE[0]}
    assert head.weight.requires_grad and not head.weight.grad_fn  # a leaf, ready to train
    # the source head itself is untouched
    with torch.no_grad():
        head.weight.add_(1.0)
    assert not torch.equal(head.weight[0], src.weight[0])


def test_match_classes_with_no_match_is_a_fresh_head():
    strat, ctx, src, head, fresh = match_setup(["zebra", "okapi"])
    assert torch.equal(head.weight, fresh.weight) and torch.equal(head.bias, fresh.bias)
    assert strat.matched == {}


def test_match_classes_aliases():
    target = ["kitty", "Puppy", "goldfish", "carp"]
    strat, ctx, src, head, fresh = match_setup(target, aliases={"Kitty": "CAT", "puppy": "dog",
                                                                "carp": "Tinca_tinca"})
    assert torch.equal(head.weight[0], src.weight[3]) and torch.equal(head.bias[0], src.bias[3])
    assert torch.equal(head.weight[1], src.weight[4])
    assert torch.equal(head.weight[2], src.weight[1])
    assert torch.equal(head.weight[3], src.weight[0])  # an alias to a synonym
    assert strat.matched == {"kitty": "cat", "Puppy": "dog", "goldfish": "Goldfish", "carp": SOURCE[0]}
    # an alias to a class the source does not have leaves the row fresh
    strat, ctx, src, head, fresh = match_setup(["kitty"], aliases={"kitty": "lion"})
    assert torch.equal(head.weight, fresh.weight) and strat.matched == {}


def test_match_classes_state_dict_round_trip_and_trains_everything():
    strat, ctx, src, head, fresh = match_setup(["cat", "zebra"])
    other = strategy("match_classes")
    other.load_state_dict(strat.state_dict())
    assert other.matched == {"cat": "cat"}
    ctx.model = TransferModel(ctx.backbone, head)
    freeze(ctx.model)
    begin_epoch(strat, 0, ctx)
    assert trainable(ctx.model) == everything(ctx.model)


def test_match_classes_needs_a_source_head_with_class_names():
    backbone = lenet_backbone()
    for src, classes in [(None, None), (None, ["cat"]), (nn.Linear(84, 1), None), (nn.Linear(84, 1), []),
                         (nn.Sequential(nn.Linear(84, 1)), ["cat"])]:
        ctx = make_ctx(backbone, classes=["cat"], source_head=src, source_classes=classes)
        with pytest.raises(ConfigError, match="match_classes needs a source head with class names"):
            strategy("match_classes").build_head(ctx)
    ctx = make_ctx(backbone, classes=["cat"], source_head=nn.Linear(10, 1), source_classes=["cat"])
    with pytest.raises(ConfigError, match="source head takes 10 features, the backbone gives 84"):
        strategy("match_classes").build_head(ctx)


@pytest.mark.slow
def test_match_classes_in_a_run_from_a_pretrain_stage(tmp_path):
    """The runner hands the pretrain head and class names on; the finetune head starts from it."""
    import sftcore

    shapes = {"name": "shapes", "task": "source", "train_per_class": 4, "test_per_class": 1, "size": 16}
    summary = sftcore.run({
        "name": "mc", "device": "cpu", "backbone": {"name": "lenet", "img_size": 16},
        "pretrain": {"dataset": shapes, "epochs": 1, "batch_size": 8},
        "finetune": {"dataset": {**shapes, "labels_per_class": 2}, "epochs": 0, "head": "match_classes",
                     "batch_size": 8},
    }, out=tmp_path / "run")
    pre = torch.load(tmp_path / "run" / "checkpoints" / "pretrain.pt", weights_only=False)
    fin = torch.load(tmp_path / "run" / "checkpoints" / "finetune.pt", weights_only=False)
    assert pre["classes"] == fin["classes"]
    # zero finetune epochs: the finetune head is exactly the matched pretrain head
    assert torch.equal(fin["model"]["head.weight"], pre["model"]["head.weight"])
    assert torch.equal(fin["model"]["head.bias"], pre["model"]["head.bias"])
    assert summary["finetune"]["test_accuracy"] == summary["pretrain"]["test_accuracy"]


# --------------------------------------------------------------------------- imprint
def clusters(classes: int = 4, per_class: int = 20, dim: int = 84, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * 3 + 2  # off the origin, like post-ReLU features
    labels = torch.arange(classes).repeat_interleave(per_class)
    feats = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g)
    return feats, labels


def test_imprint_rows_are_scaled_normalised_class_means():
    feats, labels = clusters()
    strat = strategy("imprint", scale=7.0)
    ctx = make_ctx(lenet_backbone(), classes=["a", "b", "c", "d"], features=lambda: (feats, labels))
    head = strat.build_head(ctx)
    mean_norm = feats.norm(dim=1).mean()
    unit = feats / feats.norm(dim=1, keepdim=True)
    for c in range(4):
        m = unit[labels == c].mean(0)
        torch.testing.assert_close(head.weight[c], m / m.norm() * 7.0 / mean_norm)
    assert torch.equal(head.bias, torch.zeros(4))
    # logits are about scale x cosine similarity for a feature of average length
    logits = head(feats)
    assert torch.equal(logits.argmax(1), labels)
    assert logits.max() <= 7.0 * feats.norm(dim=1).max() / mean_norm + 1e-4


def test_imprint_default_scale_and_a_class_without_examples():
    feats, labels = clusters(classes=3)
    strat = strategy("imprint")
    assert strat.scale == 10.0
    ctx = make_ctx(lenet_backbone(), classes=["a", "b", "c", "unseen"], features=lambda: (feats, labels))
    torch.manual_seed(5)
    head = strat.build_head(ctx)
    torch.manual_seed(5)
    fresh = nn.Linear(84, 4)
    assert torch.equal(head.weight[3], fresh.weight[3])  # no examples: the fresh row stays
    torch.testing.assert_close(head.weight[:3].norm(dim=1), torch.full((3,), 10.0 / feats.norm(dim=1).mean()))
    assert torch.equal(head(feats).argmax(1), labels)


@pytest.mark.parametrize("bad", [0, -1.0, "10"])
def test_imprint_rejects_a_bad_scale(bad):
    with pytest.raises(ConfigError, match="scale must be a positive number"):
        strategy("imprint", scale=bad)


@pytest.mark.slow
def test_imprint_from_real_lenet_features_in_a_run(tmp_path):
    import sftcore

    shapes = {"name": "shapes", "task": "target", "train_per_class": 6, "test_per_class": 1, "size": 16}
    sftcore.run({"name": "imp", "device": "cpu", "backbone": {"name": "lenet", "img_size": 16},
                 "finetune": {"dataset": {**shapes, "val_fraction": 0.0}, "epochs": 0, "head": "imprint",
                              "batch_size": 8}}, out=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "finetune.pt", weights_only=False)
    w, b = state["model"]["head.weight"], state["model"]["head.bias"]
    assert w.shape == (5, 84) and torch.equal(b, torch.zeros(5))
    norms = w.norm(dim=1)
    torch.testing.assert_close(norms, norms[:1].expand(5))  # every row the same length: scale / mean norm


# --------------------------------------------------------------------------- optimizer groups
def groups_by_param(opt: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): g for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_backbone_lr_mult_and_no_decay_on_norms_and_biases(optimizer):
    strat, ctx, model = build("reinit", backbone=bn_backbone())
    stage = make_stage(model, ctx, strat, stage_cfg(lr=0.2, mult=0.1, weight_decay=0.05, optimizer=optimizer))
    by_param = groups_by_param(stage.optimizer)
    assert len(by_param) == len(list(model.parameters()))  # each once
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        lr = 0.2 * 0.1 if name.startswith("backbone.") else 0.2
        assert g["lr"] == pytest.approx(lr), name
        assert g["initial_lr"] == pytest.approx(lr), name
        decays = name in ("backbone.conv.weight", "backbone.fc.weight", "head.weight")
        assert g["weight_decay"] == (0.05 if decays else 0.0), name
    assert {g["name"] for g in stage.optimizer.param_groups} == {"backbone", "head"}
    assert isinstance(stage.optimizer, torch.optim.SGD if optimizer == "sgd" else torch.optim.AdamW)


@pytest.mark.parametrize("name", BUILTIN_HEADS)
def test_every_builtin_strategy_gives_correct_groups(name):
    feats, labels = clusters(classes=3)
    backbone = lenet_backbone()
    torch.manual_seed(0)
    ctx = make_ctx(backbone, features=lambda: (feats, labels), source_head=nn.Linear(84, 2),
                   source_classes=["a", "zzz"])
    strat = strategy(name)
    ctx.model = TransferModel(backbone, strat.build_head(ctx))
    opt = make_optimizer(strat.param_groups(ctx, 0.3, 0.5), stage_cfg(weight_decay=0.1)["optimizer"])
    by_param = groups_by_param(opt)
    for pname, p in ctx.model.named_parameters():
        assert by_param[id(p)]["lr"] == pytest.approx(0.15 if pname.startswith("backbone.") else 0.3), pname
        assert by_param[id(p)]["weight_decay"] == (0.1 if p.ndim > 1 else 0.0), pname


@pytest.mark.slow
def test_backbone_lr_mult_zero_keeps_the_backbone_still():
    strat, ctx, model = build("reinit")
    before = copy.deepcopy(model.state_dict())
    stage = make_stage(model, ctx, strat, stage_cfg(epochs=1, lr=0.5, mult=0.0, momentum=0.9))
    stage.run()
    for key, value in model.state_dict().items():
        same = torch.equal(value, before[key])
        assert same if key.startswith("backbone.") else not same, key


class _Duplicate(HeadStrategy):
    def param_groups(self, ctx, lr, mult):
        return [{"params": list(ctx.model.parameters()), "lr": lr},
                {"name": "again", "params": [ctx.model.head.weight], "lr": lr}]


class _LeavesOut(HeadStrategy):
    def param_groups(self, ctx, lr, mult):
        return [{"name": "head", "params": list(ctx.model.head.parameters()), "lr": lr}]


def test_stage_rejects_a_parameter_in_two_groups_or_left_out():
    strat, ctx, model = build("reinit")
    with pytest.raises(PluginError, match="two optimizer groups"):
        make_stage(model, ctx, _Duplicate(), stage_cfg())
    with pytest.raises(PluginError, match=r"left parameters out of the optimizer: \['backbone.stage1.0.weight'"):
        make_stage(model, ctx, _LeavesOut(), stage_cfg())
