"""The contracts of every kind of component: what a factory returns and what it is handed (re-exported
as sftcore.api, the public face). Imports no torch: tensors and modules appear in annotations only."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from sftcore._train.model import TransferModel

MAX_SEED = 2**32 - 1  # the largest seed sftcore takes (config `seed:` and the built-in datasets' seed:)


# --------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class Augment:
    """The short form of a dataset's default augmentation: ``crop`` with this padding, then ``flip``.

    A dataset may instead set ``DataSplits.augment`` to a list of augmentation entries, as a stage's
    ``augment:`` takes them (``[{"name": "crop", "padding": 4}, "flip"]``)."""

    crop_padding: int = 0  # random crop of the original size after zero-padding by this many pixels
    flip: bool = False  # random horizontal flip

    def entries(self) -> list:
        """This default as ``augment:`` list entries."""
        out: list = [{"name": "crop", "padding": self.crop_padding}] if self.crop_padding else []
        return out + (["flip"] if self.flip else [])


# --------------------------------------------------------------------------- augmentations
@dataclass
class AugmentBatch:
    """One training batch as the stage's augmentations see it, in their ``augment:`` order, on the device.

    ``images`` is uint8 ``[B, C, H, W]`` while only ``moves_pixels_only`` augmentations have run (the cheap
    path for crop and flip), then float in [0, 1] with the model's channels. ``targets`` is int64 ``[B]``
    until an augmentation mixes labels (mixup, cutmix) and sets float class probabilities ``[B, classes]``.
    Draw randomness only through ``rand``/``randint``/``randn``: they use the stage's generator, reseeded each
    epoch and checkpointed mid-epoch (so a resumed run augments exactly as the uninterrupted one), and draw
    for the whole global batch, so that under torch.distributed each rank augments its rows as one process
    would."""

    images: torch.Tensor
    targets: torch.Tensor
    num_classes: int
    out_size: tuple[int, int]  # (H, W) the model takes; images are resized to it after the augmentations
    mean: Sequence[float]
    std: Sequence[float]
    generator: torch.Generator
    part: tuple[int, int, int]  # (lo, hi, size): these are rows [lo, hi) of a global batch of size rows

    def _draw(self, fn, shape, **kw):
        lo, hi, size = self.part
        return fn(*kw.pop("args", ()), (size, *shape), generator=self.generator, device=self.images.device, **kw)[lo:hi]

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) numbers, ``[B, *shape]``, one row per image of this batch."""
        import torch

        return self._draw(torch.rand, shape)

    def randn(self, *shape: int) -> torch.Tensor:
        import torch

        return self._draw(torch.randn, shape)

    def randint(self, low: int, high: int, *shape: int) -> torch.Tensor:
        import torch

        return self._draw(torch.randint, shape, args=(low, high))

    def soft_targets(self) -> torch.Tensor:
        """``targets`` as float class probabilities ``[B, classes]`` (one-hot while they are labels)."""
        import torch

        if self.targets.is_floating_point():
            return self.targets
        return torch.nn.functional.one_hot(self.targets, self.num_classes).float()


class Augmentation:
    """A training-time augmentation: ``__call__(batch)`` changes ``batch.images`` (and, for label mixing,
    ``batch.targets``) in place or by assigning new tensors. Batched, on the training device: per-image
    randomness comes from ``batch.rand`` and friends, never from Python's or the global RNG."""

    #: True: it only moves or copies pixels (crop, flip), so it may run on the uint8 batch, before the
    #: conversion to float, while every augmentation before it does too
    moves_pixels_only: bool = False
    #: True: it changes the targets into class probabilities (the loss and train accuracy then use them)
    mixes_labels: bool = False

    def __call__(self, batch: AugmentBatch) -> None:  # pragma: no cover - the contract
        raise NotImplementedError


@dataclass
class ImageSet:
    """Images held in memory as uint8 ``[N, C, H, W]`` with int64 labels ``[N]``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index])

    def to(self, device) -> ImageSet:
        return ImageSet(self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


@dataclass
class FileSet:
    """Images decoded on demand (by DataLoader workers) for data too large to hold in memory.

    ``load(i)`` returns a uint8 ``[C, H, W]`` tensor of ``image_shape``.
    """

    load: Callable[[int], torch.Tensor]
    labels: torch.Tensor
    image_shape: tuple[int, int, int]
    index: torch.Tensor | None = None  # a view onto a subset of the items

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> FileSet:
        base = index if self.index is None else self.index[index]
        return FileSet(self.load, self.labels[index], self.image_shape, base)

    def item(self, i: int) -> torch.Tensor:
        return self.load(int(i if self.index is None else self.index[i]))


@dataclass
class DataSplits:
    """What a dataset factory returns. ``val`` is optional: the runner holds one out of ``train``."""

    classes: list[str]
    train: ImageSet | FileSet
    test: ImageSet | FileSet | None = None
    val: ImageSet | FileSet | None = None
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    # the stage's augmentations unless its config sets `augment:`: an Augment, or a list of entries
    augment: Any = field(default_factory=lambda: Augment(crop_padding=4, flip=True))


@dataclass
class DatasetContext:
    """Handed to a dataset factory as its first argument."""

    seed: int
    input_size: tuple[int, int, int]  # (C, H, W) the backbone takes; datasets of any size resize to it
    stage: str  # "pretrain", "finetune" or "baseline"
    max_memory_bytes: int = 4 << 30  # above this, prefer a FileSet to an ImageSet
    # False: the backbone takes any spatial size, so files that share one size are held at it
    # (``sftcore.api.image_shape_for``); True: every image is resized once to ``input_size``.
    fixed_input_size: bool = True


# --------------------------------------------------------------------------- backbones
@dataclass
class BackboneContext:
    """Handed to a backbone factory as its first argument."""

    seed: int
    random_init: bool = False  # True for the scratch baseline: same architecture, no weights loaded


@dataclass
class Backbone:
    """Every backbone reaches the runner in this one shape: features, then a separate head.

    ``features`` maps a normalised batch ``[N, C, H, W]`` to ``[N, num_features]``.
    ``head`` is the classifier that came with pretrained weights (``None`` if there is none);
    ``source_classes`` names its rows when known. ``blocks`` names submodules of ``features``
    (a name, or a list of names forming one block; a name may also be a parameter sitting directly on a
    module, such as a ViT's ``cls_token``) from input to output (gradual unfreezing, per-block learning
    rates); ``feature_maps`` names the submodules whose outputs are stage feature maps (DELTA-style
    regularizers). ``no_weight_decay`` names parameters of ``features`` (or fnmatch patterns) never
    weight-decayed (timm's ``model.no_weight_decay()``: a ViT's ``cls_token`` and ``pos_embed``); 1-D
    parameters (biases, norm weights) never are anyway.
    """

    features: nn.Module
    num_features: int
    input_size: tuple[int, int, int]
    head: nn.Module | None = None
    source_classes: list[str] | None = None
    blocks: list[str | list[str]] = field(default_factory=list)
    feature_maps: list[str] = field(default_factory=list)
    no_weight_decay: list[str] = field(default_factory=list)
    mean: Sequence[float] | None = None  # normalisation the weights were trained with, if any
    std: Sequence[float] | None = None
    fixed_input_size: bool = True  # False: any spatial size works, no resize needed
    # features' and head's state dicts (no prefixes) -> the state dict of the library's own model, e.g. what
    # timm.create_model(name, num_classes=K) loads with strict=True (`sft export --format safetensors`); it must
    # work from the weights alone (the model may have been rebuilt with random_init). None: no such model.
    native_state_dict: Callable[[dict, dict], dict] | None = None


# --------------------------------------------------------------------------- training
class TrainContext:
    """What head strategies and regularizers see for one training stage.

    The runner fills it in; plugins read from it. ``model`` is ``None`` while
    ``HeadStrategy.build_head`` runs (the head does not exist yet).
    """

    def __init__(
        self,
        *,
        stage: str,
        backbone: Backbone,
        classes: list[str],
        epochs: int,
        device: Any,
        seed: int,
        train_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]],
        extract_features: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
        source_classes: list[str] | None = None,
        source_head: nn.Module | None = None,
        epochs_auto: bool = False,
        val_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | None = None,
    ):
        self.stage = stage
        self.epochs_auto = epochs_auto  # epochs: auto: the stage may stop before ``epochs`` (its cap)
        self.backbone = backbone
        self.classes = classes
        self.epochs = epochs
        self.device = device
        self.seed = seed
        self.source_classes = source_classes
        self.source_head = source_head
        # set by sftcore once the head exists: None only while the head strategy's build_head runs
        self.model: TransferModel = None  # type: ignore[assignment]
        self._extract_features = extract_features
        self._train_batches = train_batches
        self._val_batches = val_batches
        self._start_state: dict | None = None
        self._start_params: dict | None = None
        self._start_model: TransferModel | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def extract_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``[N, D]`` and labels ``[N]`` of the labelled training data, current backbone,
        evaluation transforms, no gradient."""
        if self._extract_features is not None:
            return self._extract_features()
        return self._features_of(self._train_batches)

    def extract_val_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Features ``[N, D]`` and labels ``[N]`` of the stage's validation split (current backbone, evaluation
        transforms, no gradient), or None when it has none: what a head strategy may choose its own
        hyperparameters on (the ``logistic`` head's L2 strength)."""
        return None if self._val_batches is None else self._features_of(self._val_batches)

    def _features_of(self, batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]):
        import torch

        features = self.backbone.features
        was = features.training
        features.eval()
        with torch.inference_mode():
            pairs = [(features(x).float(), y) for x, y in batches()]
        features.train(was)
        return torch.cat([f for f, _ in pairs]), torch.cat([y for _, y in pairs])

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass over the training data as normalised, un-augmented ``(inputs, targets)``, in an
        order shuffled from the stage's seed: the same order at every call, and every class early on
        (image folders store their examples class by class). Read a sample of it, not its head."""
        return self._train_batches()

    def snapshot(self, state: dict | None = None) -> None:
        """Record the model as it is now (or ``state``, when resuming) as the stage's start."""
        if state is None:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._start_state, self._start_params, self._start_model = state, None, None

    def start_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole recorded start (parameters and buffers, for checkpoints), or None before any."""
        return self._start_state

    def start_state(self) -> dict[str, torch.Tensor]:
        """Parameter values at the start of the stage (w⁰), by ``model.named_parameters()`` name."""
        start = self._start_state
        if start is None:
            self.snapshot()
            start = self._start_state
        assert start is not None  # snapshot() records it
        if self._start_params is None:
            self._start_params = {n: start[n] for n, _ in self.model.named_parameters()}
        return self._start_params

    def start_model(self) -> TransferModel:
        """A frozen copy of the model as it was at the start of the stage (made on first use)."""
        if self._start_model is None:
            import copy

            if self._start_state is None:
                self.snapshot()
            model = copy.deepcopy(self.model)
            model.load_state_dict(self._start_state or {})
            model.eval()
            freeze(model)
            self._start_model = model
        return self._start_model


@dataclass
class Step:
    """One training batch as a regularizer sees it."""

    ctx: TrainContext
    epoch: int
    inputs: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    features: torch.Tensor
    feature_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    #: class probabilities ``[B, classes]`` when an augmentation mixed labels (mixup, cutmix); ``targets`` is
    #: then each image's larger share
    soft_targets: torch.Tensor | None = None
    _start: Any = None

    def start_outputs(self) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, features, feature_maps)`` of the stage's starting model on the same inputs."""
        if self._start is None:
            import torch

            with torch.no_grad():
                self._start = self.ctx.start_model().forward_all(self.inputs, feature_maps=True)
        return self._start


class Regularizer:
    """Adds ``penalty(step)`` to the training loss. Regularizers in a list add up."""

    #: set True to receive ``step.feature_maps`` of the current model on every batch
    needs_feature_maps: bool = False

    def setup(self, ctx: TrainContext) -> None:
        """Called once at the start of the stage, after the head is built and before the first step."""

    def penalty(self, step: Step) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float, max_iter: int = 100):
    """A multinomial logistic regression fitted by L-BFGS (strong Wolfe line search) from zero weights: the mean
    cross-entropy of ``features @ W.T + b`` for ``labels`` in [0, classes), plus ``l2``/2 * ||W||^2 (the bias is
    not penalised), in the features' dtype and on their device, even when called under no_grad or inference
    mode. Returns ``(W [classes, D], b [classes])``, an ``nn.Linear``'s layout. The ``logistic`` head and the
    ``logistic_accuracy`` score share it."""
    import torch

    with torch.inference_mode(False), torch.enable_grad():
        f, y = features.detach().clone(), labels.detach().clone()  # tensors made in inference mode cannot train
        weight = torch.zeros(f.shape[1], classes, dtype=f.dtype, device=f.device, requires_grad=True)
        bias = torch.zeros(classes, dtype=f.dtype, device=f.device, requires_grad=True)
        optim = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            optim.zero_grad()
            loss = torch.nn.functional.cross_entropy(f @ weight + bias, y) + 0.5 * l2 * weight.pow(2).sum()
            loss.backward()
            return loss

        optim.step(closure)
    return weight.detach().T.contiguous(), bias.detach()


class HeadStrategy:
    """How the classifier head is made and how the network is frozen/unfrozen over epochs.

    The freeze state must follow from ``epoch`` alone (plus ``state_dict``), so that a resumed
    run freezes exactly what the interrupted one had frozen.
    """

    #: True when ``build_head`` makes a usable head from the source model or the data, so that
    #: ``epochs: 0`` (evaluate the transferred model without training) is a meaningful finetune
    usable_untrained: bool = False

    def build_head(self, ctx: TrainContext) -> nn.Module:
        """A new head for ``ctx.num_classes``; the default is a freshly initialised linear layer."""
        from torch import nn

        return nn.Linear(ctx.backbone.num_features, ctx.num_classes)

    def param_groups(self, ctx: TrainContext, lr: float, backbone_lr_mult: float) -> list[dict]:
        """Optimizer parameter groups; the default gives the backbone ``lr * backbone_lr_mult``."""
        return [
            {"name": "backbone", "params": list(ctx.model.backbone.parameters()), "lr": lr * backbone_lr_mult},
            {"name": "head", "params": list(ctx.model.head.parameters()), "lr": lr},
        ]

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        """Freeze parts of ``ctx.model`` for this epoch; the loop unfreezes everything just before."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class ParamGroups:
    """Turns the model into optimizer parameter groups, whatever the head strategy (config
    ``<stage>.param_groups``). Every parameter of ``ctx.model`` goes into exactly one group, frozen
    ones included: the head strategy freezes per epoch, and a frozen parameter is simply not stepped."""

    def groups(self, ctx: TrainContext, lr: float, backbone_lr_mult: float) -> list[dict]:
        """``[{"name": ..., "params": [...], "lr": ...}, ...]``; ``lr`` is the optimizer's, before the
        schedule. sftcore then takes weight decay off biases and norm weights (1-D parameters)."""
        raise NotImplementedError


@dataclass
class ScheduleContext:
    """Handed to a schedule factory as its first argument. A schedule returns ``factor(step)``: the
    multiple of each group's lr at optimizer step ``step`` (from 0), called once per step."""

    epochs: int  # the stage's epochs (max_epochs under epochs: auto)
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return max(1, self.epochs * self.steps_per_epoch)


# --------------------------------------------------------------------------- callbacks
@dataclass
class RunInfo:
    """What a callback is told about the run (``on_run_start``, ``on_run_end``)."""

    config: dict  # the resolved config
    run_dir: Any = None  # pathlib.Path of the run directory (None when a run writes none)
    seeds: list[int] = field(default_factory=list)
    resumed: bool = False  # continued with --resume


STAGES = ("pretrain", "finetune", "baseline")  # the stages a run trains, in order (StageInfo.stage is one)


@dataclass
class StageInfo:
    """What a callback is told about one stage of one seed. ``history`` holds the epoch records so far
    (the lines of metrics.jsonl); ``model`` is the ``TransferModel`` being trained."""

    name: str  # names the stage's files and log lines: "finetune", "finetune-seed1"
    stage: str  # "pretrain", "finetune" or "baseline"
    seed: int
    epochs: int  # the most epochs the stage trains (max_epochs under epochs: auto)
    config: dict  # the stage's resolved config
    run: RunInfo
    model: Any = None
    history: list[dict] = field(default_factory=list)
    has_validation: bool = False
    stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """End the stage after the current epoch (early stopping); ``reason`` goes into its result."""
        self.stop_reason = self.stop_reason or str(reason)


class Callback:
    """Told of training events, in the order of the config's ``callbacks:`` list. Override only what
    you need: the per-step events cost nothing unless a callback defines them.

    Callbacks run on rank 0 only under torch.distributed, unless ``all_ranks`` is True; a stop requested
    on rank 0 stops every rank. An exception switches the callback off for the rest of the run with
    one warning line (the run goes on), except an ``sftcore.errors.SftError`` such as ``ConfigError``,
    which stops the run with its one line (on every rank). ``state_dict`` goes into the stage's
    checkpoints under the callback's place and type, so ``--resume`` restores it: keep it to tensors,
    numbers, strings, None, lists and dicts (what a checkpoint reloads safely); anything else switches
    the callback off.
    """

    all_ranks: bool = False

    def on_run_start(self, run: RunInfo) -> None: ...

    def on_stage_start(self, stage: StageInfo) -> None: ...

    def on_epoch_start(self, stage: StageInfo, epoch: int) -> None:
        """``epoch`` counts from 1, as in the epoch records."""

    def on_step_start(self, stage: StageInfo, epoch: int, step: int) -> None:
        """Before optimizer step ``step`` (from 0) of the epoch; defining it costs a call per batch."""

    def on_step_end(self, stage: StageInfo, epoch: int, step: int, loss: torch.Tensor) -> None:
        """After the step. ``loss`` is a device tensor: ``loss.item()`` waits for the device, so read it
        every N steps, not every step, on a GPU."""

    def on_epoch_end(self, stage: StageInfo, record: dict) -> None:
        """``record`` is the epoch's line of metrics.jsonl: train_loss, train_accuracy, val_loss, ..."""

    def on_stage_end(self, stage: StageInfo, result: dict) -> None:
        """``result`` is the stage's entry of the seed: test_accuracy, epochs, selected_epoch, ..."""

    def on_run_end(self, run: RunInfo, summary: dict) -> None:
        """``summary`` is what summary.json holds."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    """Every parameter of ``module`` trainable, except those an adapter pinned (``pinned``): under an adapter,
    a head strategy's "unfreeze the backbone" unfreezes what the adapter left trainable, never its frozen base."""
    keep = pinned(module)
    for p in module.parameters():
        p.requires_grad_(id(p) not in keep)


# the attribute naming, on a module, the names of its own parameters an adapter pinned (a module attribute, not
# one of the parameter's: deepcopy and `.to()` keep it, and the state dict does not see it)
PINNED = "_sft_pinned"


def pin_frozen(module: nn.Module) -> None:
    """Pin every parameter of ``module`` that is frozen now (what an adapter's ``apply`` left frozen)."""
    for m in module.modules():
        frozen = {n for n, p in m.named_parameters(recurse=False) if not p.requires_grad}
        if frozen:
            setattr(m, PINNED, frozenset(getattr(m, PINNED, frozenset()) | frozen))


def pinned(module: nn.Module) -> set[int]:
    """ids of the parameters of ``module`` that an adapter pinned: ``unfreeze`` leaves them frozen."""
    return {
        id(p) for m in module.modules() for n, p in m.named_parameters(recurse=False) if n in getattr(m, PINNED, ())
    }


@dataclass
class Checkpoint:
    """The parts of a sftcore model file (``checkpoints/<stage>.pt`` of an earlier run)."""

    backbone: dict
    head: dict
    classes: list[str] | None
    mean: list[float] | None = None  # the normalisation the weights were trained with
    std: list[float] | None = None


# --------------------------------------------------------------------------- adapters
class Adapter:
    """Parameter-efficient finetuning (config ``<stage>.adapter``): changes a stage's backbone before its head
    strategy builds the head and before the parameter groups and optimizer are made, so it composes with them.

    ``apply(backbone)`` changes ``backbone.features`` in place (adds modules, such as LoRA's low-rank factors)
    and leaves ``requires_grad`` True on exactly the parameters that should train, False on the rest. sftcore
    then *pins* every parameter it left frozen: ``unfreeze`` never makes a pinned parameter trainable again,
    so a head strategy's "unfreeze the backbone" (the loop's reset before each epoch, ``lp_ft`` after its
    probe, ``gradual_unfreeze``) means "unfreeze what the adapter left trainable"; ``freeze`` still freezes
    everything. A bad option or a backbone the adapter cannot change raises one ``SftError`` line.

    ``merge(features)`` returns the features as a plain module computing the same function, for export
    (LoRA folded into the weights); the default returns them unchanged (an adapter that adds no module)."""

    def apply(self, backbone: Backbone) -> None:
        raise NotImplementedError  # pragma: no cover - the contract

    def merge(self, features: nn.Module) -> nn.Module:
        return features


# --------------------------------------------------------------------------- scores
class Score:
    """A transferability score: how well a backbone's features should transfer to a labelled target set,
    computed without training; higher means better transfer (`sft rank` orders candidates by it).

    ``__call__(features, labels, source_probs=None)`` takes float features ``[N, D]`` of the target examples,
    their int64 labels ``[N]`` and, where the backbone came with a classifier, its class probabilities
    ``[N, source classes]`` on the same examples, and returns a Python float. ``needs_source`` says beforehand
    whether the score reads ``source_probs`` (LEEP, NCE): a caller without them reports such a score as
    unavailable instead of calling it, and a call without them raises ``sftcore.errors.ScoreUnavailable``.
    Bad inputs (shapes that disagree, fewer than 2 examples or classes, non-finite values) raise one
    ``sftcore.errors.SftError`` line."""

    #: True: the score needs the source classifier's probabilities (``source_probs`` may not be None)
    needs_source: bool = False

    def __call__(self, features: torch.Tensor, labels: torch.Tensor, source_probs: torch.Tensor | None = None) -> float:
        raise NotImplementedError  # pragma: no cover - the contract


# --------------------------------------------------------------------------- checking options
def suggest(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``word``, or ``""``: for one-line errors."""
    if not isinstance(word, str) or len(word) > 100:  # no name is that long; difflib would crawl over it
        return ""
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


_KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _range_text(low, high, low_open: bool) -> str:
    if low is not None and high is not None and not low_open:
        return f" from {low} to {high}"
    parts = ([f"{'>' if low_open else '>='} {low}"] if low is not None else []) + (
        [f"<= {high}"] if high is not None else []
    )
    return " " + " and ".join(parts) if parts else ""


def check_option(
    name: str,
    value: Any,
    kind: type = int,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: Sequence | None = None,
    none: bool = False,
    where: str | None = None,
) -> Any:
    """Check one option of a component and return it (a float for ``kind=float``); a bad value raises
    a one-line ``ConfigError``: ``{where}.{name} must be an integer from 16 to 512, got 'big'``. Without
    ``where`` (a factory checking its own options) it raises ``sftcore.errors.OptionError``, and sftcore
    names where the component is configured: ``config: finetune.augment[2].size must be ...``.

    Factories are called with whatever the YAML held, so a factory that uses an option without
    checking it fails deep inside torch (or allocates terabytes) instead of naming the option.
    ``kind`` is int, float, bool or str; ints are accepted as floats, booleans never as numbers,
    and every float must be finite (``.nan`` passes every comparison, so it is refused by name).
    ``low``/``high`` bound numbers (``low_open``: ``> low``), ``choices`` lists allowed values,
    ``none`` allows None. A dataset or backbone factory may also carry a ``validate_options``
    attribute, ``validate_options(where, **options)``, built from this: sftcore calls it for a factory of
    every kind when the config is resolved (``sft config show``, the start of ``sft run``), before anything
    is built, with ``where`` naming the config entry.
    """
    import math

    from sftcore.errors import ConfigError, OptionError, show

    if value is None and none:
        return None
    numeric = kind in (int, float)
    ok = (
        isinstance(value, bool)
        if kind is bool
        else not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else kind)
    )
    if kind is float and ok:
        try:
            ok = math.isfinite(float(value))
        except OverflowError:
            ok = False
    in_range = ok and (
        not numeric
        or ((low is None or value > low or (value == low and not low_open)) and (high is None or value <= high))
    )
    if ok and in_range and (choices is None or value in choices):
        return float(value) if kind is float else value
    want = _KIND_NAMES.get(kind, kind.__name__)
    if choices is not None:
        want = "one of " + ", ".join(map(str, choices))
    elif numeric:
        want = ("a finite number" if kind is float else want) + _range_text(low, high, low_open)
    problem = f"must be {want}{' or null' if none else ''}, got {show(value)}"
    raise OptionError(name, problem) if where is None else ConfigError(f"{where}.{name} {problem}")
