"""Every kind of component, declared once. The hook specs, the registry, `sft list`, the config
and docs/hooks.md all read this table: a new kind is one row here, plus its contract in sftcore.api."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str  # plural: the registry's key, `sft list NAME`, the hook register_NAME
    singular: str
    contract: str  # what the factory takes and returns (the hook's docstring, docs/hooks.md)
    context: str | None  # the factory's first positional argument, handed by sftcore (not an option)
    config: str  # where a run config names one

    @property
    def hook(self) -> str:
        return f"register_{self.name}"


KIND_TABLE = (
    Kind("datasets", "dataset", "factory(ctx: DatasetContext, **options) -> DataSplits", "ctx", "<stage>.dataset"),
    Kind("backbones", "backbone", "factory(ctx: BackboneContext, **options) -> Backbone", "ctx", "backbone"),
    Kind("regularizers", "regularizer", "factory(**options) -> Regularizer", None, "<stage>.regularizers"),
    Kind("heads", "head", "factory(**options) -> HeadStrategy", None, "<stage>.head"),
    Kind("param_groups", "param_groups", "factory(**options) -> ParamGroups", None, "<stage>.param_groups"),
    Kind(
        "optimizers",
        "optimizer",
        "factory(param_groups: list[dict], **options) -> torch.optim.Optimizer",
        "param_groups",
        "<stage>.optimizer",
    ),
    Kind(
        "schedules",
        "schedule",
        "factory(ctx: ScheduleContext, **options) -> Callable[[int], float]",
        "ctx",
        "<stage>.schedule",
    ),
    Kind("callbacks", "callback", "factory(**options) -> Callback", None, "callbacks"),
    Kind("augmentations", "augmentation", "factory(**options) -> Augmentation", None, "<stage>.augment"),
    Kind("adapters", "adapter", "factory(**options) -> Adapter", None, "<stage>.adapter"),
    # named by `sft rank`, not by a run config: scores rank candidate backbones before any training
    Kind("scores", "score", "factory(**options) -> Score", None, "sft rank --scores"),
)
KINDS = tuple(k.name for k in KIND_TABLE)
BY_NAME = {k.name: k for k in KIND_TABLE}
# what `sft list` accepts for a kind: the plural, the singular, and dashes for underscores
ALIASES = {
    alias: k.name
    for k in KIND_TABLE
    for alias in {k.name, k.singular, k.name.replace("_", "-"), k.singular.replace("_", "-")}
}
