"""A stage's data: the dataset's splits, checked once, then each seed's few-label subset and validation hold-out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sftcore._config.schema import DatasetConfig
from sftcore._plugins import components
from sftcore._plugins.contracts import Augment, Backbone, DatasetContext, DataSplits, FileSet, ImageSet
from sftcore.errors import ConfigError, PluginError

from .batches import few_label_index, holdout_index


@dataclass
class StageData:
    name: str
    classes: list[str]
    train: ImageSet | FileSet
    val: ImageSet | FileSet | None
    test: ImageSet | FileSet | None
    mean: Sequence[float]
    std: Sequence[float]
    augment: Augment  # the full training split is not kept: only the subset trains

    def sizes(self) -> dict:
        return {
            "classes": len(self.classes),
            "train_examples": len(self.train),
            "val_examples": len(self.val) if self.val is not None else 0,
            "test_examples": len(self.test) if self.test is not None else 0,
        }


def _check_set(data, what: str, classes: int, plugin: str) -> None:
    if data is None:
        return
    if not isinstance(data, (ImageSet, FileSet)):
        raise PluginError(
            f"dataset plugin '{plugin}' returned {what} of type {type(data).__name__}, not an ImageSet or FileSet"
        )
    if isinstance(data, ImageSet):
        if data.images.dtype != torch.uint8 or data.images.ndim != 4:
            raise PluginError(
                f"dataset plugin '{plugin}': {what}.images must be uint8 [N, C, H, W], "
                f"got {data.images.dtype} {tuple(data.images.shape)}"
            )
        if len(data.images) != len(data.labels):
            raise PluginError(
                f"dataset plugin '{plugin}': {what} has {len(data.images)} images but {len(data.labels)} labels"
            )
    if data.labels.dtype != torch.int64:
        raise PluginError(f"dataset plugin '{plugin}': {what}.labels must be int64, got {data.labels.dtype}")
    if len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= classes):
        raise PluginError(f"dataset plugin '{plugin}': {what} labels fall outside 0..{classes - 1}")


def _typed(ds_cfg: DatasetConfig | dict) -> DatasetConfig:
    """A stage's ``dataset:``, typed (a resolved config's mapping is read as the declaration says)."""
    return ds_cfg if isinstance(ds_cfg, DatasetConfig) else DatasetConfig.of(ds_cfg)


def load_splits(stage: str, ds_cfg: DatasetConfig | dict, backbone: Backbone, seed: int, registry) -> StageData:
    """The dataset's splits, checked, before any subset: loaded once, then subset for every seed."""
    ds_cfg = _typed(ds_cfg)
    comp = registry.get("datasets", ds_cfg.name)
    context = DatasetContext(
        seed=seed, input_size=backbone.input_size, stage=stage, fixed_input_size=backbone.fixed_input_size
    )
    splits = components.build(registry, "datasets", ds_cfg.entry(), f"{stage}.dataset", context)
    if not isinstance(splits, DataSplits):
        raise PluginError(
            f"dataset '{comp.name}' (plugin '{comp.plugin}') returned {type(splits).__name__}, "
            "not sftcore.api.DataSplits"
        )
    for what in ("train", "val", "test"):
        part = getattr(splits, what)
        _check_set(part, what, len(splits.classes), comp.plugin)
        if part is not None and tuple(part.image_shape) != tuple(splits.train.image_shape):
            raise PluginError(
                f"dataset plugin '{comp.plugin}': {what} images are {tuple(part.image_shape)}, "
                f"train images {tuple(splits.train.image_shape)}; all splits must match"
            )
    present = int(torch.unique(splits.train.labels).numel()) if len(splits.train) else 0
    if len(splits.classes) < 2 or present < 2:  # with one class every prediction is right: 100% says nothing
        raise ConfigError(
            f"config: {stage}.dataset '{comp.name}' has {present} class(es) with training examples; "
            "a classifier needs at least 2"
        )
    want = ds_cfg.labels_per_class
    if want is not None and len(splits.train):
        counts = torch.bincount(splits.train.labels.cpu(), minlength=len(splits.classes))
        have = int(counts.min())
        if have < want:
            short = splits.classes[int(counts.argmin())]
            raise ConfigError(
                f"config: {stage}.dataset.labels_per_class is {want} but class '{short}' has only "
                f"{have} training examples; set labels_per_class to {have} or less"
            )
    _check_train_examples(stage, ds_cfg.train_examples, splits)
    return StageData(
        comp.name, list(splits.classes), splits.train, splits.val, splits.test, splits.mean, splits.std, splits.augment
    )


def subset_stage_data(full: StageData, stage: str, ds_cfg: DatasetConfig | dict, seed: int) -> StageData:
    """The few-label subset and validation hold-out drawn with ``seed``; the test split is shared."""
    ds_cfg, train, val = _typed(ds_cfg), full.train, full.val
    sub = few_label_index(train.labels, seed, ds_cfg.labels_per_class, ds_cfg.fraction, ds_cfg.train_examples)
    if sub is not None:
        train = train.subset(sub)
    if val is None and ds_cfg.val_fraction > 0:
        # Validation comes out of the (few-label) training data, never out of the test split.
        tr, va = holdout_index(train.labels, ds_cfg.val_fraction, seed + 1)
        train, val = train.subset(tr), train.subset(va)
    if len(train) == 0:
        raise ConfigError(f"config: {stage}.dataset '{full.name}' leaves no training examples")
    return StageData(full.name, full.classes, train, val, full.test, full.mean, full.std, full.augment)


def _check_train_examples(stage: str, want: int | None, splits: DataSplits) -> None:
    """``train_examples`` between the number of classes (one each) and the training split's size."""
    if want is None:
        return
    present = int(torch.unique(splits.train.labels).numel())
    if not present <= want <= len(splits.train):
        bound = f"at least {present}, one per class" if want < present else f"at most {len(splits.train)}"
        raise ConfigError(
            f"config: {stage}.dataset.train_examples is {want} but must be {bound} (the training split has "
            f"{len(splits.train)} examples of {present} classes); set train_examples accordingly"
        )


def image_shapes(data: StageData, transform) -> dict:
    """``image_shape`` (``[C, H, W]`` the split's images are held at) and ``input_shape`` (what the model sees)."""
    return {
        "image_shape": [int(v) for v in data.train.image_shape],
        "input_shape": [int(transform.out_channels), *(int(v) for v in transform.out_hw)],
    }


def shapes_text(shapes: dict) -> str:
    """``images 3x32x32, the model sees 3x224x224 (resized ...)``: the line each stage and `sft rank` say."""
    image, model_input = shapes["image_shape"], shapes["input_shape"]
    why = "" if image[1:] == model_input[1:] else " (resized to the backbone's fixed input size on the fly)"
    return f"images {'x'.join(map(str, image))}, the model sees {'x'.join(map(str, model_input))}{why}"
