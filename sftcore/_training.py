"""The one training loop. Stages, head strategies and regularizers plug into it; nothing copies it."""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .api import HeadStrategy, Regularizer, Step, TrainContext, unfreeze
from . import _distributed as distributed, _storage as storage
from ._config import AUTO_SELECT_MIN_VAL, epoch_budget
from .errors import Interrupted, PluginError, TrainingError
from ._interrupt import StopSignals
from ._data import Batches, BatchTransform
from ._model import TransferModel


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


@dataclass
class Performance:
    """How the run uses the device: where, at what precision, in which memory format, compiled or not."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> dict:
        return {
            "device": str(self.device),
            "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype],
            "channels_last": self.channels_last,
            "compile": self.compile,
        }


class MetricsLog:
    """``metrics.jsonl``: one JSON line per epoch per stage."""

    def __init__(self, path: Path | None):
        self.path = path
        if path is not None:
            storage.append_text(path, "")

    def write(self, record: dict) -> None:
        if self.path is not None:
            storage.append_text(self.path, json.dumps(record) + "\n")

    def keep(self, stage: str, epochs: int) -> None:
        """Drop ``stage``'s lines after epoch ``epochs`` (and any line cut short by a kill): a resumed
        stage writes them again, so each epoch appears once."""
        if self.path is None:
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("stage") != stage or record.get("epoch", 0) <= epochs:
                kept.append(line + "\n")
        storage.write_text(self.path, "".join(kept))


def _schedule(cfg: dict, epochs: int, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, epochs * steps_per_epoch)
    warmup = cfg.get("warmup_epochs", 0) * steps_per_epoch

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if cfg["name"] == "cosine":
            t = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        if cfg["name"] == "step":
            return cfg["gamma"] ** ((step // steps_per_epoch) // cfg["step_size"])
        return 1.0

    return factor


def make_optimizer(groups: list[dict], cfg: dict) -> torch.optim.Optimizer:
    """Optimizer over the strategy's groups; norm weights and biases get no weight decay (fastai, timm)."""
    split = []
    for group in groups:
        decay = [p for p in group["params"] if p.ndim > 1]
        no_decay = [p for p in group["params"] if p.ndim <= 1]
        base = {k: v for k, v in group.items() if k != "params"}
        if decay:
            split.append({**base, "params": decay})
        if no_decay:
            split.append({**base, "params": no_decay, "weight_decay": 0.0})
    if cfg["name"] == "sgd":
        return torch.optim.SGD(split, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                               nesterov=cfg["nesterov"] and cfg["momentum"] > 0)
    return torch.optim.AdamW(split, lr=cfg["lr"], weight_decay=cfg["weight_decay"], betas=tuple(cfg["betas"]))


def begin_epoch(strategy: HeadStrategy, epoch: int, ctx: TrainContext) -> None:
    """Everything trainable, then the strategy freezes what it wants for this epoch: nothing stays
    frozen from an earlier stage or epoch by accident, and the state follows from the epoch alone."""
    unfreeze(ctx.model)
    strategy.on_epoch_start(epoch, ctx)


def _freeze_frozen_norms(model: torch.nn.Module) -> None:
    """A norm layer whose parameters are all frozen keeps its running statistics too."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


def evaluate(model: TransferModel, batches: Batches, transform: BatchTransform, perf: Performance) -> dict:
    """Accuracy and loss with deterministic transforms; ``correct`` is the per-example hit vector,
    ``predicted`` the per-example predicted class, ``top_k``/``top_k_probability`` the k = min(5, classes)
    most probable classes and their softmax probabilities, kept so that top-5 accuracy and calibration
    can be computed from predictions/<stage>.json after the run (top-k of the logits already computed:
    no second pass, and a fraction of the size of whole probability vectors)."""
    was_training = model.training
    model.eval()
    predicted, targets, top, top_p = [], [], [], []
    loss_sum, n = torch.zeros((), device=perf.device), 0
    with torch.inference_mode():
        for x, y in batches:
            with perf.autocast():
                logits = model(transform(x))
            logits = logits.float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            predicted.append(logits.argmax(1))
            values, index = logits.topk(min(TOP_K, logits.shape[1]), dim=1)
            top.append(index)
            top_p.append((values - logits.logsumexp(1, keepdim=True)).exp())
            targets.append(y)
            n += len(y)
    model.train(was_training)
    parts = [_joined(t) for t in (predicted, targets, top, top_p)]
    if distributed.active():  # each rank evaluated one contiguous share: put them back in order
        shares = distributed.all_gather_objects((*parts, loss_sum.item(), n))
        parts = [torch.cat([sh[i] for sh in shares]) for i in range(4)]
        loss_sum = torch.tensor(sum(sh[4] for sh in shares))
        n = sum(sh[5] for sh in shares)
    predicted, targets, top, top_p = parts
    correct = predicted == targets
    return {"accuracy": correct.float().mean().item() if n else float("nan"),
            "loss": loss_sum.item() / max(1, n), "correct": correct, "predicted": predicted, "targets": targets,
            "top_k": top, "top_k_probability": top_p}


TOP_K = 5  # classes per example that evaluate() keeps with their probabilities


def _joined(tensors: list) -> torch.Tensor:
    """One CPU tensor from a batch list; an empty list (no examples on this rank) gives an empty long tensor."""
    return torch.cat(tensors).cpu() if tensors else torch.zeros(0, dtype=torch.long)


class Stage:
    """Trains ``model`` for one stage; the strategy and regularizers are its only extension points.

    The loop can stop and continue anywhere between two steps: a checkpoint holds the position
    (epoch and batch), every RNG and the running epoch sums, so a resumed run takes exactly the
    steps the uninterrupted one would have taken.
    """

    def __init__(self, *, name: str, cfg: dict, model: TransferModel, ctx: TrainContext, strategy: HeadStrategy,
                 regularizers: list[Regularizer], train: Batches, val: Batches | None,
                 train_transform: BatchTransform, eval_transform: BatchTransform, perf: Performance,
                 log: MetricsLog, checkpoint: Path | None = None, progress: bool = False,
                 echo: Callable[[str], None] | None = None, stop: StopSignals | None = None, seed: int | None = None):
        self.name, self.cfg, self.model, self.ctx, self.seed = name, cfg, model, ctx, seed
        self.strategy, self.regularizers = strategy, regularizers
        self.train, self.val = train, val
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.perf, self.log, self.checkpoint, self.progress, self.echo = perf, log, checkpoint, progress, echo
        self.stop = stop
        ctx.model = model
        self.budget = epoch_budget(cfg)
        self.select = cfg["select"]
        if self.select == "auto":  # a handful of validation examples moves in big steps: its best epoch is noise
            val_size = len(val.data) if val is not None else 0
            self.select = "best" if val_size >= AUTO_SELECT_MIN_VAL else "last"
        groups = strategy.param_groups(ctx, cfg["optimizer"]["lr"], cfg["backbone_lr_mult"])
        self._check_groups(groups)
        self.optimizer = make_optimizer(groups, cfg["optimizer"])
        factor = _schedule(cfg["schedule"], self.budget, len(train))
        self.lr_scale = 1.0  # epochs: auto lowers it on a plateau of the training loss
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: factor(step) * self.lr_scale)
        self.scaler = torch.amp.GradScaler(perf.device.type, enabled=perf.amp_dtype is torch.float16)
        self.needs_maps = any(r.needs_feature_maps for r in regularizers)
        distributed.broadcast_module_(model)  # one starting point (and one w0) on every rank
        if regularizers:
            ctx.snapshot()
        for r in regularizers:
            r.setup(ctx)
        self.generator = torch.Generator(device=perf.device)
        self.net: torch.nn.Module = model  # what the loop calls: the model, or its DDP wrapper
        self._trainable: tuple | None = None
        self.start_epoch = 0
        self.partial: dict | None = None  # where a mid-epoch checkpoint left off
        self.best: dict | None = None
        self.history: list[dict] = []

    def _check_groups(self, groups: list[dict]) -> None:
        seen: set[int] = set()
        for g in groups:
            for p in g["params"]:
                if id(p) in seen:
                    raise PluginError(f"head strategy of {self.name} put a parameter into two optimizer groups "
                                      f"({g.get('name')})")
                seen.add(id(p))
        missing = [n for n, p in self.model.named_parameters() if id(p) not in seen]
        if missing:
            raise PluginError(f"head strategy of {self.name} left parameters out of the optimizer: {missing[:3]}")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, epoch: int, batch: int = 0, sums: list | None = None, rng: list | None = None) -> dict:
        """The stage at the start of batch ``batch`` of epoch ``epoch`` (both counted from 0).

        ``rng`` and ``sums`` hold one entry per rank (one without torch.distributed)."""
        return {
            "stage": self.name, "epoch": epoch, "batch": batch, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "strategy": self.strategy.state_dict(),
            "regularizers": [r.state_dict() for r in self.regularizers],
            "start_state": self.ctx._start_state, "best": self.best, "history": self.history,
            "rng": rng if rng is not None else [rng_state()],
            "generator": self.generator.get_state() if batch else None,
            "sums": sums if batch else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` stopped; the strategy re-derives the freeze state from the epoch."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.strategy.load_state_dict(state["strategy"])
        for r, s in zip(self.regularizers, state["regularizers"]):
            r.load_state_dict(s)
        if state.get("start_state") is not None:
            self.ctx.snapshot(state["start_state"])
        self.best, self.history = state["best"], state["history"]
        self.start_epoch = state["epoch"]
        self.partial = state if state["batch"] else None
        rngs = state["rng"]
        same_world = len(rngs) == distributed.world_size()
        set_rng_state(rngs[distributed.rank()] if same_world else rngs[0])

    def _save(self, epoch: int, batch: int = 0, sums: dict | None = None) -> None:
        """Rank 0 writes; every rank's RNG states and running sums go into the file (collective)."""
        rng = distributed.all_gather_objects(rng_state())
        every = distributed.all_gather_objects({k: v.detach().cpu() for k, v in sums.items()}) if sums else None
        if self.checkpoint is not None and distributed.is_main():
            storage.save(self.state_dict(epoch, batch, every, rng), self.checkpoint)

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        epoch = self.start_epoch
        while epoch < self.budget and not self.converged():
            self._epoch(epoch)
            epoch += 1
        selected = len(self.history)
        if self.best is not None:
            self.model.load_state_dict(self.best["state"])
            selected = self.best["epoch"]
        last = self.history[-1] if self.history else {}
        chosen = next((h for h in self.history if h["epoch"] == selected), {})
        return {"epochs": len(self.history), "epochs_auto": self.cfg["epochs"] == "auto", "selected_epoch": selected,
                "select": self.select, "val_accuracy": chosen.get("val_accuracy"),
                "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss")}

    def converged(self) -> bool:
        """``epochs: auto``: whether the stage has converged; sets this epoch's learning-rate scale."""
        if self.cfg["epochs"] != "auto":
            return False
        drops, done = auto_epochs(self.history, self.cfg["patience"])
        if AUTO_LR_DROP ** drops != self.lr_scale:  # from the next step on, not one step late
            self.lr_scale = AUTO_LR_DROP ** drops
            step = self.scheduler.last_epoch
            for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                           self.scheduler.lr_lambdas):
                group["lr"] = base * factor(step)
        return done

    def _epoch(self, epoch: int) -> None:
        t0 = time.perf_counter()
        begin_epoch(self.strategy, epoch, self.ctx)
        self._wrap()
        self.model.train()
        _freeze_frozen_norms(self.model)
        self.train.set_epoch(epoch)
        first, sums = self._epoch_start(epoch)
        batches = self.train.iter_from(first)
        if self.progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"{self.name} {epoch + 1}/{self.budget}", leave=False, unit="batch",
                           total=len(self.train), initial=first)
        for k, (x, y) in enumerate(batches, start=first):
            self._step(epoch, k, x, y, sums)
            if self._stopping() and k + 1 < len(self.train):
                self._check_finite(epoch, sums)
                sums["seconds"] += time.perf_counter() - t0
                self._save(epoch, k + 1, sums)
                self._interrupted(epoch, f"up to batch {k + 1} of {len(self.train)}")
        self._check_finite(epoch, sums)
        self._epoch_end(epoch, sums, t0)

    def _epoch_start(self, epoch: int) -> tuple[int, dict]:
        """The first batch and the running sums: zero, or where a mid-epoch checkpoint left them."""
        dev = self.perf.device
        sums = {"loss": torch.zeros((), device=dev), "penalty": torch.zeros((), device=dev),
                "correct": torch.zeros((), device=dev, dtype=torch.long),
                "seen": torch.zeros((), device=dev, dtype=torch.long),
                "bad_batch": torch.full((), -1, device=dev, dtype=torch.long),  # first non-finite loss
                "seconds": torch.zeros((), dtype=torch.float64)}
        if self.partial is None:
            self.generator.manual_seed(self.ctx.seed * 7919 + epoch)
            return 0, sums
        first = self.partial["batch"]  # resumed mid-epoch
        self.generator.set_state(self.partial["generator"].cpu())
        sums = _resumed_sums(self.partial["sums"])
        sums = {k: v.to(dev) if k != "seconds" else v.clone() for k, v in sums.items()}
        self.partial = None
        return first, sums

    def _step(self, epoch: int, k: int, x: torch.Tensor, y: torch.Tensor, sums: dict) -> None:
        """One optimizer step on batch ``k``; its loss, hits and first non-finite loss go into ``sums``."""
        part = self.train.part(k) if self.train.world > 1 else None
        inputs = self.train_transform(x, self.generator, part)
        with self.perf.autocast():
            logits, features, maps = self.net(inputs, all_outputs=True, feature_maps=self.needs_maps)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg["label_smoothing"])
            if self.regularizers:
                step = Step(self.ctx, epoch, inputs, y, logits, features, maps)
                penalty = sum(r.penalty(step) for r in self.regularizers)
                sums["penalty"] += penalty.detach() * len(y)
                loss = loss + penalty
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:
            # DDP averages gradients over ranks; weigh each rank's mean loss by its share of the
            # global batch so that the step equals a single process's on the whole batch
            scaled = loss * (len(y) * self.train.world / part[2]) if part is not None else loss
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

    def _epoch_end(self, epoch: int, sums: dict, t0: float) -> None:
        """The epoch's record (train sums over ranks, validation, selection), logged and checkpointed."""
        model = self.model
        for key in ("loss", "penalty", "correct", "seen"):
            distributed.all_reduce_(sums[key])
        seen = max(1, int(sums["seen"].item()))
        record = {
            "stage": self.name, "seed": self.seed, "epoch": epoch + 1,
            "train_loss": sums["loss"].item() / seen,
            "train_accuracy": sums["correct"].item() / seen,
            "penalty": sums["penalty"].item() / seen if self.regularizers else None,
            "lr": self.optimizer.param_groups[-1]["lr"],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        }
        # each rank updated batch-norm statistics on its own slice: evaluate and keep rank 0's everywhere
        distributed.broadcast_buffers_(model)
        if self.val is not None and len(self.val.data):
            ev = evaluate(model, self.val, self.eval_transform, self.perf)
            record.update(val_loss=ev["loss"], val_accuracy=ev["accuracy"])
            key = (ev["accuracy"], -ev["loss"])
            if self.select == "best" and (self.best is None or key > tuple(self.best["key"])):
                self.best = {"key": list(key), "epoch": epoch + 1,
                             "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        record["seconds"] = round(float(sums["seconds"]) + time.perf_counter() - t0, 3)
        self.history.append(record)
        if distributed.is_main():
            self.log.write(record)
        if self.progress and self.echo:
            val = f" val_acc {record['val_accuracy']:.3f}" if "val_accuracy" in record else ""
            self.echo(f"{self.name} epoch {epoch + 1}/{self.budget}: loss {record['train_loss']:.3f} "
                      f"train_acc {record['train_accuracy']:.3f}{val}")
        self._save(epoch + 1)
        if self._stopping() and epoch + 1 < self.budget:
            self._interrupted(epoch, "up to the end of that epoch")

    def _interrupted(self, epoch: int, upto: str) -> None:
        distributed.barrier()  # no rank exits (and gets the job torn down) while rank 0 still writes
        saved = f"saved the progress {upto}" if self.checkpoint is not None else "checkpoints are off: nothing saved"
        raise Interrupted(f"{self.stop.name} during {self.name} epoch {epoch + 1}/{self.budget}; {saved}",
                          self.stop.signum)

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
            first = torch.where(sums["bad_batch"] < 0, never, sums["bad_batch"]).reshape(1)
            first = int(distributed.all_reduce_(first, "min").item())
            sums["bad_batch"] = torch.tensor(-1 if first == never else first)
        bad = int(sums["bad_batch"].item())
        if bad >= 0:
            kept = (f"the last good checkpoint ({self.checkpoint}) is kept" if self.checkpoint is not None
                    and self.checkpoint.exists() else "no checkpoint of this stage was written")
            raise TrainingError(
                f"{self.name}: the loss became NaN or infinite at epoch {epoch + 1}, batch {bad + 1} "
                f"(lr {self.cfg['optimizer']['lr']:g}); lower {self.name}.optimizer.lr, or the regularizer's "
                f"weight, and start a new run; {kept}")


def _resumed_sums(saved: list[dict]) -> dict:
    """This rank's running sums of a mid-epoch checkpoint. With another number of ranks than
    saved it, rank 0 carries the totals and the others start from zero."""
    if len(saved) == distributed.world_size():
        return dict(saved[distributed.rank()])
    totals = {k: (sum(s[k] for s in saved) if k not in ("seconds", "bad_batch") else saved[0][k]) for k in saved[0]}
    if distributed.is_main():
        return totals
    return {k: torch.zeros_like(v) if k not in ("seconds", "bad_batch") else v for k, v in totals.items()}


def rng_state() -> dict:
    """Every RNG a plugin might draw from: torch (CPU and CUDA), Python's ``random`` and numpy's."""
    import random
    import sys

    state = {"torch": torch.get_rng_state(), "python": _plain_tuple(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    np = sys.modules.get("numpy")
    if np is not None:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    return state


def set_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(state["torch"].cpu())  # RNG states are CPU byte tensors wherever a checkpoint is loaded
    random.setstate(_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype("uint32"), n["pos"], n["has_gauss"],
                             n["gauss"]))


def _plain_tuple(value):
    """Python's RNG state as nested lists (a checkpoint loaded with ``weights_only`` keeps them)."""
    return [_plain_tuple(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value
