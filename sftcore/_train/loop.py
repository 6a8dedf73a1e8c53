"""The one training loop. Stages, head strategies, regularizers, parameter groups, optimizers,
schedules and callbacks plug into it; nothing copies it."""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F

from sftcore._config.schema import AUTO_SELECT_MIN_VAL, StageConfig
from sftcore._data.batches import Batches, BatchTransform, augment_chunk, augment_together
from sftcore._plugins.contracts import (
    HeadStrategy,
    ParamGroups,
    Regularizer,
    RunInfo,
    StageInfo,
    Step,
    TrainContext,
    unfreeze,
)
from sftcore._rundir import checkpoints
from sftcore._rundir.outputs import MetricsLog
from sftcore._runtime import distributed
from sftcore._runtime.device import Performance
from sftcore._runtime.interrupt import StopSignals
from sftcore._runtime.rng import rng_state, set_rng_state
from sftcore.errors import Interrupted, PluginError, TrainingError

from .evaluate import evaluate
from .events import NO_EVENTS, Events
from .model import TransferModel
from .optim import make_optimizer, make_scheduler, parameter_groups

__all__ = ["Stage", "auto_epochs", "begin_epoch", "evaluate", "make_optimizer", "MetricsLog", "Performance"]


# epochs: auto (docs/config.md): what "the training loss stopped improving" means, and what is tried
# before giving up: on each plateau the learning rate drops tenfold, at most AUTO_LR_DROPS times
CONVERGED_RELATIVE, CONVERGED_ABSOLUTE, CONVERGED_TRAIN_ACCURACY = 0.01, 1e-3, 0.9
AUTO_LR_DROP, AUTO_LR_DROPS = 0.1, 2


def _plateau(losses: list[float], patience: int) -> bool:
    """The last ``patience`` epochs did not beat the best before them by 1% (and by 0.001)."""
    before, recent = min(losses[:-patience]), min(losses[-patience:])
    return recent >= before - max(CONVERGED_RELATIVE * before, CONVERGED_ABSOLUTE)


def auto_epochs(history: list[dict], patience: int) -> tuple[int, bool]:
    """``epochs: auto`` replayed over the logged epochs: ``(learning-rate drops so far, converged)``.

    Once the training accuracy is at least 0.9, a plateau of the training loss drops the learning
    rate tenfold (twice at most) and is judged afresh from there; a plateau at the lowest rate is
    convergence. Before that, a plateau changes nothing: a scratch model often sits at chance for
    a while before it learns. Derived from the history alone, so a resumed run drops and stops where
    the uninterrupted one did, on every rank alike."""
    drops, start = 0, 0
    for end in range(1, len(history) + 1):
        losses = [h["train_loss"] for h in history[start:end]]
        fitted = history[end - 1]["train_accuracy"] >= CONVERGED_TRAIN_ACCURACY
        if not fitted or len(losses) <= patience or not _plateau(losses, patience):
            continue  # a flat start (a scratch model at chance) keeps the full learning rate
        if drops == AUTO_LR_DROPS:
            return drops, True
        drops, start = drops + 1, end
    return drops, False


def begin_epoch(strategy: HeadStrategy, epoch: int, ctx: TrainContext) -> None:
    """Everything trainable, then the strategy freezes what it wants for this epoch: nothing stays
    frozen from an earlier stage or epoch by accident, and the state follows from the epoch alone."""
    unfreeze(ctx.model)
    strategy.on_epoch_start(epoch, ctx)


def _penalty(regularizer: Regularizer, step: Step) -> torch.Tensor:
    """A regularizer's penalty, checked to be what the loss adds: a scalar tensor (one line, not a TypeError
    deep in autograd, when a plugin returns a float, a string or a vector)."""
    value = regularizer.penalty(step)
    if not isinstance(value, torch.Tensor) or value.ndim != 0:
        shape = f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise PluginError(f"regularizer {type(regularizer).__name__}.penalty returned {shape}, not a scalar tensor")
    return value


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


FROZEN_FEATURES_MAX_BYTES = 2 << 30  # a frozen backbone's cached features of a stage's training split, at most


def _random_in_training(module: torch.nn.Module) -> bool:
    """Whether the module's output in training mode is random or depends on the batch: dropout, stochastic depth
    (timm's ``drop_prob``, torchvision's ``p``), or a batch-norm layer still in training mode."""
    if not module.training:
        return False
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    rates = [getattr(module, name, 0.0) for name in ("p", "drop_prob")]
    return any(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0 for r in rates)


def start_epoch(strategy: HeadStrategy, epoch: int, ctx: TrainContext) -> None:
    """The model as epoch ``epoch`` trains it: the strategy's freezing, train mode, and norm layers whose
    parameters are all frozen kept in eval mode (the loop, `sft lr-find` and sftcore.testing share this)."""
    begin_epoch(strategy, epoch, ctx)
    ctx.model.train()
    _freeze_frozen_norms(ctx.model)


def _freeze_frozen_norms(model: torch.nn.Module) -> None:
    """A norm layer whose parameters are all frozen keeps its running statistics too."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


@dataclass(kw_only=True)
class StageParts:
    """What one stage is made of, assembled by the pipeline (``Pipeline.build_stage``) and handed to
    :class:`Stage` whole: its model and context, the components that plug into the loop, its data and
    the run's services (precision, metrics log, checkpoint file, signals, callbacks)."""

    name: str
    cfg: StageConfig | dict  # a mapping (a resolved stage, or a test's few keys) is read as StageConfig.of
    model: TransferModel
    ctx: TrainContext
    strategy: HeadStrategy
    regularizers: list[Regularizer]
    train: Batches
    val: Batches | None
    train_transform: BatchTransform
    eval_transform: BatchTransform
    perf: Performance
    log: MetricsLog
    checkpoint: Path | None = None
    progress: bool = False
    stop: StopSignals | None = None
    seed: int | None = None
    param_groups: ParamGroups | None = None
    events: Events = NO_EVENTS
    info: StageInfo | None = None
    registry: Any = None  # the component registry (None: the installed plugins)
    say: Callable[[str], None] | None = None  # a line for the user (the pipeline's echo)


class Stage:
    """Trains ``model`` for one stage; everything else plugs in: the head strategy (freezing), parameter
    groups, optimizer, schedule, regularizers (the loss) and callbacks (events, early stopping).

    The loop can stop and continue anywhere between two steps: a checkpoint holds the position
    (epoch and batch), every RNG, the running epoch sums and the callbacks' states, so a resumed run
    takes exactly the steps the uninterrupted one would have taken.
    """

    def __init__(self, parts: StageParts):
        name, cfg, model, ctx, seed = parts.name, parts.cfg, parts.model, parts.ctx, parts.seed
        strategy, regularizers, train, val = parts.strategy, parts.regularizers, parts.train, parts.val
        train_transform, perf, registry, info = parts.train_transform, parts.perf, parts.registry, parts.info
        cfg = cfg if isinstance(cfg, StageConfig) else StageConfig.of(cfg)  # a mapping is read as declared
        self.name, self.cfg, self.model, self.ctx, self.seed = name, cfg, model, ctx, seed
        self.strategy, self.regularizers = strategy, regularizers
        self.train, self.val = train, val
        self.train_transform, self.eval_transform = train_transform, parts.eval_transform
        self.perf, self.log, self.checkpoint, self.progress = perf, parts.log, parts.checkpoint, parts.progress
        self.stop, self.events = parts.stop, parts.events
        ctx.model = model
        self.budget = cfg.budget
        self.select = _select(cfg.select, val)
        groups = parameter_groups(ctx, cfg.lr, cfg.backbone_lr_mult, strategy, parts.param_groups, name)
        self.optimizer = make_optimizer(
            groups, cfg.optimizer.entry(), registry, f"{ctx.stage}.optimizer", exempt=model.no_weight_decay()
        )
        self.lr_scale = 1.0  # epochs: auto lowers it on a plateau of the training loss
        self.scheduler = make_scheduler(
            self.optimizer,
            cfg.schedule.entry(),
            self.budget,
            len(train),
            lambda: self.lr_scale,
            registry,
            f"{ctx.stage}.schedule",
        )
        self.scaler = torch.amp.GradScaler(perf.device.type, enabled=perf.amp_dtype is torch.float16)
        self.needs_maps = any(r.needs_feature_maps for r in regularizers)
        distributed.broadcast_module_(model)  # one starting point (and one w0) on every rank
        if regularizers:
            ctx.snapshot()
        for r in regularizers:
            r.setup(ctx)
        self.generator = torch.Generator(device=perf.device)
        self.chunk = augment_chunk(cfg.augment_chunk, train_transform, train.batch_size, train.world)
        self._drawn: tuple = (0, None, 0)  # the chunk being trained: first batch, generator state there, end
        self.net: torch.nn.Module = model  # what the loop calls: the model, or its DDP wrapper
        self._trainable: tuple | None = None
        self.start_epoch = 0
        self.partial: dict | None = None  # where a mid-epoch checkpoint left off
        self.best: dict | None = None
        self.history: list[dict] = []
        self.info = info or StageInfo(
            name=name,
            stage=ctx.stage,
            seed=ctx.seed if seed is None else seed,
            epochs=self.budget,
            config=cfg.raw,
            run=RunInfo(config={}),
        )
        self.info.model, self.info.history, self.info.epochs = model, self.history, self.budget
        self.say = parts.say or (lambda _line: None)
        self._features: tuple[torch.Tensor, torch.Tensor] | None = None  # a frozen backbone's, computed once
        self._val_features: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # and the validation split's
        self._said_uncached = False
        self._trained: set[str] = set()  # parameters trainable at some epoch of this stage so far
        self._left_out: dict | None = None  # the never-trained parameters' record (checkpoints.left_out)
        self.info.has_validation = val is not None and len(val.data) > 0

    def probe(self) -> None:
        """One batch through the model and every regularizer's ``penalty``, checked as a step checks it but
        without a step: the pipeline asks it of the later stages before pretraining, so that a plugin returning
        the wrong type fails in seconds, not after hours."""
        if not self.regularizers:
            return
        x, y = next(iter(self.train.iter_from(0)))
        inputs, targets = self.train_transform.augmented(x, y, self.generator, None)
        assert targets is not None  # targets in, targets out
        soft = targets.is_floating_point()
        with self.perf.autocast():
            logits, features, maps = self.net(inputs, all_outputs=True, feature_maps=self.needs_maps)
            labels = targets.argmax(1) if soft else targets
            step = Step(self.ctx, 0, inputs, labels, logits, features, maps, soft_targets=targets if soft else None)
            for r in self.regularizers:
                _penalty(r, step)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int, batch: int = 0, sums: list | None = None, rng: list | None = None) -> dict:
        """The stage at the start of batch ``batch`` of epoch ``epoch`` (both counted from 0).

        ``rng`` and ``sums`` hold one entry per rank (one without torch.distributed)."""
        return {
            "stage": self.name,
            "epoch": epoch,
            "batch": batch,
            **self._model_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "regularizers": [r.state_dict() for r in self.regularizers],
            "start_state": self.ctx.start_state_dict(),
            "best": self._without_frozen(self.best),
            "history": self.history,
            "rng": rng if rng is not None else [rng_state()],
            **self._generator_state(batch),
            "sums": sums if batch else None,
            "callbacks": self.events.state_dict(),
            "stopped": self.info.stop_reason,
        }

    def _never_trained(self) -> frozenset:
        """Parameters no epoch made trainable and none received a gradient (one a callback unfroze mid-epoch did)."""
        self._trained.update(n for n, p in self.model.named_parameters() if p.requires_grad or p.grad is not None)
        return frozenset(n for n, _ in self.model.named_parameters() if n not in self._trained)

    def _model_state(self) -> dict:
        """The model's state without the parameters no epoch of this stage has trained (a frozen backbone, an
        adapter's base): they still equal the stage's start, which a resume rebuilds; their names and a digest
        go into the checkpoint so that the resume can check it (a linear probe's checkpoint is the head)."""
        frozen = self._never_trained()
        self._left_out = checkpoints.left_out(dict(self.model.named_parameters()), frozen, self._left_out)
        return {
            "model": checkpoints.without(self.model.state_dict(), frozen),
            "frozen": self._left_out,
            "trained": sorted(self._trained),
        }

    def _without_frozen(self, best: dict | None) -> dict | None:
        if best is None or self._left_out is None:
            return best
        return {**best, "state": checkpoints.without(best["state"], self._left_out["names"])}

    def _whole_best(self, best: dict | None) -> dict | None:
        """A resumed ``select: best`` copy, its left-out parameters filled from the model just loaded: they had
        not trained when it was taken, so they still equal the stage's start (later epochs may train them)."""
        if not isinstance(best, dict) or not isinstance(best.get("state"), dict):
            return best
        return {**best, "state": checkpoints.refilled(best["state"], self.model.state_dict())}

    def _load_model_state(self, state: dict) -> None:
        """The checkpoint's model; the parameters it left out (never trained) are checked to be the ones it
        was saved against: the rebuilt start of the stage, bit for bit."""
        frozen = state.get("frozen") or {"names": [], "digest": None}
        if frozen["names"] and not checkpoints.matches_left_out(dict(self.model.named_parameters()), frozen):
            raise TrainingError(
                f"{self.name}: the frozen weights this checkpoint was saved against differ from the ones the "
                "run rebuilt (the pretrained weights changed?); delete the checkpoint to redo the stage"
            )
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if unexpected or not set(missing) <= set(frozen["names"]):  # an adapter's base may be filled in already
            raise TrainingError(f"{self.name}: the checkpoint's model does not match the stage's: {missing[:3]}")
        self._trained = set(state.get("trained", [n for n, _ in self.model.named_parameters()]))

    def _generator_state(self, batch: int) -> dict:
        """The augmentation generator for a checkpoint at the start of batch ``batch``: its state where the
        draws of that batch's chunk began, and that chunk's first batch (resume redraws the chunk)."""
        if not batch:
            return {"generator": None}
        first, state, end = self._drawn
        if state is None or batch >= end:  # between chunks: the state now
            return {"generator": self.generator.get_state(), "generator_batch": batch}
        return {"generator": state, "generator_batch": first}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` stopped; the strategy re-derives the freeze state from the epoch."""
        self._load_model_state(state)
        state = {**state, "best": self._whole_best(state.get("best"))}
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.strategy.load_state_dict(state["strategy"])
        for r, s in zip(self.regularizers, state["regularizers"]):
            r.load_state_dict(s)
        if state.get("start_state") is not None:
            self.ctx.snapshot(state["start_state"])
        self.best = state["best"]
        self.history[:] = state["history"]  # the same list the callbacks see
        self.start_epoch = state["epoch"]
        self.partial = state if state["batch"] else None
        self.events.load_state_dict(state.get("callbacks"))
        self.info.stop_reason = state.get("stopped")
        rngs = state["rng"]
        same_world = len(rngs) == distributed.world_size()
        set_rng_state(rngs[distributed.rank()] if same_world else rngs[0])

    def _save(self, epoch: int, batch: int = 0, sums: dict | None = None) -> None:
        """Rank 0 writes; every rank's RNG states and running sums go into the file (collective)."""
        rng = distributed.all_gather_objects(rng_state())
        every = distributed.all_gather_objects({k: v.detach().cpu() for k, v in sums.items()}) if sums else None
        if self.checkpoint is not None and distributed.is_main():
            checkpoints.save_progress(self.state_dict(epoch, batch, every, rng), self.checkpoint, self.model)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        self.events("on_stage_start", self.info)
        epoch = self.start_epoch
        # an epoch a checkpoint left half-done is finished first, whatever was asked during it
        while epoch < self.budget and (
            self.partial is not None or (not self.converged() and self.info.stop_reason is None)
        ):
            self._epoch(epoch)
            epoch += 1
        selected = len(self.history)
        if self.best is not None:
            self.model.load_state_dict({**self.model.state_dict(), **self.best["state"]})  # resumed: frozen left out
            selected = self.best["epoch"]
        last = self.history[-1] if self.history else {}
        chosen = next((h for h in self.history if h["epoch"] == selected), {})
        return {
            "epochs": len(self.history),
            "epochs_auto": self.cfg.epochs == "auto",
            "selected_epoch": selected,
            "select": self.select,
            "val_accuracy": chosen.get("val_accuracy"),
            "train_accuracy": last.get("train_accuracy"),
            "train_loss": last.get("train_loss"),
            "stopped_early": self.info.stop_reason,
        }

    def converged(self) -> bool:
        """``epochs: auto``: whether the stage has converged; sets this epoch's learning-rate scale."""
        if self.cfg.epochs != "auto":
            return False
        drops, done = auto_epochs(self.history, self.cfg.patience)
        if AUTO_LR_DROP**drops != self.lr_scale:  # from the next step on, not one step late
            self.lr_scale = AUTO_LR_DROP**drops
            step = self.scheduler.last_epoch
            for group, base, factor in zip(
                self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas
            ):
                group["lr"] = base * factor(step)
        return done

    def _epoch(self, epoch: int) -> None:
        t0 = time.perf_counter()
        start_epoch(self.strategy, epoch, self.ctx)
        self._trained.update(n for n, p in self.model.named_parameters() if p.requires_grad)
        self._wrap()
        self.train.set_epoch(epoch)
        first, sums = self.epoch_start(epoch)
        cached = self._frozen_features()
        batches = self._cached_batches(first, cached) if cached is not None else self._augmented(epoch, first)
        for k, inputs, targets in batches:
            self._train_step(epoch, k, inputs, targets, sums, on_features=cached is not None)
            if self._stopping() and k + 1 < len(self.train):
                self._check_finite(epoch, sums)
                sums["seconds"] += time.perf_counter() - t0
                self._save(epoch, k + 1, sums)
                self._interrupted(epoch, f"up to batch {k + 1} of {len(self.train)}")
        self._check_finite(epoch, sums)
        self._epoch_end(epoch, sums, t0)

    def _augmented(self, epoch: int, first: int):
        """``(k, inputs, targets)`` for batch ``k`` from ``first`` on, ``self.chunk`` batches augmented as
        one. Chunks start where the epoch's draws (or a checkpoint's) begin; a resumed run redraws the
        chunk it stopped in and skips the batches already trained."""
        k = self._drawn[0]
        batches = iter(self._batches(epoch, k))
        while group := list(itertools.islice(batches, self.chunk)):
            self._drawn = (k, self.generator.get_state() if self.chunk > 1 else None, k + len(group))
            if self.chunk == 1:
                part = self.train.part(k) if self.train.world > 1 else None
                x, y = group[0]
                done = [self.train_transform.augmented(x, y, self.generator, part)]
            else:
                done = augment_together(self.train_transform, group, self.generator)
            for i, (inputs, targets) in enumerate(done):
                if k + i >= first:
                    yield k + i, inputs, targets
            k += len(group)

    # ------------------------------------------------------------------ a frozen backbone, computed once
    def _uncached_reason(self) -> str | None:
        """Why this epoch cannot train the head on cached features: "" when the backbone trains (nothing to
        say), a reason worth a line when it is frozen but what it sees or computes changes between epochs,
        None when it can."""
        backbone = self.model.backbone
        if any(p.requires_grad for p in backbone.parameters()):
            return ""
        if self.train_transform.augments:
            return "augmentation changes the pixels every epoch"
        if self.regularizers:
            return "regularizers see the images"
        if self.train.world > 1:
            return "each process computes its own under torch.distributed"
        if any(_random_in_training(m) for m in backbone.modules()):
            return "dropout or stochastic depth in the backbone is active"
        if len(self.train.data) * self.model.spec.num_features * 4 > FROZEN_FEATURES_MAX_BYTES:
            return f"they would take more than {FROZEN_FEATURES_MAX_BYTES >> 30} GiB"
        return None

    def _frozen_features(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(features, labels)`` of every training example while the epoch trains the head alone on a frozen,
        deterministic backbone, computed once and reused while that holds; else None (and one line saying why,
        once, when the backbone is frozen)."""
        why = self._uncached_reason()
        if why is not None:
            self._features = self._val_features = None
            if why and not self._said_uncached:
                self._said_uncached = True
                self.say(f"{self.ctx.stage}: the backbone is frozen, but its features are computed every epoch: {why}")
            return None
        if self._features is None:
            self._features = self._extract_features()
        return self._features

    def _extract_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen backbone's features of the training examples in dataset order, and their labels: batched,
        on the device, in the run's precision, with the backbone in the mode training put it in."""
        data = Batches(self.train.data, self.cfg.eval_batch_size, self.perf.device, shuffle=False)
        features, labels = [], []
        with torch.no_grad(), self.perf.autocast():
            for x, y in data:
                features.append(self.model.backbone(self.train_transform(x)))
                labels.append(y)
        return torch.cat(features), torch.cat(labels)

    def _validate(self) -> dict:
        """The validation split's loss and accuracy: while the epoch trained on cached features, the head alone on
        the validation split's cached features (the frozen backbone's output does not change); else the model."""
        assert self.val is not None  # asked only when there is a validation split
        if self._features is None:
            return evaluate(self.model, self.val, self.eval_transform, self.perf)
        if self._val_features is None:
            was_training = self.model.training
            self.model.eval()
            with torch.inference_mode(), self.perf.autocast():
                self._val_features = [(self.model.backbone(self.eval_transform(x)), y) for x, y in self.val]
            self.model.train(was_training)
        head = cast(TransferModel, self.model.head)  # evaluate needs only a module from inputs to logits
        return evaluate(head, cast(Batches, self._val_features), cast(BatchTransform, _unchanged), self.perf)

    def _cached_batches(self, first: int, cached: tuple[torch.Tensor, torch.Tensor]):
        """``(k, features, labels)`` for batch ``k`` from ``first`` on, in the order the images would come."""
        features, labels = cached
        for k, index in enumerate(self.train.batch_indices(first), start=first):
            index = index.to(features.device)
            yield k, features[index], labels[index]

    def _batches(self, epoch: int, first: int):
        batches = self.train.iter_from(first)
        if not self.progress:
            return batches
        from tqdm import tqdm

        return tqdm(
            batches,
            desc=f"{self.name} {epoch + 1}/{self.budget}",
            leave=False,
            unit="batch",
            total=len(self.train),
            initial=first,
        )

    def epoch_start(self, epoch: int) -> tuple[int, dict]:
        """The first batch and the running sums: zero, or where a mid-epoch checkpoint left them."""
        dev = self.perf.device
        sums = {
            "loss": torch.zeros((), device=dev),
            "penalty": torch.zeros((), device=dev),
            "correct": torch.zeros((), device=dev, dtype=torch.long),
            "seen": torch.zeros((), device=dev, dtype=torch.long),
            "bad_batch": torch.full((), -1, device=dev, dtype=torch.long),  # first non-finite loss
            "seconds": torch.zeros((), dtype=torch.float64),
        }
        if self.partial is None:
            self.generator.manual_seed(self.ctx.seed * 7919 + epoch)
            self._drawn = (0, None, 0)
            self.events("on_epoch_start", self.info, epoch + 1)
            return 0, sums
        first = self.partial["batch"]  # resumed mid-epoch
        self.generator.set_state(self.partial["generator"].cpu())
        self._drawn = (self.partial.get("generator_batch", first), None, 0)  # where those draws begin
        sums = _resumed_sums(self.partial["sums"])
        sums = {k: v.to(dev) if k != "seconds" else v.clone() for k, v in sums.items()}
        self.partial = None
        return first, sums

    def step(self, epoch: int, k: int, x: torch.Tensor, y: torch.Tensor, sums: dict) -> None:
        """One optimizer step on batch ``k`` as it comes from the data (augmented here, on its own)."""
        part = self.train.part(k) if self.train.world > 1 else None
        inputs, targets = self.train_transform.augmented(x, y, self.generator, part)
        assert targets is not None  # targets in, targets out
        self._train_step(epoch, k, inputs, targets, sums)

    def _train_step(
        self, epoch: int, k: int, inputs: torch.Tensor, targets: torch.Tensor, sums: dict, on_features: bool = False
    ) -> None:
        """One optimizer step on batch ``k``; its loss, hits and first non-finite loss go into ``sums``.
        ``on_features``: ``inputs`` are the frozen backbone's cached features, and only the head runs."""
        if self.events.per_step:
            self.events("on_step_start", self.info, epoch + 1, k)
        soft = targets.is_floating_point()  # mixup/cutmix: class probabilities; y is then each image's larger share
        y = targets.argmax(1) if soft else targets
        with self.perf.autocast():
            if on_features:
                logits, features, maps = self.model.head(inputs), inputs, {}
            else:
                logits, features, maps = self.net(inputs, all_outputs=True, feature_maps=self.needs_maps)
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.cfg.label_smoothing)
            if self.regularizers:
                step = Step(self.ctx, epoch, inputs, y, logits, features, maps, soft_targets=targets if soft else None)
                penalty = cast(torch.Tensor, sum(_penalty(r, step) for r in self.regularizers))
                sums["penalty"] += penalty.detach() * len(y)
                loss = loss + penalty
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            # DDP averages gradients over ranks; weigh each rank's mean loss by its share of the
            # global batch so that the step equals a single process's on the whole batch
            scaled = loss * (len(y) * self.train.world / self.train.part(k)[2]) if self.train.world > 1 else loss
            self.scaler.scale(scaled).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        # no host sync per step: the first bad batch is recorded on the device, checked at the epoch end
        bad = sums["bad_batch"]
        sums["bad_batch"] = torch.where((bad < 0) & ~torch.isfinite(loss.detach()), k, bad)
        sums["loss"] += loss.detach() * len(y)
        sums["correct"] += (logits.argmax(1) == y).sum()
        sums["seen"] += len(y)
        if self.events.per_step:
            self.events("on_step_end", self.info, epoch + 1, k, loss.detach())

    def _record(self, epoch: int, sums: dict, t0: float) -> dict:
        """The epoch's line of metrics.jsonl: train sums over ranks, validation, and the best epoch kept."""
        model = self.model
        for key in ("loss", "penalty", "correct", "seen"):
            distributed.all_reduce_(sums[key])
        seen = max(1, int(sums["seen"].item()))
        record = {
            "stage": self.name,
            "seed": self.seed,
            "epoch": epoch + 1,
            "train_loss": sums["loss"].item() / seen,
            "train_accuracy": sums["correct"].item() / seen,
            "penalty": sums["penalty"].item() / seen if self.regularizers else None,
            "lr": self.optimizer.param_groups[-1]["lr"],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        # each rank updated batch-norm statistics on its own slice: evaluate and keep rank 0's everywhere
        distributed.broadcast_buffers_(model)
        if self.val is not None and len(self.val.data):
            ev = self._validate()
            record.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
            rank_key = (ev["accuracy"], -ev["loss"])
            if self.select == "best" and (self.best is None or rank_key > tuple(self.best["key"])):
                self.best = {
                    "key": list(rank_key),
                    "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
        record["seconds"] = round(float(sums["seconds"]) + time.perf_counter() - t0, 3)
        return record

    def _epoch_end(self, epoch: int, sums: dict, t0: float) -> None:
        """Record, log, tell the callbacks (which may stop the stage), checkpoint."""
        record = self._record(epoch, sums, t0)
        self.history.append(record)
        if distributed.is_main():
            self.log.write(record)
        self.events("on_epoch_end", self.info, record)
        if distributed.active():  # a stop asked for on rank 0 stops every rank
            self.info.stop_reason = distributed.broadcast_object(self.info.stop_reason)
        self._save(epoch + 1)
        if self._stopping() and epoch + 1 < self.budget:
            self._interrupted(epoch, "up to the end of that epoch")

    def _interrupted(self, epoch: int, upto: str) -> None:
        distributed.barrier()  # no rank exits (and gets the job torn down) while rank 0 still writes
        saved = f"saved the progress {upto}" if self.checkpoint is not None else "checkpoints are off: nothing saved"
        stop = cast(StopSignals, self.stop)  # a stop was asked: there are signals
        raise Interrupted(
            f"{stop.name} during {self.name} epoch {epoch + 1}/{self.budget}; {saved}", cast(int, stop.signum)
        )

    def _stopping(self) -> bool:
        """A signal came; under torch.distributed, on any rank (all ranks must stop at the same step)."""
        if self.stop is None:
            return False
        flag = self.stop.signum is not None
        if distributed.active():
            flag = bool(distributed.all_reduce_(torch.tensor([int(flag)], device=self.perf.device), "max").item())
            if flag and self.stop.signum is None:
                self.stop.signum = signal.SIGTERM  # another rank was told to stop
        return flag

    def _wrap(self) -> None:
        """DistributedDataParallel over the parameters trainable this epoch, rebuilt when a head
        strategy freezes or unfreezes parts: DDP fixes its set of synchronised parameters when it is
        built, and a frozen parameter it still waits for fails the step."""
        if not distributed.active():
            return
        trainable = tuple(p.requires_grad for p in self.model.parameters())
        if trainable == self._trainable:
            return
        self._trainable = trainable
        if not any(trainable):
            self.net = self.model
            return
        from torch.nn.parallel import DistributedDataParallel

        dev = self.perf.device
        self.net = DistributedDataParallel(self.model, device_ids=[dev] if dev.type == "cuda" else None)

    def _check_finite(self, epoch: int, sums: dict) -> None:
        if distributed.active():  # the first bad batch on any rank
            never = torch.iinfo(torch.long).max
            local = torch.where(sums["bad_batch"] < 0, never, sums["bad_batch"]).reshape(1)
            first = int(distributed.all_reduce_(local, "min").item())
            sums["bad_batch"] = torch.tensor(-1 if first == never else first)
        bad = int(sums["bad_batch"].item())
        if bad >= 0:
            kept = (
                f"the last good checkpoint ({self.checkpoint}) is kept"
                if self.checkpoint is not None and self.checkpoint.exists()
                else "no checkpoint of this stage was written"
            )
            raise TrainingError(
                f"{self.name}: the loss became NaN or infinite at epoch {epoch + 1}, batch {bad + 1} "
                f"(lr {self.cfg.lr:g}); lower {self.name}.optimizer.lr, or the regularizer's "
                f"weight, and start a new run; {kept}"
            )


def _select(select: str, val: Batches | None) -> str:
    """``select: auto``: a handful of validation examples moves in big steps, so its best epoch is noise."""
    if select != "auto":
        return select
    val_size = len(val.data) if val is not None else 0
    return "best" if val_size >= AUTO_SELECT_MIN_VAL else "last"


def _resumed_sums(saved: list[dict]) -> dict:
    """This rank's running sums of a mid-epoch checkpoint. With another number of ranks than
    saved it, rank 0 carries the totals and the others start from zero."""
    if len(saved) == distributed.world_size():
        return dict(saved[distributed.rank()])
    totals = {k: (sum(s[k] for s in saved) if k not in ("seconds", "bad_batch") else saved[0][k]) for k in saved[0]}
    if distributed.is_main():
        return totals
    return {k: torch.zeros_like(v) if k not in ("seconds", "bad_batch") else v for k, v in totals.items()}
