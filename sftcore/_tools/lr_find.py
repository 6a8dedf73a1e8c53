"""`sft lr-find`: the exponential learning-rate range test (Smith 2017, "Cyclical Learning Rates for
Training Neural Networks", section 3.3) on a stage's real setup, as fastai's ``lr_find`` and Lightning's
``Tuner.lr_find`` run it.

The stage is assembled by the Pipeline's own methods (model and head strategy, few-label data for the
run's seed, augmentations, regularizers, parameter groups, optimizer) and each step is the loop's own
``Stage.step``: the loss is the loop's loss, penalties included. Before every step each optimizer group's
lr is set to its base lr times one factor, so the groups keep their ratios (``backbone_lr_mult``,
``layer_decay``); the stage's scheduler still steps inside ``_step``, but what it writes is replaced before
the next step, so the schedule plays no part. No run directory, checkpoint or model file is written.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sftcore._config.schema import RunConfig, StageConfig
from sftcore._plugins.contracts import STAGES, Callback
from sftcore.errors import ConfigError

START_LR, END_LR, STEPS = 1e-7, 10.0, 100
MIN_STEPS = 5
MAX_STEPS = 100_000  # far past any useful range test; the lr list is built up front
BETA = 0.98  # fastai's AvgSmoothLoss
DIVERGE = 4.0  # fastai's LRFinder (and Lightning's early_stop_threshold): stop at 4x the best smoothed loss
SKIP_END = 5  # fastai's lr_find drops the first num_it // 10 and the last 5 points before suggesting
TRAINABLE = STAGES


@dataclass
class Finding:
    """The test's numbers: ``lrs[i]`` is the lr of the head's group at step ``i`` (what ``<stage>.optimizer.lr``
    would be), ``losses`` the loop's loss of that step, ``smoothed`` its bias-corrected EMA."""

    stage: str
    epoch: int
    config_lr: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    stopped: str | None = None  # "diverged", "non-finite", or None: every step ran
    suggestion: float | None = None  # valley
    steepest: float | None = None
    group_lrs: dict[str, float] = field(default_factory=dict)  # each group's lr at the suggestion

    def as_dict(self) -> dict:
        return {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in asdict(self).items()} | {
            "losses": [_finite_or_none(v) for v in self.losses],
            "smoothed": [_finite_or_none(v) for v in self.smoothed],
        }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- the numbers
def check_range(start_lr: float, end_lr: float, steps: int) -> None:
    if not (start_lr > 0 and end_lr > 0) or not (math.isfinite(start_lr) and math.isfinite(end_lr)):
        raise ConfigError(f"--start-lr and --end-lr must be positive numbers, got {start_lr:g} and {end_lr:g}")
    if start_lr >= end_lr:
        raise ConfigError(f"--start-lr ({start_lr:g}) must be below --end-lr ({end_lr:g})")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps must be at least {MIN_STEPS} (the smoothed curve needs them), got {steps}")
    if steps > MAX_STEPS:  # each is a training step, and the lr list is built up front
        raise ConfigError(f"--steps must be at most {MAX_STEPS}, got {steps}")


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """Geometric from ``start_lr`` to ``end_lr``, both included (Lightning's ``_ExponentialLR``)."""
    return [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]


class Smoother:
    """fastai's AvgSmoothLoss: an exponential moving average of the losses so far, divided by ``1 - beta**n``
    (the bias correction: without it the first points would sit near 0)."""

    def __init__(self, beta: float = BETA):
        self.beta, self.avg, self.n = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.avg, self.n = self.beta * self.avg + (1 - self.beta) * loss, self.n + 1
        return self.avg / (1 - self.beta**self.n)


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    smoother = Smoother(beta)
    return [smoother.add(loss) for loss in losses]


def valley(losses: list[float]) -> int:
    """fastai's ``valley`` (its default suggestion since 2.5; fastai/callback/schedule.py), step for step:
    ``lds[i]`` is the length of the longest strictly decreasing subsequence of losses ending at ``i``; the
    first ``i`` to beat the longest so far becomes ``max_end``, with ``max_start = max_end - lds[max_end]`` taken
    at that moment; the suggestion is index ``max_start + int(s) + int(s / 2)`` with ``s = (max_end - max_start)
    / 3``: about half-way down the longest valley. Quadratic in the points, like fastai's. One change: a valley
    of two points from the first one gives fastai index -1 (the last point); here it gives 0."""
    n, max_start, max_end = len(losses), 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return max(0, max_start + int(sections) + int(sections / 2))


def steepest(lrs: list[float], losses: list[float]) -> int:
    """fastai's ``steep``: where the loss falls fastest per log-lr, at the left end of that segment."""
    slopes = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)]
    return min(range(len(slopes)), key=slopes.__getitem__) if slopes else 0


def suggest(lrs: list[float], smoothed: list[float], steps: int) -> tuple[int, int] | None:
    """``(valley index, steepest index)`` into ``lrs``, on fastai's window: the smoothed losses less the first
    ``steps // 10`` and the last 5, cut at the first non-finite one; a window under 3 points (an early stop)
    takes every finite point. None: fewer than 2 finite points."""
    finite = next((i for i, v in enumerate(smoothed) if not math.isfinite(v)), len(smoothed))
    lo, hi = steps // 10, min(len(smoothed) - SKIP_END, finite)
    if hi - lo < 3:
        lo, hi = 0, finite
    if hi - lo < 2:
        return None
    window, window_lrs = smoothed[lo:hi], lrs[lo:hi]
    return lo + valley(window), lo + steepest(window_lrs, window)


# ---------------------------------------------------------------------------------------------- the test
def find(
    config=None,
    *,
    stage: str = "finetune",
    overrides=(),
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
    epoch: int = 0,
    echo: Callable[[str], None] | None = None,
    epoch_echo: Callable[[str], None] | None = None,
) -> Finding:
    """Run the range test on ``stage`` of the config (``overrides`` as ``sft run --set``) and suggest an lr."""
    from sftcore._config import resolve as cfgmod
    from sftcore._plugins.manager import get_registry

    check_range(start_lr, end_lr, steps)
    cfg = cfgmod.resolve(cfgmod.load(config, overrides), get_registry())
    scfg = _trainable(RunConfig.of(cfg), stage)
    budget = scfg.budget
    if not 0 <= epoch < budget:
        raise ConfigError(f"--epoch {epoch}: {stage} has {budget} epochs, so --epoch must be 0 to {budget - 1}")
    trainer, recorder = _stage(cfg, stage, echo, epoch_echo)
    finding = Finding(stage=stage, epoch=epoch, config_lr=scfg.lr)
    _sweep(trainer, recorder, lr_schedule(start_lr, end_lr, steps), finding)
    picked = suggest(finding.lrs, finding.smoothed, steps)
    if picked is not None:
        finding.suggestion, finding.steepest = finding.lrs[picked[0]], finding.lrs[picked[1]]
        finding.group_lrs = _group_lrs(trainer, finding.suggestion / finding.config_lr)
    return finding


def _trainable(config: RunConfig, stage: str) -> StageConfig:
    """The stage's config; a resolved config always has a trainable stage ("nothing to run" otherwise)."""
    if stage not in TRAINABLE or getattr(config, stage) is None:
        what = "is not a stage" if stage not in TRAINABLE else "is not in this config (it is null or absent)"
        present = [s for s in TRAINABLE if getattr(config, s) is not None]
        raise ConfigError(f"--stage {stage} {what}; use one of: {', '.join(present)}")
    return config.stage(stage)


def _stage(cfg: dict, name: str, echo, epoch_echo):
    """The stage as `sft run` would train it, for the run's seed: finetune starts from the backbone the
    config's pretrain stage trains (run first, through the Pipeline, without a run directory)."""
    from sftcore._run.pipeline import Pipeline, Start
    from sftcore._rundir.outputs import EpochLines
    from sftcore._train.events import Events

    lines: list[Callback] = [EpochLines(epoch_echo)] if epoch_echo is not None else []
    config = RunConfig.of(cfg)
    # the config's callbacks do not run here, and early stopping may shorten `sft run`'s pretraining while the
    # cache key leaves callbacks out: with callbacks this pretraining is neither read from nor stored in the cache
    cached = config.pretrain_cache and not config.callbacks
    pipe = Pipeline(
        cfg if cached else {**cfg, "pretrain_cache": False}, None, False, echo, events=Events([], observers=lines)
    )
    seed = pipe.seed
    if name == "baseline":
        backbone = pipe.build_backbone(random_init=True, seed=seed)
        return _build(pipe, name, backbone, pipe.stage_data("finetune", backbone, seed), None, None, seed)
    backbone = pipe.build_backbone()
    if name == "pretrain":
        return _build(
            pipe,
            name,
            backbone,
            pipe.stage_data("pretrain", backbone, seed),
            backbone.head,
            backbone.source_classes,
            seed,
        )
    start = Start(backbone, backbone.head, backbone.source_classes)
    if config.pretrain is not None:
        start = _pretrain(pipe, backbone, seed, cached)
    return _build(
        pipe, name, start.backbone, pipe.stage_data("finetune", start.backbone, seed), start.head, start.classes, seed
    )


def _pretrain(pipe, backbone, seed: int, cached: bool):
    """The config's pretrain stage, through the Pipeline and so through the pretrain cache (unless ``cached``
    is false: see ``_stage``)."""
    pipe.say(
        f"lr-find: the finetune stage starts from the pretrained backbone: running the config's pretrain stage "
        f"first ({'the pretrain cache is used' if cached else 'without the pretrain cache'})"
    )
    return pipe.pretrain(backbone, seed, "pretrain")


def _build(pipe, name: str, backbone, data, source_head, source_classes, seed: int):
    """``Pipeline.train_stage``'s assembly, less the run directory: no checkpoint, no validation, no log."""
    from sftcore._train.events import Events

    recorder = _StepLosses()
    stage = pipe.build_stage(
        name,
        pipe.config.stage(name),
        backbone,
        data,
        source_head,
        source_classes,
        seed=seed,
        tag=f"{name}-lr-find",
        events=Events([], observers=[recorder]),
        validate=False,
    )
    return stage, recorder


class _StepLosses(Callback):
    """Hears each step's loss (the loop's ``on_step_end``: cross-entropy plus the regularizers' penalties)."""

    def __init__(self):
        self.last = None

    def on_step_end(self, stage, epoch: int, step: int, loss) -> None:
        self.last = loss


def _sweep(stage, recorder: _StepLosses, lrs: list[float], finding: Finding) -> None:
    """One ``Stage.step`` per lr, in the head strategy's state of ``finding.epoch``, cycling through the
    stage's training batches; stops when the smoothed loss passes 4x its minimum or is not finite."""
    from sftcore._train.loop import start_epoch

    groups = stage.optimizer.param_groups
    base = [g.get("initial_lr", g["lr"]) for g in groups]  # the group's lr before any schedule factor
    start_epoch(stage.strategy, finding.epoch, stage.ctx)
    batches: Iterator[tuple[int, Any]]  # (step, (inputs, targets)) of the current pass
    batches, smoother, best, rounds = iter(()), Smoother(), math.inf, 0
    for lr in lrs:
        item = next(batches, None)
        if item is None:  # the next pass over the few-label data: reshuffled, augmentations reseeded
            stage.train.set_epoch(finding.epoch + rounds)
            _, sums = stage.epoch_start(finding.epoch + rounds)
            batches, rounds = enumerate(iter(stage.train)), rounds + 1
            item = next(batches)
        k, (x, y) = item
        for group, group_base in zip(groups, base):
            group["lr"] = group_base * lr / finding.config_lr
        stage.step(finding.epoch, k, x, y, sums)
        loss = float(recorder.last)
        smoothed = smoother.add(loss)
        finding.lrs.append(lr)
        finding.losses.append(loss)
        finding.smoothed.append(smoothed)
        if not math.isfinite(smoothed):
            finding.stopped = "non-finite"
            return
        best = min(best, smoothed)
        if smoothed > DIVERGE * best:
            finding.stopped = "diverged"
            return


def _group_lrs(stage, factor: float) -> dict[str, float]:
    """Each parameter group's lr at the suggestion (weight-decay splits of one group share it)."""
    out: dict[str, float] = {}
    for i, group in enumerate(stage.optimizer.param_groups):
        out.setdefault(str(group.get("name", f"group_{i}")), group.get("initial_lr", group["lr"]) * factor)
    return out


# ---------------------------------------------------------------------------------------------- the figure
def plot(finding: Finding, path: Path) -> str | None:
    """Write the loss-vs-lr PNG (log x, raw and smoothed loss, suggestions marked); None when written, else
    the one-line reason it was skipped (no matplotlib)."""
    try:
        import matplotlib  # noqa: F401  (the `plot` extra)
    except ImportError:
        return "matplotlib is not installed (pip install 'sftcore[plot]')"
    from sftcore._analysis.plots import _figure, _save_png

    fig = _figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(finding.lrs, finding.losses, color="0.75", linewidth=1, label="loss per step")
    ax.plot(finding.lrs, finding.smoothed, color="C0", linewidth=2, label=f"smoothed (EMA, beta {BETA})")
    for lr, label, colour in (
        (finding.suggestion, "valley (suggested)", "C3"),
        (finding.steepest, "steepest descent", "C2"),
    ):
        if lr is not None:
            ax.axvline(lr, color=colour, linestyle="--", label=f"{label}: {lr:.2g}")
    finite = [v for v in finding.smoothed if math.isfinite(v)]
    if finite:  # up to the smoothed curve's highest point before its minimum: the blow-up would flatten it
        low = min(finite)
        high = max(finite[: finite.index(low) + 1])
        pad = 0.1 * (high - low) or 0.05 * abs(low) or 0.1
        ax.set_ylim(low - pad, high + 2 * pad)
    ax.set_xscale("log")
    ax.set_xlabel(f"learning rate ({finding.stage}.optimizer.lr)")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr-find: {finding.stage}, head strategy at epoch {finding.epoch}")
    ax.legend(loc="best")
    _save_png(fig, path)
    return None


# ---------------------------------------------------------------------------------------------- the command
def check_out(out: str | None, stage: str, force: bool) -> Path:
    """Where the PNG goes (default ``lr-find-<stage>.png`` here), checked before any training."""
    from sftcore._fileio import storage

    if out is None:
        return storage.output_file(f"lr-find-{stage}.png", force, option=None)
    return storage.output_file(out, force, hint=f" such as {Path(out) / f'lr-find-{stage}.png'}")


def summary_lines(finding: Finding, config: str | None) -> list[str]:
    """What `sft lr-find` prints: the range, where it stopped, the suggestion and how to use it."""
    lrs, steps = finding.lrs, len(finding.lrs)
    why = {
        "diverged": f"the smoothed loss passed {DIVERGE:g}x its minimum",
        "non-finite": "the loss became NaN or infinite",
    }
    end = f" (stopped after step {steps}: {why[finding.stopped]})" if finding.stopped else ""
    lines = [
        f"lr-find: {finding.stage}, head strategy in its epoch-{finding.epoch} state, {steps} steps, "
        f"lr {lrs[0]:.3g} to {lrs[-1]:.3g}{end}"
    ]
    if finding.suggestion is None:
        return lines + ["no suggestion: fewer than 2 finite losses; lower --start-lr or check the config"]
    lines.append(
        f"suggested lr (valley): {finding.suggestion:.2g}   steepest descent: {finding.steepest:.2g}   "
        f"(configured: {finding.config_lr:g})"
    )
    if len(finding.group_lrs) > 1:
        groups = ", ".join(f"{name} {lr:.2g}" for name, lr in finding.group_lrs.items())
        lines.append(f"parameter groups at the suggestion (their ratios kept): {groups}")
    command = " ".join(["sft run", *([shlex.quote(str(config))] if config else [])])
    lines.append(f"use it: {command} --set {finding.stage}.optimizer.lr={finding.suggestion:.2g}")
    return lines
