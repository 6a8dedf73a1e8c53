"""The pipeline: pretrain -> finetune -> (scratch baseline) -> evaluate over seeds, wired from a resolved config."""

from __future__ import annotations

import copy
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sftcore._analysis import report
from sftcore._config.schema import RunConfig, StageConfig
from sftcore._data.batches import Batches, BatchTransform
from sftcore._data.stage import StageData, image_shapes, load_splits, shapes_text, subset_stage_data
from sftcore._plugins import components
from sftcore._plugins.contracts import Augment, Backbone, ImageSet, RunInfo, StageInfo, TrainContext, pin_frozen
from sftcore._plugins.manager import get_registry
from sftcore._rundir import checkpoints
from sftcore._rundir import layout as rundir
from sftcore._rundir.outputs import MetricsLog, write_predictions
from sftcore._runtime import distributed, held_warnings
from sftcore._runtime.device import environment, resolve_performance
from sftcore._runtime.interrupt import StopSignals
from sftcore._train.evaluate import evaluate
from sftcore._train.events import NO_EVENTS, Events
from sftcore._train.loop import Stage, StageParts
from sftcore._train.model import TransferModel
from sftcore.errors import ConfigError, Interrupted

from .pretrain_cache import PretrainCache

STAGE_SEED_OFFSET = {"pretrain": 0, "finetune": 1, "baseline": 2}


@dataclass
class Start:
    """Where finetuning starts: a backbone, the head that came with it and its classes, and the
    pretrain result when a pretrain stage produced it."""

    backbone: Backbone
    head: torch.nn.Module | None
    classes: list[str] | None
    result: dict | None = None


class Pipeline:
    def __init__(
        self,
        cfg: RunConfig | dict,
        run_dir: Path | None,
        progress: bool,
        echo: Callable[[str], None] | None,
        resume: bool = False,
        stop: StopSignals | None = None,
        events: Events = NO_EVENTS,
    ):
        # the typed config the pipeline reads; its mapping (cfg) is what plugins and files get
        self.config = cfg if isinstance(cfg, RunConfig) else RunConfig.of(cfg)
        self.cfg, self.run_dir, self.progress, self.echo = self.config.raw, run_dir, progress, echo
        self.resume, self.stop, self.events = resume, stop, events
        self.registry = get_registry()
        self.perf = resolve_performance(self.config)
        self.log = MetricsLog(run_dir / rundir.METRICS if run_dir and distributed.is_main() else None)
        self.seed = self.config.seed
        self.seeds = self.config.seed_list
        self.info = RunInfo(config=self.cfg, run_dir=run_dir, seeds=list(self.seeds), resumed=resume)
        self._splits: dict[str, StageData] = {}
        self._said: set[str] = set()  # say_once's lines

    def _check_stop(self) -> None:
        """Between stages: a signal that came outside the training loop stops the run here."""
        if self.stop is None:
            return
        flag = torch.tensor([int(self.stop.signum is not None)], device=self.perf.device)
        if distributed.all_reduce_(flag, "max").item():  # every rank stops here, or none
            raise Interrupted(
                f"{self.stop.name if self.stop.signum else 'SIGTERM'}; every finished stage is saved",
                self.stop.signum or signal.SIGTERM,
            )

    def say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    def say_once(self, text: str) -> None:
        """A line said once per run, however many seeds' stages have it to say."""
        if text not in self._said:
            self._said.add(text)
            self.say(text)

    def build_backbone(self, random_init: bool = False, seed: int | None = None) -> Backbone:
        seed = self.seed if seed is None else seed
        return components.build_backbone(self.config.backbone.entry(), self.registry, seed, random_init)

    def _augmentations(self, data: StageData, scfg: StageConfig | None, stage: str) -> list:
        """The stage's ``augment:`` list, or the dataset's default when it is null, built."""
        augment = scfg.augment if scfg is not None else None
        entries = None if augment is None else [a.entry() for a in augment]
        where = f"{stage}.augment"
        if entries is None:
            default = data.augment
            entries, where = (
                (default.entries() if isinstance(default, Augment) else list(default or [])),
                f"{stage}.dataset '{data.name}' default augment",
            )
        return [components.build_augmentation(self.registry, a, f"{where}[{i}]") for i, a in enumerate(entries)]

    def transforms(self, data: StageData, backbone: Backbone, scfg: StageConfig | None = None, stage: str = "stage"):
        """The training and the evaluation transform; ``scfg`` (the stage's config) chooses the
        augmentations (without it: the dataset's default)."""
        in_shape = data.train.image_shape
        out_shape = backbone.input_size if backbone.fixed_input_size else (backbone.input_size[0], *in_shape[1:])
        if in_shape[0] != out_shape[0] and 1 not in (in_shape[0], out_shape[0]):
            raise ConfigError(
                f"config: the dataset '{data.name}' has {in_shape[0]}-channel images but the backbone "
                f"takes {out_shape[0]} channels; only 1 <-> {max(in_shape[0], out_shape[0])} is "
                "converted: set the backbone's in_chans to match"
            )
        mean = backbone.mean if backbone.mean is not None else data.mean
        std = backbone.std if backbone.std is not None else data.std

        def make(aug):
            return BatchTransform(
                mean,
                std,
                aug,
                in_shape,
                out_shape,
                self.perf.device,
                self.perf.channels_last,
                num_classes=len(data.classes),
            )

        return make(self._augmentations(data, scfg, stage)), make(None)

    def _train_batches(self, train, batch_size: int, transform: BatchTransform, seed: int):
        """``ctx.train_batches()``: every training example once, un-augmented, in an order shuffled from
        ``seed`` (the same at every call), so that a plugin reading only the first examples sees every
        class: image folders store their examples class by class."""

        def batches():
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
            for x, y in Batches(train.subset(order), batch_size, self.perf.device, shuffle=False):
                yield transform(x), y

        return batches

    def _val_batches(self, data: StageData, batch_size: int, transform: BatchTransform):
        """``ctx.extract_val_features``' batches: the validation split once, un-augmented; None without one."""
        if data.val is None or not len(data.val):
            return None

        def batches():
            for x, y in Batches(data.val, batch_size, self.perf.device, shuffle=False):
                yield transform(x), y

        return batches

    def _model(self, backbone: Backbone, head: torch.nn.Module) -> TransferModel:
        model = TransferModel(backbone, head).to(self.perf.device)
        if self.perf.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.perf.compile:
            model.backbone.compile()
        return model

    def _regularizers(self, name: str, scfg: StageConfig) -> list:
        return [
            components.build(self.registry, "regularizers", r.entry(), f"{name}.regularizers[{i}]")
            for i, r in enumerate(scfg.regularizers)
        ]

    def train_pretrain(self, backbone: Backbone, data: StageData, seed: int, tag: str) -> tuple[TransferModel, dict]:
        """The config's pretrain stage, trained (the pretrain cache calls this on a miss)."""
        scfg = self.config.stage("pretrain")
        return self.train_stage("pretrain", scfg, backbone, data, backbone.head, backbone.source_classes, seed, tag)

    def stage_model(
        self, name: str, scfg: StageConfig, backbone: Backbone, data: StageData, source_head, source_classes, seed: int
    ) -> TransferModel:
        """Stage ``name``'s model as train_stage assembles it, untrained: what finished weights load into (a resumed
        run's finished stage, a pretrain cache hit) without building the rest of the stage."""
        _, eval_tf = self.transforms(data, backbone, scfg, name)
        return self._assemble(name, scfg, backbone, data, source_head, source_classes, seed, eval_tf)[2]

    def model_file(self, name, tag, seed, model, data, train_tf, scfg, result) -> dict:
        """A stage's model file (checkpoints.save_model_file's fields): weights, classes and the preprocessing
        `sft predict` repeats on new images. Under an adapter, compact: without the frozen base, whose hash it
        records with where the base comes from (``_base_start``), for sftcore.load to rebuild it."""
        parts = dict(
            stage=name,
            tag=tag,
            seed=seed,
            model=model.state_dict(),
            classes=data.classes,
            mean=list(map(float, train_tf.mean)),
            std=list(map(float, train_tf.std)),
            # what the dataset gave and what the model took: `sft predict` prepares new images alike
            image_shape=list(data.train.image_shape),
            input_shape=[train_tf.out_channels, *train_tf.out_hw],
            config=scfg.raw,
            result=dict(result),
            backbone=self.config.backbone.entry(),
            run_seed=self.seed,
            backbone_plugin=self._backbone_plugin(),
        )
        if scfg.adapter is not None:
            parts[checkpoints.FROZEN_BASE] = {"start": self._base_start(name, tag, seed)}
        return checkpoints.compact(parts, model)

    def _base_start(self, name: str, tag: str, seed: int) -> dict:
        """Where a stage's backbone started, so that sftcore.load can rebuild a compact file's frozen base: the
        pretrain stage's model file (its tag), or the backbone as built (with weights, or a random init) and seed."""
        if name == "baseline":
            return {"random_init": True, "seed": seed}
        if self.config.pretrain is not None:
            return {"pretrain": "pretrain" + (tag[len(name) :] if self.config.pretrain_per_seed else "")}
        return {"random_init": False, "seed": self.seed}

    def build_stage(
        self,
        name: str,
        scfg: StageConfig,
        backbone: Backbone,
        data: StageData,
        source_head=None,
        source_classes=None,
        *,
        seed: int,
        tag: str,
        checkpoint: Path | None = None,
        events: Events | None = None,
        validate: bool = True,
    ) -> Stage:
        """Stage ``name`` assembled from its config, ready to run: the one seam that `train_stage` and
        `sft lr-find` share (``validate=False``: no validation split, no progress bar)."""
        train_tf, eval_tf = self.transforms(data, backbone, scfg, name)
        ctx, strategy, model, train = self._assemble(
            name, scfg, backbone, data, source_head, source_classes, seed, eval_tf
        )
        info = StageInfo(name=tag, stage=name, seed=seed, epochs=ctx.epochs, config=scfg.raw, run=self.info)
        parts = StageParts(
            name=tag,
            cfg=scfg,
            model=model,
            ctx=ctx,
            strategy=strategy,
            regularizers=self._regularizers(name, scfg),
            train=train,
            val=self._val(data, scfg) if validate else None,
            train_transform=train_tf,
            eval_transform=eval_tf,
            perf=self.perf,
            log=self.log,
            checkpoint=checkpoint,
            progress=self.progress and validate,
            stop=self.stop if validate else None,
            seed=seed,
            param_groups=self._param_groups(name, scfg),
            events=self.events if events is None else events,
            info=info,
            registry=self.registry,
            say=self.say_once if validate else None,
        )
        return Stage(parts)

    def train_stage(
        self,
        name: str,
        scfg: StageConfig,
        backbone: Backbone,
        data: StageData,
        source_head=None,
        source_classes=None,
        seed: int | None = None,
        tag: str | None = None,
    ) -> tuple[TransferModel, dict]:
        """Train stage ``name`` for ``seed``; ``tag`` names its files and log lines (``finetune-seed1``)."""
        t0 = time.perf_counter()
        seed, tag = self.seed if seed is None else seed, tag or name
        progress, final = checkpoints.paths(self.run_dir, tag, self.config.checkpoints)
        if self.resume and final is not None and final.exists():  # finished before the interruption
            model = self.stage_model(name, scfg, backbone, data, source_head, source_classes, seed)
            return model, self._reuse(model, final, seed, tag)
        stage = self.build_stage(
            name, scfg, backbone, data, source_head, source_classes, seed=seed, tag=tag, checkpoint=progress
        )
        model, info, train_tf, eval_tf = stage.model, stage.info, stage.train_transform, stage.eval_transform
        shapes = self._say_shapes(name, data, train_tf)
        if self.resume:
            self._resume_stage(stage, model, progress, tag)
        result = stage.run()
        result.update(
            **shapes,
            seed=seed,
            dataset=data.name,
            **data.sizes(),
            head=scfg.head.name,
            regularizers=[r.name for r in scfg.regularizers],
            adapter=None if scfg.adapter is None else scfg.adapter.name,
            **model.parameter_counts(),
        )
        self._test(tag, model, data, scfg, eval_tf, result)
        result["checkpoint_bytes"] = checkpoints.model_bytes(model)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        if final is not None and distributed.is_main():
            checkpoints.save_model_file(final, **self.model_file(name, tag, seed, model, data, train_tf, scfg, result))
        self.events("on_stage_end", info, result)
        return model, result

    def _say_shapes(self, name: str, data: StageData, train_tf: BatchTransform) -> dict:
        """The size the images are held at and the size the model sees them at, said once per stage (a folder of
        32 px images trained at a backbone's 224 px costs 50 times the compute): ``image_shape``, ``input_shape``."""
        shapes = image_shapes(data, train_tf)
        self.say_once(f"{name}: {shapes_text(shapes)}")
        return shapes

    def _backbone_plugin(self) -> dict:
        """Which plugin (and distribution) provides the backbone: named when sftcore.load lacks it."""
        from sftcore._plugins.manager import plugin_info

        comp = self.registry.get("backbones", self.config.backbone.name)
        info = plugin_info(comp.plugin)
        return {"plugin": comp.plugin, "distribution": info.distribution if info else None}

    def _assemble(
        self,
        name: str,
        scfg: StageConfig,
        backbone: Backbone,
        data: StageData,
        source_head,
        source_classes,
        seed: int,
        eval_tf: BatchTransform,
    ):
        """The stage's context, head strategy, model (with the strategy's head) and training batches."""
        self._adapt(name, scfg, backbone, seed + STAGE_SEED_OFFSET.get(name, 3))  # before the head and groups
        ctx, on_device = self._context(name, scfg, backbone, data, seed, eval_tf, source_head, source_classes)
        train = Batches(on_device, scfg.batch_size, self.perf.device, shuffle=True, seed=ctx.seed, sharded=True)
        strategy = components.build(self.registry, "heads", scfg.head.entry(), f"{name}.head")
        torch.manual_seed(ctx.seed)
        model = self._model(backbone, strategy.build_head(ctx))
        return ctx, strategy, model, train

    def _adapt(self, name: str, scfg: StageConfig, backbone: Backbone, seed: int) -> None:
        """The stage's adapter applied to its backbone (its own copy), before the head strategy and the parameter
        groups see it; what the adapter left frozen is pinned, so no head strategy's unfreeze trains it."""
        if scfg.adapter is None:
            return
        adapter = components.build(self.registry, "adapters", scfg.adapter.entry(), f"{name}.adapter")
        with torch.random.fork_rng(devices=[]):  # its new weights (LoRA's A) from the stage's seed, not the run's
            torch.manual_seed(seed)
            with components.located(f"{name}.adapter"):
                adapter.apply(backbone)
        if not any(p.requires_grad for p in backbone.features.parameters()):
            raise ConfigError(
                f"config: {name}.adapter '{scfg.adapter.name}' left no backbone parameter trainable; "
                f"use head: linear_probe to train the head alone"
            )
        pin_frozen(backbone.features)

    def _val(self, data: StageData, scfg: StageConfig) -> Batches | None:
        if data.val is None:
            return None
        return Batches(data.val, scfg.eval_batch_size, self.perf.device, shuffle=False, sharded=True)

    def _param_groups(self, name: str, scfg: StageConfig):
        if scfg.param_groups is None:
            return None
        return components.build(self.registry, "param_groups", scfg.param_groups.entry(), f"{name}.param_groups")

    def _reuse(self, model: TransferModel, final: Path, seed: int, tag: str) -> dict:
        state = checkpoints.load_run_file(final, map_location="cpu")  # result tensors stay on the CPU
        if state.get("seed", seed) != seed:
            raise ConfigError(
                f"checkpoint '{final}' was trained with seed {state['seed']}, not {seed}; the run's "
                "seeds changed: start a new run"
            )
        checkpoints.load_model(model, state, final)
        self.say(f"{tag}: finished in the earlier session, reusing {final}")
        return state["result"]

    def _resume_stage(self, stage: Stage, model: TransferModel, checkpoint: Path | None, tag: str) -> None:
        if checkpoint is not None and checkpoint.exists():
            state = checkpoints.load_run_file(checkpoint, map_location=self.perf.device)
            checkpoints.load_model(model, state, checkpoint)
            stage.load_state_dict(state)
            at = f"epoch {stage.start_epoch}" + (f", batch {state['batch']}" if state["batch"] else "")
            self.say(f"{tag}: resuming after {at} of {stage.budget} epochs")
        self.log.keep(tag, len(stage.history))

    def _test(self, tag: str, model: TransferModel, data: StageData, scfg: StageConfig, eval_tf, result: dict) -> None:
        """Test accuracy, loss, top-5 accuracy (more than 5 classes, else None), balanced accuracy and macro-F1
        into ``result`` (all None without a test split), with the per-example hits (``correct``) for the verdict;
        the stage's ``tta`` applies here only (validation, and so the kept epoch, never sees it)."""
        from sftcore._analysis import metrics

        result.update(
            test_accuracy=None,
            test_loss=None,
            test_top5_accuracy=None,
            test_balanced_accuracy=None,
            test_macro_f1=None,
            correct=None,
        )
        if data.test is None or not len(data.test):
            return
        test = Batches(data.test, scfg.eval_batch_size, self.perf.device, shuffle=False, sharded=True)
        ev = evaluate(model, test, eval_tf, self.perf, tta=scfg.tta)
        result.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"], correct=ev["correct"])
        extra = metrics.scores(ev["targets"], ev["predicted"], ev["top_k"], len(data.classes))
        result.update({f"test_{key}": value for key, value in extra.items()})
        if self.run_dir is not None and distributed.is_main():
            write_predictions(self.run_dir, tag, data.classes, ev)

    # ------------------------------------------------------------------ stages over seeds
    def stage_data(self, stage: str, backbone: Backbone, seed: int) -> StageData:
        """The stage's dataset is loaded once (with the run's seed); each seed draws its own subset."""
        ds_cfg = self.config.stage(stage).dataset
        assert ds_cfg is not None  # resolve requires a stage's dataset
        if stage not in self._splits:
            self._splits[stage] = load_splits(stage, ds_cfg, backbone, self.seed, self.registry)
        return subset_stage_data(self._splits[stage], stage, ds_cfg, seed)

    def stage_features(self, name: str, backbone: Backbone, data: StageData, seed: int):
        """Features ``[N, D]`` and labels of the stage's training examples exactly as its head strategies see
        them (``ctx.extract_features``: eval mode, no gradient, the stage's evaluation transform), and the sizes
        (``image_shapes``) they were computed at: what `sft rank` scores a candidate backbone on."""
        scfg = self.config.stage(name)
        _, eval_tf = self.transforms(data, backbone, scfg, name)
        features, labels = self._context(name, scfg, backbone, data, seed, eval_tf)[0].extract_features()
        return features, labels, image_shapes(data, eval_tf)

    def _context(self, name, scfg, backbone, data, seed, eval_tf, source_head=None, source_classes=None):
        """``(TrainContext, the training split on the device)``: what a stage's head strategy and regularizers
        see (the backbone moved to the device; the split moved once)."""
        perf, stage_seed = self.perf, seed + STAGE_SEED_OFFSET.get(name, 3)
        on_device = data.train.to(perf.device) if isinstance(data.train, ImageSet) else data.train  # once
        backbone.features.to(perf.device)
        ctx = TrainContext(
            stage=name,
            backbone=backbone,
            classes=data.classes,
            epochs=scfg.budget,
            epochs_auto=scfg.epochs == "auto",
            device=perf.device,
            seed=stage_seed,
            source_classes=source_classes,
            source_head=source_head,
            train_batches=self._train_batches(on_device, scfg.eval_batch_size, eval_tf, stage_seed),
            val_batches=self._val_batches(data, scfg.eval_batch_size, eval_tf),
        )
        return ctx, on_device

    def _check_data(self, backbone: Backbone) -> None:
        """Every stage's data, for every seed, before any training: a mistake in the finetune data
        fails in seconds, not after pretraining (and leaves no run behind)."""
        for stage in ("pretrain", "finetune"):
            if getattr(self.config, stage) is not None:
                per_seed = stage == "finetune" or self.config.pretrain_per_seed
                for seed in self.seeds if per_seed else [self.seed]:
                    self.stage_data(stage, backbone, seed)

    def _probe_regularizers(self, backbone: Backbone) -> None:
        """The regularizers of the stages after pretraining, built and set up on a copy of the model and asked
        for one penalty on one batch of the first seed's finetune data (``Stage.probe``), before pretraining:
        a plugin's wrong return type is one line in seconds. The caller's random state is left untouched."""
        if self.config.pretrain is None:
            return  # the first stage's first step checks them at once
        for name in ("finetune", "baseline"):
            scfg = getattr(self.config, name)
            if scfg is None or not scfg.regularizers:
                continue
            devices = [self.perf.device] if self.perf.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                copied, seed = copy.deepcopy(backbone), self.seeds[0]
                data = self.stage_data("finetune", copied, seed)
                source: dict = {}
                if name == "finetune":  # a stand-in for the head pretraining will give it, with its classes
                    classes = self.stage_data("pretrain", copied, self.seed).classes
                    source = {
                        "source_head": torch.nn.Linear(copied.num_features, len(classes)),
                        "source_classes": classes,
                    }
                self.build_stage(name, scfg, copied, data, **source, seed=seed, tag=name, validate=False).probe()

    def _label(self, name: str, seed: int) -> str:
        return name if len(self.seeds) == 1 else f"{name} (seed {seed})"

    def pretrain(self, backbone: Backbone, seed: int, tag: str) -> Start:
        data = self.stage_data("pretrain", backbone, seed)
        cache = PretrainCache(self)
        entry = cache.entry(backbone, data, seed, tag)
        if entry is None:
            model, result = self.train_pretrain(backbone, data, seed, tag)
        else:
            model, result = cache.pretrain(entry, backbone, data, seed, tag)
        if backbone.mean is None:  # the features were learned on inputs normalised like this
            backbone.mean, backbone.std = data.mean, data.std
        self.say(
            f"{self._label('pretrain', seed) if tag != 'pretrain' else 'pretrain'} done: "
            f"test accuracy {_pct(result['test_accuracy'])}"
        )
        self._check_stop()
        return Start(backbone, model.head, data.classes, result)

    def _one_seed(self, index: int, seed: int, shared: Start | None) -> dict:
        """Every per-seed stage for ``seed``; the first seed's files carry the plain stage names."""
        config, suffix = self.config, "" if index == 0 else f"-seed{seed}"
        results: dict[str, Any] = {}
        if index:
            self._check_stop()
        start = shared
        if start is None:  # pretrain_per_seed
            start = self.pretrain(self.build_backbone(seed=seed), seed, "pretrain" + suffix)
            results["pretrain"] = start.result
        if config.finetune is None:
            return results
        backbone = copy.deepcopy(start.backbone)  # every seed starts from the same pretrained weights
        data = self.stage_data("finetune", backbone, seed)
        _, results["finetune"] = self.train_stage(
            "finetune",
            config.finetune,
            backbone,
            data,
            copy.deepcopy(start.head),
            start.classes,
            seed,
            "finetune" + suffix,
        )
        self.say(f"{self._label('finetune', seed)} done: test accuracy {_pct(results['finetune']['test_accuracy'])}")
        if config.baseline is not None:
            self._check_stop()
            fresh = self.build_backbone(random_init=True, seed=seed)
            _, results["baseline"] = self.train_stage(
                "baseline", config.baseline, fresh, data, seed=seed, tag="baseline" + suffix
            )
            self.say(
                f"{self._label('baseline', seed)} done: test accuracy {_pct(results['baseline']['test_accuracy'])}"
            )
        return results

    def _starts_random(self, backbone: Backbone) -> bool:
        """The backbone as built equals a random init of the same seed: it loaded no weights."""
        with torch.random.fork_rng(devices=[]):
            fresh = self.build_backbone(random_init=True)
        built, other = backbone.features.state_dict(), fresh.features.state_dict()
        return built.keys() == other.keys() and all(torch.equal(built[k], other[k].to(built[k].device)) for k in built)

    def run(self, write: Callable[[dict], None] | None = None) -> dict:
        """The summary; ``write`` saves it (summary.json) before the callbacks hear ``on_run_end``, so that
        a logger copying the run directory copies it too."""
        self.events("on_run_start", self.info)
        summary = self._run()
        if self.events.errors:
            summary["callback_errors"] = list(self.events.errors)
        if write is not None:
            write(summary)
        self.events("on_run_end", self.info, summary)
        if self.events.errors and write is not None and self.events.errors != summary.get("callback_errors"):
            summary["callback_errors"] = list(self.events.errors)  # a failure in on_run_end itself
            write(summary)
        return summary

    def _run(self) -> dict:
        config = self.config
        t0 = time.perf_counter()
        summary: dict = {
            "name": config.name,
            "seed": self.seed,
            "seeds": self.seeds,
            "pretrain_per_seed": config.pretrain_per_seed,
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "performance": self.perf.describe(),
            "environment": environment(self.perf),
            "world_size": distributed.world_size(),
        }
        backbone = self.build_backbone()
        random_start = config.pretrain is None and config.baseline is not None and self._starts_random(backbone)
        self._check_data(backbone)
        self._probe_regularizers(backbone)
        held_warnings.release()  # the checks passed: a library's warning is no longer in front of an error line
        self._check_stop()
        shared: Start | None = Start(backbone, backbone.head, backbone.source_classes)
        if config.pretrain is not None:
            shared = None if config.pretrain_per_seed else self.pretrain(backbone, self.seed, "pretrain")
            if shared is not None:
                self._splits.pop("pretrain", None)  # trained once: its data is not needed again
        runs = []
        if config.finetune is not None or shared is None:
            runs = [self._one_seed(i, seed, shared) for i, seed in enumerate(self.seeds)]
        else:  # one pretraining, no per-seed stage: that one seed is what ran
            summary["seeds"] = [self.seed]
        if shared is not None and shared.result is not None:
            summary["pretrain"] = shared.result
        summary.update(report.summarise(runs, self.seeds, summary.get("pretrain"), random_start))
        summary["seconds"]["total"] = round(time.perf_counter() - t0, 3)
        return summary


def _pct(x) -> str:
    return "n/a (no test split)" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"
