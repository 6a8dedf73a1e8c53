"""Run under torchrun by test_distributed.py: checks that need a real process group.

Rank 0 writes what every rank saw to the JSON file named by argv[1]; the test asserts on it.
"""

import json
import sys

import torch

from sftcore._runtime import distributed
from sftcore.api import Augment, ImageSet, TrainContext
from sftcore._data.batches import Batches, BatchTransform

import tiny
from sftcore._train.model import TransferModel
from sftcore._plugins.manager import get_registry
from sftcore._train.loop import MetricsLog, Performance, Stage, StageParts, evaluate

CPU = torch.device("cpu")


def lenet():
    return get_registry().get("backbones", "lenet").create(_ctx(), img_size=16)


def _ctx():
    from sftcore.api import BackboneContext

    return BackboneContext(seed=0)


def main(out: str) -> None:
    distributed.setup("cpu")
    rank, world = distributed.rank(), distributed.world_size()
    report: dict = {"world": world}

    # 1. the training order: every example once per epoch across ranks, as one process would take them
    n = 37
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g), torch.arange(n))
    sharded = Batches(data, 8, CPU, shuffle=True, seed=5, sharded=True)
    single = Batches(data, 8, CPU, shuffle=True, seed=5)
    sharded.set_epoch(3)
    single.set_epoch(3)
    mine = [y.tolist() for _, y in sharded]
    every = distributed.all_gather_objects(mine)
    report["sharded_batches"] = [sum((r[b] for r in every), []) for b in range(len(mine))]
    report["single_batches"] = [y.tolist() for _, y in single]
    report["lengths"] = distributed.all_gather_objects(len(sharded))

    # 2. augmentation of one rank's rows equals those rows of the whole batch augmented at once
    tf = BatchTransform((0.5,) * 3, (0.25,) * 3, tiny.augmentations(Augment(crop_padding=3, flip=True)), (3, 16, 16), (3, 16, 16), CPU)
    x, _ = next(iter(sharded))
    part = sharded.part(0)
    gen = torch.Generator().manual_seed(11)
    shard = tf(x, gen, part)
    gathered = torch.cat(distributed.all_gather_objects(shard))
    whole_x = data.images[torch.tensor(report["single_batches"][0])]
    whole = tf(whole_x, torch.Generator().manual_seed(11))
    report["augment_max_diff"] = float((gathered - whole).abs().max())

    # 3. a short stage under DDP: lp_ft switches from probing to full training between the epochs
    reg = get_registry()
    backbone = lenet()
    classes = ["a", "b", "c"]
    labels = torch.arange(24) % 3
    train = ImageSet(torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8, generator=g), labels)
    ctx = TrainContext(stage="finetune", backbone=backbone, classes=classes, epochs=3, device=CPU, seed=1,
                       extract_features=lambda: (None, None), train_batches=lambda: iter(()))
    strategy = reg.get("heads", "lp_ft").create(probe_epochs=1)
    torch.manual_seed(0)
    model = TransferModel(backbone, strategy.build_head(ctx))
    l2sp = reg.get("regularizers", "l2_sp").create()
    cfg = {"optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False},
           "schedule": {"name": "none", "warmup_epochs": 0}, "epochs": 3, "backbone_lr_mult": 0.1,
           "label_smoothing": 0.0, "select": "last"}
    plain = BatchTransform((0.5,) * 3, (0.25,) * 3, None, (3, 16, 16), (3, 16, 16), CPU)
    stage = Stage(StageParts(name="finetune", cfg=cfg, model=model, ctx=ctx, strategy=strategy, regularizers=[l2sp],
                  train=Batches(train, 6, CPU, shuffle=True, seed=2, sharded=True),
                  val=Batches(train, 5, CPU, shuffle=False, sharded=True), train_transform=plain,
                  eval_transform=plain, perf=Performance(CPU), log=MetricsLog(None)))
    stage.run()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    start = torch.cat([v.flatten() for v in ctx.start_state().values()])
    inputs = plain(train.images[:6])
    from sftcore.api import Step

    logits, features, maps = model.forward_all(inputs)
    penalty = float(l2sp.penalty(Step(ctx, 2, inputs, train.labels[:6], logits, features, maps)))
    report["params"] = [t.tolist()[:50] + [float(t.sum())] for t in distributed.all_gather_objects(flat)]
    report["start_sums"] = distributed.all_gather_objects(float(start.double().sum()))
    report["penalties"] = distributed.all_gather_objects(penalty)
    report["history"] = stage.history
    report["moved_backbone"] = distributed.all_gather_objects(
        float((flat[:start.numel()] - start).abs().max()) if flat.numel() == start.numel() else -1.0)

    # 4. batch norm: after a stage, every rank holds rank 0's running statistics (evaluation and the
    #    saved model agree), though each rank updated them on its own slice of the last batch
    from collections import OrderedDict

    from torch import nn

    from sftcore.api import Backbone

    torch.manual_seed(rank)  # a different init per rank: the stage must start from rank 0's
    feats = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 8, 3), bn=nn.BatchNorm2d(8), relu=nn.ReLU(),
                                      pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten()))
    bn_backbone = Backbone(features=feats, num_features=8, input_size=(3, 16, 16))
    bn_ctx = TrainContext(stage="finetune", backbone=bn_backbone, classes=classes, epochs=2, device=CPU, seed=1,
                          extract_features=lambda: (None, None), train_batches=lambda: iter(()))
    bn_model = TransferModel(bn_backbone, nn.Linear(8, 3))
    bn_stage = Stage(StageParts(name="finetune", cfg={**cfg, "epochs": 2}, model=bn_model, ctx=bn_ctx,
                     strategy=reg.get("heads", "reinit").create(), regularizers=[],
                     train=Batches(train, 6, CPU, shuffle=True, seed=2, sharded=True),
                     val=Batches(train, 5, CPU, shuffle=False, sharded=True), train_transform=plain,
                     eval_transform=plain, perf=Performance(CPU), log=MetricsLog(None)))
    bn_stage.run()
    report["bn_state"] = distributed.all_gather_objects(
        [float(v.double().sum()) for v in bn_model.state_dict().values()])

    # 5. sharded evaluation returns the whole set's predictions in order
    ev = evaluate(model, Batches(train, 5, CPU, shuffle=False, sharded=True), plain, Performance(CPU))
    full = model.eval()(plain(train.images)).argmax(1)
    report["eval_same"] = (bool(torch.equal(ev["predicted"], full)) and len(ev["correct"]) == 24
                           and bool(torch.equal(ev["top_k"][:, 0], full)) and ev["top_k_probability"].shape == (24, 3))

    if rank == 0:
        with open(out, "w") as f:
            json.dump(report, f)
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
