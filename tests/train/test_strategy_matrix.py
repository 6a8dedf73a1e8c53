"""Every built-in head strategy x every built-in regularizer (none, each one, l2 + l2_sp) through
``sftcore.run``: lenet on shapes, a tiny finetune from one shared pretrain checkpoint.

The pretrain checkpoint is made once per module by a real pretrain stage and handed to the
finetune runs as ``backbone.weights`` (with ``pretrain: null``), so match_classes gets its
source head and class names the way a user would give them.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import sftcore
from sftcore._plugins.manager import get_registry


pytestmark = pytest.mark.usefixtures("one_thread")


def _builtin(kind: str) -> list[str]:
    return [c.name for c in get_registry().list(kind)[kind] if c.plugin.startswith("sftcore.")]


HEADS = _builtin("heads")
REGULARIZERS = _builtin("regularizers")
REG_SETS = [[], *[[r] for r in REGULARIZERS], ["l2", "l2_sp"]]

TINY = {"train_per_class": 8, "test_per_class": 4, "size": 32}
SOURCE = {"name": "shapes", "task": "source", **TINY}
# target classes named after source ones (aliases) so that match_classes copies some rows
ALIASES = {"star": "plus filled", "crescent": "semicircle outline", "ellipse": "circle filled"}
HEAD_PARAMS = 84 * 5 + 5
FC2_PARAMS = 120 * 84 + 84


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def finite(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("pretrain") / "run"
    try:
        summary = sftcore.run({"name": "pre", "seed": 0, "seeds": 1, "device": "cpu", "backbone": "lenet",
                               "pretrain": {"dataset": SOURCE, "epochs": 1, "batch_size": 16}}, out=out)
    finally:
        torch.set_num_threads(threads)
    assert summary["pretrain"]["classes"] == 10
    return out / "checkpoints" / "pretrain.pt"


def head_cfg(name: str) -> dict:
    return {"name": name, "aliases": ALIASES} if name == "match_classes" else {"name": name}


def expected_trainable(head: str, epoch: int, total: int) -> int | None:
    """Trainable parameters in (1-based) ``epoch`` for lenet with a 5-class head, where known exactly."""
    if head in ("linear_probe", "ncm", "logistic") or (head == "lp_ft" and epoch <= 2 // 2):
        return HEAD_PARAMS
    if head == "gradual_unfreeze":
        return {1: HEAD_PARAMS, 2: HEAD_PARAMS + FC2_PARAMS}[epoch]
    return total


@pytest.mark.slow
@pytest.mark.parametrize("regs", REG_SETS, ids=lambda r: "+".join(r) or "none")
@pytest.mark.parametrize("head", HEADS)
def test_head_strategy_with_regularizers(tmp_path, pretrained, head, regs):
    out = tmp_path / "run"
    summary = sftcore.run({
        "name": f"m-{head}", "seed": 1, "seeds": 1, "device": "cpu",
        "backbone": {"name": "lenet", "weights": str(pretrained)},
        "pretrain": None,
        "finetune": {
            "dataset": {"name": "shapes", "task": "target", "labels_per_class": 4, **TINY},
            "head": head_cfg(head), "regularizers": [{"name": r} for r in regs],
            "epochs": 2, "batch_size": 8, "optimizer": {"name": "sgd", "lr": 0.01},
        },
    }, out=out)
    fin = summary["finetune"]
    assert fin["head"] == head and fin["regularizers"] == regs
    assert fin["classes"] == 5 and fin["train_examples"] + fin["val_examples"] == 20 and fin["test_examples"] == 20
    for key in ("test_accuracy", "val_accuracy", "train_accuracy"):
        assert 0.0 <= fin[key] <= 1.0, key
    assert finite(fin["test_loss"]) and finite(fin["train_loss"])
    assert fin["selected_epoch"] in (1, 2)
    assert "pretrain" not in summary and json.loads((out / "summary.json").read_text())["finetune"]["head"] == head

    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2] and {r["stage"] for r in records} == {"finetune"}
    state = torch.load(out / "checkpoints" / "finetune.pt", weights_only=True)
    total = sum(v.numel() for v in state["model"].values())  # lenet has no buffers: every entry is a parameter
    for r in records:
        assert finite(r["train_loss"]) and finite(r["val_loss"])
        assert 0.0 <= r["train_accuracy"] <= 1.0 and 0.0 <= r["val_accuracy"] <= 1.0
        if regs:
            assert finite(r["penalty"]) and r["penalty"] > 0.0  # each penalises the head's weights at least
        else:
            assert r["penalty"] is None
        assert r["trainable_params"] == expected_trainable(head, r["epoch"], total), r

    assert state["classes"] == ["star", "crescent", "arrow", "ell", "ellipse"]
    assert state["model"]["head.weight"].shape == (5, 84)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    if head in ("linear_probe", "ncm", "logistic"):
        pre = torch.load(pretrained, weights_only=True)["model"]
        for k, v in state["model"].items():
            if k.startswith("backbone."):
                assert torch.equal(v, pre[k]), k  # a linear probe never moves the backbone


def test_the_matrix_covers_every_builtin():
    assert set(HEADS) == {"reinit", "linear_probe", "lp_ft", "gradual_unfreeze", "match_classes", "imprint", "ncm",
                          "logistic"}
    assert set(REGULARIZERS) == {"l2", "l2_sp"}


@pytest.mark.slow
def test_match_classes_after_a_real_pretrain_stage_with_baseline(tmp_path):
    """Source and target share class names (both task: source); the pretrain head is handed on."""
    out = tmp_path / "run"
    summary = sftcore.run({
        "name": "mc", "seed": 0, "seeds": 1, "device": "cpu", "backbone": "lenet",
        "pretrain": {"dataset": SOURCE, "epochs": 1, "batch_size": 16},
        "finetune": {"dataset": {**SOURCE, "labels_per_class": 4, "seed": 3}, "head": "match_classes",
                     "regularizers": [{"name": "l2_sp"}], "epochs": 2, "batch_size": 8},
        "baseline": {"name": "scratch", "epochs": 2},
    }, out=out)
    for stage in ("pretrain", "finetune", "baseline"):
        assert 0.0 <= summary[stage]["test_accuracy"] <= 1.0 and finite(summary[stage]["test_loss"])
    assert summary["finetune"]["head"] == "match_classes" and summary["baseline"]["head"] == "reinit"
    assert summary["baseline"]["regularizers"] == []
    records = read_metrics(out)
    assert [(r["stage"], r["epoch"]) for r in records] == [("pretrain", 1), ("finetune", 1), ("finetune", 2),
                                                           ("baseline", 1), ("baseline", 2)]
    assert all(r["penalty"] is None for r in records if r["stage"] != "finetune")
    assert all(r["penalty"] > 0 for r in records if r["stage"] == "finetune")
