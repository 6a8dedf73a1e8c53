"""Tiny configs and helpers shared by test_config.py, test_cli.py and test_runner.py.

Everything here runs in well under a second per stage on a CPU: the procedural shapes at
16x16 pixels with 20 training and 10 test images per class, LeNet at ``img_size: 16``.
"""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path

from sftcore import hookimpl

SOURCE_CLASSES = [f"{shape} {style}" for shape in ("circle", "triangle", "square", "plus", "semicircle")
                  for style in ("filled", "outline")]
TARGET_CLASSES = ["star", "crescent", "arrow", "ell", "ellipse"]


def shapes(task: str = "target", **extra) -> dict:
    """A shapes dataset entry: 20 train / 10 test images per class, 16x16 pixels."""
    return {"name": "shapes", "task": task, "train_per_class": 20, "test_per_class": 10, "size": 16, **extra}


def config(*, pretrain=True, finetune=True, baseline=True, **top) -> dict:
    """A complete tiny config: pretrain (source, 10 classes) -> finetune (target, 6 labels/class) -> baseline
    (2 epochs), one seed.

    ``pretrain``/``finetune``: False drops the stage, a dict updates its settings; other keywords
    replace top-level keys (a dict updates a mapping such as ``backbone``).
    """
    cfg: dict = {"name": "tiny", "seed": 0, "seeds": 1, "device": "cpu", "backbone": {"name": "lenet", "img_size": 16}}
    if pretrain:
        cfg["pretrain"] = {"dataset": shapes("source"), "epochs": 1, "batch_size": 32,
                           "optimizer": {"name": "sgd", "lr": 0.05}}
        if isinstance(pretrain, dict):
            cfg["pretrain"].update(copy.deepcopy(pretrain))
    if finetune:
        cfg["finetune"] = {"dataset": shapes("target", labels_per_class=6), "epochs": 2, "batch_size": 8,
                           "optimizer": {"name": "sgd", "lr": 0.02}}
        if isinstance(finetune, dict):
            cfg["finetune"].update(copy.deepcopy(finetune))
    if baseline and finetune:
        # a fixed budget keeps the tests fast; the default (epochs: auto) has tests of its own
        cfg["baseline"] = {"name": "scratch", "epochs": 2} if baseline is True else copy.deepcopy(baseline)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **copy.deepcopy(value)}
        else:
            cfg[key] = copy.deepcopy(value)
    return cfg


def write_yaml(path, data) -> Path:
    import yaml

    path = Path(path)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def read_metrics(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def without_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def accuracies(summary: dict) -> dict:
    return {stage: (summary[stage]["test_accuracy"], summary[stage]["val_accuracy"], summary[stage]["selected_epoch"])
            for stage in ("pretrain", "finetune", "baseline") if summary.get(stage)}


def expected_selection(records: list[dict]) -> int:
    """The epoch `select: best` must pick: highest val_accuracy, ties -> lower val_loss, then earlier."""
    best = None
    for r in records:
        key = (r["val_accuracy"], -r["val_loss"])
        if best is None or key > best[0]:
            best = (key, r["epoch"])
    return best[1]


# --------------------------------------------------------------------------- re-evaluating a saved model
def stage_data(cfg: dict, stage: str, seed: int | None = None):
    """The StageData the runner builds for ``stage`` of a resolved config."""
    from sftcore._plugins.manager import get_registry
    from sftcore._run.pipeline import Pipeline
    from sftcore._data.stage import load_splits, subset_stage_data

    pipe = Pipeline(cfg, None, False, None)
    backbone = pipe.build_backbone(random_init=True)
    seed = cfg["seed"] if seed is None else seed
    splits = load_splits(stage, cfg[stage]["dataset"], backbone, seed, get_registry())
    data = subset_stage_data(splits, stage, cfg[stage]["dataset"], seed)
    return pipe, backbone, data


def evaluate_saved(run_dir, stage: str, split: str = "test") -> dict:
    """Rebuild ``checkpoints/<stage>.pt`` of a run and evaluate it on ``split`` of that stage's data."""
    import torch
    from torch import nn

    from sftcore._config import resolve as cfgmod
    from sftcore._data.batches import Batches, BatchTransform
    from sftcore._train.model import TransferModel
    from sftcore._plugins.manager import get_registry
    from sftcore._train.loop import evaluate

    run_dir = Path(run_dir)
    cfg = cfgmod.resolve(cfgmod.load(run_dir / "config.yaml"), get_registry())
    state = torch.load(run_dir / "checkpoints" / f"{stage}.pt", map_location="cpu", weights_only=True)
    pipe, backbone, data = stage_data(cfg, stage)
    model = TransferModel(backbone, nn.Linear(backbone.num_features, len(data.classes)))
    model.load_state_dict(state["model"])
    model.to(pipe.perf.device)
    eval_tf = BatchTransform(state["mean"], state["std"], None, data.train.image_shape, backbone.input_size,
                             pipe.perf.device)
    batches = Batches(getattr(data, split), cfg[stage]["eval_batch_size"], pipe.perf.device, shuffle=False)
    return evaluate(model, batches, eval_tf, pipe.perf)


# --------------------------------------------------------------------------- a test dataset plugin
def named_dataset(ctx, classes: list | None = None, train_per_class: int = 4, test_per_class: int = 2,
                  size: int = 16):
    """Random images under the given class names (t_named, for tests)."""
    import torch

    from sftcore.api import DataSplits, ImageSet

    names = list(classes or ["a", "b"])
    g = torch.Generator().manual_seed(1234)

    def make(per_class):
        labels = torch.arange(len(names)).repeat_interleave(per_class)
        images = torch.randint(0, 256, (len(labels), 3, size, size), dtype=torch.uint8, generator=g)
        return ImageSet(images, labels)

    return DataSplits(classes=names, train=make(train_per_class), test=make(test_per_class))


def dataset_plugin(**datasets) -> types.ModuleType:
    """A plugin module registering ``name=factory`` datasets (for the ``plugin`` fixture)."""
    mod = types.ModuleType("sft_tiny_test_plugin")

    def register_datasets(register):
        for name, factory in datasets.items():
            register(name, factory)

    mod.register_datasets = hookimpl(register_datasets)
    return mod


def without_epoch_lines(err: str) -> list[str]:
    """stderr's lines less the one-per-epoch progress lines (``finetune epoch 2/3: loss ...``)."""
    import re

    return [line for line in err.strip().splitlines() if not re.match(r"^\S+ epoch \d+/\d+: loss ", line)]


def invoke(*args):
    """``sft ARGS`` through click's CliRunner in this process."""
    from click.testing import CliRunner

    from sftcore.cli import cli

    return CliRunner().invoke(cli, list(map(str, args)), catch_exceptions=True)


def ok(result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def one_error_line(result) -> str:
    """Exit 2 and exactly one stderr line, ``sft: error: ...``, no traceback; returns it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sft: error: "), lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def augmentations(entries) -> list:
    """Built augmentations, as a stage builds them, from an ``Augment`` or ``augment:`` list entries."""
    from sftcore._plugins import components
    from sftcore._plugins.manager import get_registry
    from sftcore.api import Augment

    if isinstance(entries, Augment):
        entries = entries.entries()
    registry = get_registry()
    return [components.build(registry, "augmentations", components.entry(e, f"augment[{i}]"), f"augment[{i}]")
            for i, e in enumerate(entries)]
