"""Helpers for a plugin's own pytest suite: register it for one test, unit-test a component on a tiny
model, run a tiny pipeline with it.

Importing this module imports neither torch nor sftcore's runner; each helper imports what it needs.
The ``sft_plugin`` fixture is defined when pytest is importable; re-export it from a ``conftest.py``
with ``from sftcore.testing import sft_plugin  # noqa: F401``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from .errors import PluginError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ._plugins.manager import PluginInfo
    from .api import AugmentBatch, Backbone, Step, TrainContext

try:
    import pytest
except ImportError:  # pragma: no cover - the helpers below work without pytest
    pytest = None  # type: ignore[assignment]  # optional: the fixture below is defined only with it

__all__ = [
    "registered",
    "sft_plugin",
    "create",
    "rejects",
    "tiny_backbone",
    "train_context",
    "make_step",
    "tiny_config",
    "run_tiny",
    "EpochState",
    "strategy_epochs",
    "reset_commands",
    "registry",
    "augment_batch",
    "build_optimizer",
    "schedule_factors",
]


# --------------------------------------------------------------------------- registration
@contextmanager
def registered(plugin: Any, name: str | None = None, *, check: bool = True) -> Iterator[PluginInfo]:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) for the ``with`` block.

    ``check=True`` runs its hooks at once and raises ``PluginError`` with every problem sftcore
    found (a misspelt hook, a name clash, a hook that raised), instead of a warning a test would
    miss. A plugin that its entry point already loaded (it is pip-installed) is used as it is and
    stays registered afterwards.
    """
    from sftcore._plugins import manager as plugins

    plugins.load_plugins()  # installed plugins first, so that a clash shows up now
    if plugins.pm.is_registered(plugin):
        name = plugins.pm.get_name(plugin)
        assert name is not None  # registered, so pluggy has its name
        info = plugins.plugin_info(name) or plugins.PluginInfo(name)
        _check(info, check)
        yield info
        return
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    try:
        info = plugins.register_plugin(plugin, name)  # may raise (SFTCORE_STRICT_PLUGINS) once registered
        _check(info, check)
        yield info
    finally:
        if plugins.pm.get_plugin(name) is plugin:  # never unregister another plugin that had the name
            plugins.unregister_plugin(name)


def _check(info: PluginInfo, check: bool) -> None:
    from sftcore._plugins import manager as plugins

    if check:
        plugins.get_registry()  # runs the hooks: problems land in info.errors
        if info.errors:
            raise PluginError(f"plugin '{info.name}': " + "; ".join(info.errors))


if pytest is not None:

    @pytest.fixture
    def sft_plugin():
        """``sft_plugin(obj, name=None, check=True)`` registers a plugin until the test ends; returns its info."""
        with ExitStack() as stack:
            yield lambda obj, name=None, check=True: stack.enter_context(registered(obj, name, check=check))
else:  # pragma: no cover
    sft_plugin = None


def registry():
    """Every registered component, as ``sft list`` sees them (``.get(kind, name)``, ``.list(kind)``)."""
    from sftcore._plugins import manager as plugins

    return plugins.get_registry()


def create(kind: str, name: str, *args: Any, **options: Any) -> Any:
    """Build a registered component as the runner does, options checked against the factory's keywords.

    ``kind`` is datasets, backbones, regularizers or heads; ``args`` are the factory's positional
    arguments (the ``DatasetContext`` or ``BackboneContext``).
    """
    from sftcore._plugins import manager as plugins

    return plugins.get_registry().get(kind, name).create(*args, **options)


def rejects(kind: str, name: str, *args: Any, **options: Any) -> str:
    """Assert that a registered component refuses ``options`` with one ``ConfigError`` line; return it.

    Checked as sftcore does: the option names, then the factory's ``validate_options`` (at config
    resolution), then the factory itself (``args`` are its positional arguments, e.g. the
    ``DatasetContext``). A value that slips through would fail later inside torch with a traceback,
    or train on nonsense, so every option deserves a test of its bad values.
    """
    from sftcore._plugins import manager as plugins

    from .errors import ConfigError

    comp = plugins.get_registry().get(kind, name)
    where = f"config: {kind}"
    try:
        comp.check_options(options, where)
        comp.validate(options, where)
        comp.create(*args, where=where, **options)
    except ConfigError as exc:
        message = str(exc)
    else:
        raise AssertionError(f"{kind} '{name}' accepted {options!r}; expected a ConfigError")
    if "\n" in message or not message.strip() or len(message) > 500:
        raise AssertionError(f"{kind} '{name}': the error for {options!r} is not one short line: {message[:500]!r}")
    return message


# --------------------------------------------------------------------------- a tiny model and context
def tiny_backbone(
    *, width: int = 4, in_chans: int = 3, size: int = 8, batchnorm: bool = False, seed: int = 0
) -> Backbone:
    """Two conv stages and global pooling; declares ``blocks`` and ``feature_maps`` (``stage1``, ``stage2``).

    No BatchNorm by default, so the model computes the same in train and eval mode and a
    regularizer that compares with the starting model is exactly 0 at the start.
    """
    import torch
    from torch import nn

    from .api import Backbone

    def stage(cin: int, cout: int) -> nn.Sequential:
        norm = [nn.BatchNorm2d(cout)] if batchnorm else []
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(2))

    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's random state untouched
        torch.manual_seed(seed)
        features = nn.Sequential()
        features.add_module("stage1", stage(in_chans, width))
        features.add_module("stage2", stage(width, 2 * width))
    features.add_module("pool", nn.AdaptiveAvgPool2d(1))
    features.add_module("flatten", nn.Flatten())
    return Backbone(
        features=features,
        num_features=2 * width,
        input_size=(in_chans, size, size),
        blocks=["stage1", "stage2"],
        feature_maps=["stage1", "stage2"],
    )


def train_context(
    backbone: Backbone | None = None,
    *,
    classes: int | Sequence[str] = 3,
    per_class: int = 4,
    batch_size: int = 8,
    head: nn.Module | None = None,
    seed: int = 0,
    stage: str = "finetune",
    epochs: int = 1,
    snapshot: bool = True,
) -> TrainContext:
    """A ``TrainContext`` with its model built, over random data: what ``Regularizer.setup`` sees.

    The data are ``per_class`` standard-normal inputs per class (already "normalised"), labels in
    class order. ``train_batches`` yields them, and ``extract_features`` works on them as in a run. The
    head is a seeded ``nn.Linear`` unless given. ``snapshot=True`` records the start as the loop
    does before calling ``setup``.
    """
    import torch
    from torch import nn

    from ._train.model import TransferModel
    from .api import TrainContext

    backbone = backbone if backbone is not None else tiny_backbone(seed=seed)
    names = [f"c{i}" for i in range(classes)] if isinstance(classes, int) else list(classes)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(names)).repeat_interleave(per_class)
    inputs = torch.randn(len(labels), *backbone.input_size, generator=g)

    def train_batches():
        for i in range(0, len(labels), batch_size):
            yield inputs[i : i + batch_size], labels[i : i + batch_size]

    ctx = TrainContext(
        stage=stage,
        backbone=backbone,
        classes=names,
        epochs=epochs,
        device=torch.device("cpu"),
        seed=seed,
        train_batches=train_batches,
    )
    if head is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            head = nn.Linear(backbone.num_features, len(names))
    ctx.model = TransferModel(backbone, head)
    if snapshot:
        ctx.snapshot()
    return ctx


def make_step(
    ctx: TrainContext, inputs: torch.Tensor | None = None, targets: torch.Tensor | None = None, *, epoch: int = 0
) -> Step:
    """One batch through ``ctx.model`` with feature maps recorded, as the loop hands it to ``penalty``.

    Without ``inputs``, the first batch of ``ctx.train_batches()``.
    """
    import torch

    from .api import Step

    if inputs is None:
        inputs, first = next(iter(ctx.train_batches()))
        targets = first if targets is None else targets
    if targets is None:
        targets = torch.zeros(len(inputs), dtype=torch.long, device=inputs.device)
    model = ctx.model  # a context with its model built, as train_context makes
    logits, features, maps = model.forward_all(inputs, feature_maps=True)
    return Step(ctx, epoch, inputs, targets, logits, features, maps)


def reset_commands() -> None:
    """Make ``sft`` ask the plugins for their commands again on the next lookup, and forget the ones it
    had: ``sft`` loads plugin commands once per process, so a test that registers a plugin adding a
    command calls this before invoking ``sftcore.cli.cli`` (and after, to leave nothing behind)."""
    from .cli import cli

    cli.reset_plugin_commands()


# --------------------------------------------------------------------------- optimizers and schedules
def build_optimizer(name: str, params=None, **options: Any):
    """An optimizer component built as a stage builds it: its options checked (and filled in from its
    defaults) as a config's are, over ``params`` (default: a small weight and bias in one group) with the
    weight decay split off the 1-D parameters. Returns the ``torch.optim.Optimizer``."""
    import torch

    from ._plugins import components
    from ._train.optim import make_optimizer

    if params is None:
        params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(3))]
    entry = components.check({"name": name, **options}, "optimizers", "optimizer", registry(), fill=True)
    return make_optimizer([{"name": "all", "params": list(params), "lr": entry["lr"]}], entry, registry())


def schedule_factors(name: str, *, epochs: int = 3, steps_per_epoch: int = 4, **options: Any) -> list[float]:
    """The lr factor a schedule component gives at each optimizer step of a stage of ``epochs`` x
    ``steps_per_epoch`` steps (its ``ScheduleContext``), its options checked as a config's are: what the
    loop multiplies every group's lr by."""
    from ._plugins import components
    from ._plugins.contracts import ScheduleContext

    entry = components.check({"name": name, **options}, "schedules", "schedule", registry(), fill=True)
    factor = components.build(registry(), "schedules", entry, "schedule", ScheduleContext(epochs, steps_per_epoch))
    return [float(factor(step)) for step in range(epochs * steps_per_epoch)]


# --------------------------------------------------------------------------- a head strategy through the loop
@dataclass
class EpochState:
    """What the loop made of one epoch: the trainable parameters (after the strategy's freezing), the
    optimizer groups as ``{group name: lr}``, and the parameters one optimizer step changed."""

    epoch: int
    trainable: set[str]
    lrs: dict[str, float]
    changed: set[str]


def strategy_epochs(
    strategy: Any,
    *,
    epochs: int = 3,
    ctx: TrainContext | None = None,
    param_groups: Any = None,
    lr: float = 0.1,
    backbone_lr_mult: float = 1.0,
    optimizer: dict | None = None,
    step: bool = True,
) -> list[EpochState]:
    """Run a head strategy (and optionally a ``ParamGroups``) through the loop's own sequence: build
    the head on ``ctx`` (default ``train_context(head=...)`` with the built head), make the optimizer
    groups (checked as the loop checks them), then per epoch unfreeze everything, let the strategy
    freeze, and (``step``) take one optimizer step on the first batch. Nothing is faked: these are the
    functions ``sft run`` calls.
    """
    import torch
    import torch.nn.functional as F

    from ._train.loop import start_epoch
    from ._train.model import TransferModel
    from ._train.optim import make_optimizer, parameter_groups

    ctx = ctx if ctx is not None else train_context(epochs=epochs, snapshot=False)
    ctx.epochs = epochs
    # build_head runs before the model exists, as in a run (ctx: one with its model built)
    model, ctx.model = ctx.model, None  # type: ignore[assignment]
    ctx.model = TransferModel(model.spec, strategy.build_head(ctx))
    plain_sgd = {"name": "sgd", "lr": lr, "momentum": 0.0, "weight_decay": 0.0, "nesterov": False}
    chosen = (
        plain_sgd | (optimizer or {})
        if (optimizer or {}).get("name", "sgd") == "sgd"
        else {"lr": lr, **(optimizer or {})}
    )
    groups = parameter_groups(ctx, chosen["lr"], backbone_lr_mult, strategy, param_groups, ctx.stage)
    opt = make_optimizer(groups, chosen)
    out = []
    for epoch in range(epochs):
        start_epoch(strategy, epoch, ctx)
        trainable = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(opt.param_groups)}
        before = {n: p.detach().clone() for n, p in ctx.model.named_parameters()}
        if step and trainable:
            x, y = next(iter(ctx.train_batches()))
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ctx.model(x), y).backward()
            opt.step()
        changed = {n for n, p in ctx.model.named_parameters() if not torch.equal(before[n], p.detach())}
        out.append(EpochState(epoch, trainable, lrs, changed))
    return out


# --------------------------------------------------------------------------- a tiny run
TINY_DATASET = {"name": "shapes", "task": "target", "train_per_class": 8, "test_per_class": 4, "size": 16}
TINY_SOURCE = {"name": "shapes", "task": "source", "train_per_class": 8, "test_per_class": 4, "size": 16}
TINY_BACKBONE = {"name": "lenet", "img_size": 16}


def augment_batch(
    images: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    classes: int = 3,
    size: int = 8,
    batch: int = 4,
    uint8: bool = False,
    seed: int = 0,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.25, 0.25, 0.25),
) -> AugmentBatch:
    """A training batch as an augmentation's ``__call__`` gets it: ``images`` (default: random RGB
    ``[batch, 3, size, size]``, float in [0, 1], or uint8 with ``uint8=True``), int64 ``targets`` and a
    generator seeded with ``seed``, so two batches made alike draw alike."""
    import torch

    from .api import AugmentBatch

    gen = torch.Generator().manual_seed(seed)
    if images is None:
        images = torch.randint(0, 256, (batch, 3, size, size), generator=gen, dtype=torch.uint8)
        images = images if uint8 else images.float() / 255.0
    if targets is None:
        targets = torch.arange(len(images)) % classes
    return AugmentBatch(
        images,
        targets,
        classes,
        cast("tuple[int, int]", tuple(images.shape[-2:])),
        list(mean),
        list(std),
        torch.Generator(device=images.device).manual_seed(seed),
        (0, len(images), len(images)),
    )


def tiny_config(
    *,
    backbone: str | dict | None = None,
    dataset: str | dict | None = None,
    head: str | dict | None = None,
    regularizers: Sequence[str | dict] = (),
    epochs: int = 1,
    pretrain: bool | dict = False,
    baseline: bool = False,
    **finetune,
) -> dict:
    """A config that runs in about a second on a CPU: the built-in shapes at 16x16 and LeNet by default.

    Name your component in ``backbone``, ``dataset``, ``head`` or ``regularizers``; other keywords
    are finetune stage keys (``batch_size=4``). ``pretrain=True`` adds a one-epoch source stage,
    ``baseline=True`` the scratch baseline (with ``epochs`` epochs). One seed. The pretrain cache is off
    (``pretrain_cache: false``): a test pretrains every time, whatever ran before it.
    """
    stage: dict = {
        "dataset": copy.deepcopy(dataset or TINY_DATASET),
        "epochs": epochs,
        "batch_size": 8,
        "eval_batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.01},
        "regularizers": copy.deepcopy(list(regularizers)),
    }
    if head is not None:
        stage["head"] = copy.deepcopy(head)
    stage.update(copy.deepcopy(finetune))
    cfg: dict = {
        "name": "tiny",
        "seed": 0,
        "seeds": 1,
        "device": "cpu",
        "pretrain_cache": False,
        "backbone": copy.deepcopy(backbone or TINY_BACKBONE),
        "finetune": stage,
    }
    if pretrain:
        cfg["pretrain"] = {
            "dataset": dict(TINY_SOURCE),
            "epochs": 1,
            "batch_size": 16,
            **(copy.deepcopy(pretrain) if isinstance(pretrain, dict) else {}),
        }
    if baseline:
        cfg["baseline"] = {"name": "scratch", "epochs": epochs}  # fixed, not the default epochs: auto
    return cfg


def run_tiny(out: str | Path, **config) -> dict:
    """``sftcore.run(tiny_config(**config), out=out)``: the summary; the run directory is ``out``."""
    from . import run

    return run(tiny_config(**config), out=Path(out))
