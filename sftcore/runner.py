"""The pipeline: pretrain -> finetune -> (scratch baseline) -> evaluate, wired from a resolved config."""

from __future__ import annotations

import math
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import config as cfgmod
from . import distributed, storage
from .api import (Augment, Backbone, BackboneContext, DatasetContext, DataSplits, FileSet, ImageSet, TrainContext)
from .data import Batches, BatchTransform, few_label_index, holdout_index
from .errors import ConfigError, Interrupted, PluginError, SftError, TrainingError
from .interrupt import StopSignals
from .model import TransferModel
from .plugins import get_registry
from .report import results_table, transfer_verdict
from .training import MetricsLog, Performance, Stage, evaluate


# --------------------------------------------------------------------------- device and precision
def resolve_performance(cfg: dict) -> Performance:
    """``auto`` follows measurements (docs/performance.md): channels_last on CPU and CUDA; fp32 on the
    CPU (bf16 was faster there but cost the shapes demo 11 points of transfer gain); bf16 autocast on
    CUDA (usual practice, not yet measured: no GPU); no torch.compile (compile time outweighs short runs)."""
    want = cfg["device"]
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else (
            "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    elif want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config: device is cuda but torch sees no CUDA device; use device: auto or cpu")
    elif want == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("config: device is mps but torch sees no MPS device; use device: auto or cpu")
    device = torch.device(want)
    if distributed.env_world_size() > 1:  # one process per device under torchrun
        device = distributed.setup(device.type) or device
    precision = cfg["precision"]
    if precision == "auto":
        if device.type == "cuda":
            # native bf16 from Ampere (capability 8) on; older GPUs only emulate it
            precision = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
        else:
            precision = "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"config: precision fp16 needs CUDA (device is {device.type}); use bf16 or fp32")
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    channels_last = device.type in ("cpu", "cuda") if cfg["channels_last"] == "auto" else cfg["channels_last"]
    compile_ = False if cfg["compile"] == "auto" else cfg["compile"]
    return Performance(device=device, amp_dtype=amp, channels_last=channels_last, compile=compile_)


# --------------------------------------------------------------------------- data
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
        return {"classes": len(self.classes), "train_examples": len(self.train),
                "val_examples": len(self.val) if self.val is not None else 0,
                "test_examples": len(self.test) if self.test is not None else 0}


def _check_set(data, what: str, classes: int, plugin: str) -> None:
    if data is None:
        return
    if not isinstance(data, (ImageSet, FileSet)):
        raise PluginError(f"dataset plugin '{plugin}' returned {what} of type {type(data).__name__}, "
                          "not an ImageSet or FileSet")
    if isinstance(data, ImageSet):
        if data.images.dtype != torch.uint8 or data.images.ndim != 4:
            raise PluginError(f"dataset plugin '{plugin}': {what}.images must be uint8 [N, C, H, W], "
                              f"got {data.images.dtype} {tuple(data.images.shape)}")
        if len(data.images) != len(data.labels):
            raise PluginError(f"dataset plugin '{plugin}': {what} has {len(data.images)} images but "
                              f"{len(data.labels)} labels")
    if data.labels.dtype != torch.int64:
        raise PluginError(f"dataset plugin '{plugin}': {what}.labels must be int64, got {data.labels.dtype}")
    if len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= classes):
        raise PluginError(f"dataset plugin '{plugin}': {what} labels fall outside 0..{classes - 1}")


def load_stage_data(stage: str, ds_cfg: dict, backbone: Backbone, seed: int, registry) -> StageData:
    comp = registry.get("datasets", ds_cfg["name"])
    options = {k: v for k, v in ds_cfg.items() if k != "name" and k not in cfgmod.DATASET_RUNNER_KEYS}
    splits = comp.create(DatasetContext(seed=seed, input_size=backbone.input_size, stage=stage),
                         where=f"config: {stage}.dataset", **options)
    if not isinstance(splits, DataSplits):
        raise PluginError(f"dataset '{comp.name}' (plugin '{comp.plugin}') returned {type(splits).__name__}, "
                          "not sftcore.api.DataSplits")
    for what in ("train", "val", "test"):
        part = getattr(splits, what)
        _check_set(part, what, len(splits.classes), comp.plugin)
        if part is not None and tuple(part.image_shape) != tuple(splits.train.image_shape):
            raise PluginError(f"dataset plugin '{comp.plugin}': {what} images are {tuple(part.image_shape)}, "
                              f"train images {tuple(splits.train.image_shape)}; all splits must match")
    train, val = splits.train, splits.val
    want = ds_cfg["labels_per_class"]
    if want is not None and len(train):
        counts = torch.bincount(train.labels.cpu(), minlength=len(splits.classes))
        have = int(counts.min())
        if have < want:
            short = splits.classes[int(counts.argmin())]
            raise ConfigError(f"config: {stage}.dataset.labels_per_class is {want} but class '{short}' has only "
                              f"{have} training examples; set labels_per_class to {have} or less")
    sub = few_label_index(train.labels, seed, ds_cfg["labels_per_class"], ds_cfg["fraction"])
    if sub is not None:
        train = train.subset(sub)
    if val is None and ds_cfg["val_fraction"] > 0:
        # Validation comes out of the (few-label) training data, never out of the test split.
        tr, va = holdout_index(train.labels, ds_cfg["val_fraction"], seed + 1)
        train, val = train.subset(tr), train.subset(va)
    if len(train) == 0:
        raise ConfigError(f"config: {stage}.dataset '{comp.name}' leaves no training examples")
    return StageData(comp.name, list(splits.classes), train, val, splits.test, splits.mean, splits.std,
                     splits.augment)


# --------------------------------------------------------------------------- stages
def build_backbone(cfg: dict, registry, random_init: bool = False) -> Backbone:
    """The configured backbone, seeded from the config; shared with `sft predict`, which rebuilds a run's model."""
    comp = registry.get("backbones", cfg["backbone"]["name"])
    options = {k: v for k, v in cfg["backbone"].items() if k != "name"}
    torch.manual_seed(cfg["seed"])
    backbone = comp.create(BackboneContext(seed=cfg["seed"], random_init=random_init),
                           where="config: backbone", **options)
    if not isinstance(backbone, Backbone):
        raise PluginError(f"backbone '{comp.name}' (plugin '{comp.plugin}') returned "
                          f"{type(backbone).__name__}, not sftcore.api.Backbone")
    return backbone


class Pipeline:
    def __init__(self, cfg: dict, run_dir: Path | None, progress: bool, echo: Callable[[str], None] | None,
                 resume: bool = False, stop: StopSignals | None = None):
        self.cfg, self.run_dir, self.progress, self.echo = cfg, run_dir, progress, echo
        self.resume, self.stop = resume, stop
        self.registry = get_registry()
        self.perf = resolve_performance(cfg)
        self.log = MetricsLog(run_dir / "metrics.jsonl" if run_dir and distributed.is_main() else None)
        self.seed = cfg["seed"]

    def _check_stop(self) -> None:
        """Between stages: a signal that came outside the training loop stops the run here."""
        if self.stop is None:
            return
        flag = torch.tensor([int(self.stop.signum is not None)], device=self.perf.device)
        if distributed.all_reduce_(flag, "max").item():  # every rank stops here, or none
            raise Interrupted(f"{self.stop.name if self.stop.signum else 'SIGTERM'}; every finished stage is saved",
                              self.stop.signum or signal.SIGTERM)

    def say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    def build_backbone(self, random_init: bool = False) -> Backbone:
        return build_backbone(self.cfg, self.registry, random_init)

    def _transforms(self, data: StageData, backbone: Backbone):
        in_shape = data.train.image_shape
        out_shape = backbone.input_size if backbone.fixed_input_size else (backbone.input_size[0], *in_shape[1:])
        if in_shape[0] != out_shape[0] and 1 not in (in_shape[0], out_shape[0]):
            raise ConfigError(f"config: the dataset '{data.name}' has {in_shape[0]}-channel images but the backbone "
                              f"takes {out_shape[0]} channels; only 1 <-> {max(in_shape[0], out_shape[0])} is "
                              "converted: set the backbone's in_chans to match")
        mean = backbone.mean if backbone.mean is not None else data.mean
        std = backbone.std if backbone.std is not None else data.std
        make = lambda aug: BatchTransform(mean, std, aug, in_shape, out_shape, self.perf.device,  # noqa: E731
                                          self.perf.channels_last)
        return make(data.augment), make(None)

    def train_stage(self, name: str, scfg: dict, backbone: Backbone, data: StageData,
                    source_head=None, source_classes=None) -> tuple[TransferModel, dict]:
        t0 = time.perf_counter()
        perf = self.perf
        train_tf, eval_tf = self._transforms(data, backbone)
        stage_seed = self.seed + {"pretrain": 0, "finetune": 1, "baseline": 2}.get(name, 3)
        on_device = data.train.to(perf.device) if isinstance(data.train, ImageSet) else data.train  # once
        train = Batches(on_device, scfg["batch_size"], perf.device, shuffle=True, seed=stage_seed, sharded=True)
        val = (Batches(data.val, scfg["eval_batch_size"], perf.device, shuffle=False, sharded=True)
               if data.val is not None else None)
        plain = Batches(on_device, scfg["eval_batch_size"], perf.device, shuffle=False)
        backbone.features.to(perf.device)

        def batches():
            for x, y in plain:
                yield eval_tf(x), y

        ctx = TrainContext(stage=name, backbone=backbone, classes=data.classes, epochs=scfg["epochs"],
                           device=perf.device, seed=stage_seed, train_batches=batches,
                           source_classes=source_classes, source_head=source_head)
        heads = self.registry.get("heads", scfg["head"]["name"])
        strategy = heads.create(where=f"config: {name}.head",
                                **{k: v for k, v in scfg["head"].items() if k != "name"})
        torch.manual_seed(stage_seed)
        head = strategy.build_head(ctx)
        model = TransferModel(backbone, head).to(perf.device)
        if perf.channels_last:
            model.to(memory_format=torch.channels_last)
        if perf.compile:
            model.backbone.compile()
        regs = []
        for i, rcfg in enumerate(scfg["regularizers"]):
            comp = self.registry.get("regularizers", rcfg["name"])
            regs.append(comp.create(where=f"config: {name}.regularizers[{i}]",
                                    **{k: v for k, v in rcfg.items() if k != "name"}))
        checkpoint = final = None
        if self.run_dir is not None and self.cfg["checkpoints"]:
            checkpoint = self.run_dir / "checkpoints" / f"{name}-last.pt"
            final = self.run_dir / "checkpoints" / f"{name}.pt"
        if self.resume and final is not None and final.exists():  # finished before the interruption
            state = _load_run_file(final, map_location="cpu")  # result tensors stay on the CPU
            _load_model(model, state, final)
            self.say(f"{name}: finished in the earlier session, reusing {final}")
            return model, state["result"]
        stage = Stage(name=name, cfg=scfg, model=model, ctx=ctx, strategy=strategy, regularizers=regs,
                      train=train, val=val, train_transform=train_tf, eval_transform=eval_tf, perf=perf,
                      log=self.log, checkpoint=checkpoint, progress=self.progress, echo=self.echo, stop=self.stop)
        if self.resume:
            if checkpoint is not None and checkpoint.exists():
                state = _load_run_file(checkpoint, map_location=perf.device)
                _load_model(model, state, checkpoint)
                stage.load_state_dict(state)
                at = f"epoch {stage.start_epoch}" + (f", batch {state['batch']}" if state["batch"] else "")
                self.say(f"{name}: resuming after {at} of {scfg['epochs']} epochs")
            self.log.keep(name, len(stage.history))
        result = stage.run()
        result.update(dataset=data.name, **data.sizes(), head=scfg["head"]["name"],
                      regularizers=[r["name"] for r in scfg["regularizers"]])
        result["correct"] = None
        if data.test is not None and len(data.test):
            test = Batches(data.test, scfg["eval_batch_size"], perf.device, shuffle=False, sharded=True)
            ev = evaluate(model, test, eval_tf, perf)
            result.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"])
            result["correct"] = ev["correct"]
            if self.run_dir is not None and distributed.is_main():  # for `sft plot`'s confusion matrix
                (self.run_dir / "predictions").mkdir(exist_ok=True)
                storage.write_json(self.run_dir / "predictions" / f"{name}.json", {
                    "stage": name, "classes": data.classes,
                    "targets": ev["targets"].tolist(), "predicted": ev["predicted"].tolist()}, indent=None)
        else:
            result.update(test_accuracy=None, test_loss=None)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        if final is not None and distributed.is_main():
            storage.save({"stage": name, "model": model.state_dict(), "classes": data.classes,
                        "mean": list(map(float, train_tf.mean)), "std": list(map(float, train_tf.std)),
                        # what the dataset gave and what the model took: `sft predict` prepares new images alike
                        "image_shape": list(data.train.image_shape),
                        "input_shape": [train_tf.out_channels, *train_tf.out_hw],
                        "config": scfg, "result": result}, final)
        return model, result

    def run(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        summary: dict = {"name": cfg["name"], "seed": self.seed, "run_dir": str(self.run_dir) if self.run_dir else None,
                         "performance": self.perf.describe(), "world_size": distributed.world_size()}
        backbone = self.build_backbone()
        source_head, source_classes = backbone.head, backbone.source_classes
        results: dict[str, dict] = {}
        self._check_stop()
        if cfg["pretrain"] is not None:
            data = load_stage_data("pretrain", cfg["pretrain"]["dataset"], backbone, self.seed, self.registry)
            model, results["pretrain"] = self.train_stage("pretrain", cfg["pretrain"], backbone, data,
                                                          source_head, source_classes)
            source_head, source_classes = model.head, data.classes
            if backbone.mean is None:  # the features were learned on inputs normalised like this
                backbone.mean, backbone.std = data.mean, data.std
            self.say(f"pretrain done: test accuracy {_pct(results['pretrain']['test_accuracy'])}")
            self._check_stop()
        if cfg["finetune"] is not None:
            data = load_stage_data("finetune", cfg["finetune"]["dataset"], backbone, self.seed, self.registry)
            _, results["finetune"] = self.train_stage("finetune", cfg["finetune"], backbone, data,
                                                      source_head, source_classes)
            self.say(f"finetune done: test accuracy {_pct(results['finetune']['test_accuracy'])}")
            self._check_stop()
            if cfg["baseline"] is not None:
                fresh = self.build_backbone(random_init=True)
                _, results["baseline"] = self.train_stage("baseline", cfg["baseline"], fresh, data)
                self.say(f"baseline done: test accuracy {_pct(results['baseline']['test_accuracy'])}")
        correct = {k: v.pop("correct") for k, v in results.items()}
        summary.update(results)
        summary.update(transfer_verdict(results, correct))
        summary["seconds"] = {k: v["seconds"] for k, v in results.items()}
        summary["seconds"]["total"] = round(time.perf_counter() - t0, 3)
        return summary


def _pct(x) -> str:
    return "n/a (no test split)" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


RUN_FILES = ("config.yaml", "summary.json", "metrics.jsonl", "checkpoints", "predictions", "plots")


def check_batch_sizes(cfg: dict, world: int) -> None:
    """``batch_size`` is global: each of ``world`` processes needs at least 2 examples of every batch."""
    for stage in cfgmod.STAGES:
        if world > 1 and cfg[stage] is not None and cfg[stage]["batch_size"] < 2 * world:
            raise ConfigError(f"config: {stage}.batch_size is {cfg[stage]['batch_size']}, the global batch of "
                              f"{world} processes; each needs at least 2 examples: use {2 * world} or more")


def new_run_path(name: str) -> Path:
    """``runs/<name>-<timestamp>``, numbered if taken (not created here)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{name}-{stamp}"
    i = 1
    while path.exists():
        i += 1
        path = Path("runs") / f"{name}-{stamp}-{i}"
    return path


def _run_dir(out, name: str, force: bool) -> Path:
    """A new run directory; an existing run in ``out`` is replaced only with ``force``."""
    if out is None:
        path = new_run_path(name)
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out '{path}' is a file; choose a directory path")
        if path.is_dir() and any(path.iterdir()):
            ours = [path / f for f in RUN_FILES if (path / f).exists()]
            if not force:
                what = "already holds a run" if ours else "is not empty"
                raise ConfigError(f"--out '{path}' {what}; choose a new directory, continue it with "
                                  f"`sft run --resume {path}`, or replace it with --force")
            for item in ours:  # only what a run writes; other files stay
                if item.is_dir():
                    shutil.rmtree(item)
                else:
                    item.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory '{path}': {exc.strerror}") from None
    return path


def _load_run_file(path: Path, map_location) -> dict:
    state = storage.load(path, "checkpoint", "delete it to redo that part of the run, or start a new run",
                         map_location=map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise ConfigError(f"checkpoint '{path}' is not a sftcore stage checkpoint; delete it to redo that part "
                          "of the run, or start a new run")
    return state


def _load_model(model: TransferModel, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((line.strip() for line in first[1:] if line.strip()), first[0] if first else "")
        raise ConfigError(f"checkpoint '{path}' is for another model than the run's config builds ({detail[:160]}); "
                          "resume only with the run's own config.yaml, or start a new run") from None


def run(config=None, *, out=None, overrides=(), progress=None, echo=None, resume=None, force=False) -> dict:
    """Resolve the config, run every stage, write the run directory, return the summary.

    ``resume=RUN_DIR`` continues an interrupted run from its checkpoints with its own config;
    ``force=True`` replaces an earlier run in ``out``.
    """
    registry = get_registry()
    if resume is not None:
        if config is not None or overrides or out is not None or force:
            raise ConfigError("--resume takes the run's own config.yaml; drop CONFIG, --set, --out and --force")
        run_dir = Path(resume)
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume '{run_dir}' is not a run directory (it has no config.yaml); "
                              "pass the directory an earlier `sft run` printed")
        cfg = cfgmod.resolve(cfgmod.load(run_dir / "config.yaml"), registry)
        storage.remove_partial_writes(run_dir)
        if not cfg["checkpoints"]:
            raise ConfigError(f"--resume '{run_dir}': that run had checkpoints: false, so there is nothing to "
                              "continue from; start it again")
    else:
        cfg = cfgmod.resolve(cfgmod.load(config, overrides), registry)
    resolve_performance(cfg)  # joins torchrun's process group; a device error leaves no empty run directory
    try:
        check_batch_sizes(cfg, distributed.world_size())
        summary = _run(cfg, run_dir if resume is not None else None, out, force, progress, echo)
        distributed.barrier()  # rank 0 writes last; no rank leaves the group before it is done
        return summary
    finally:
        distributed.teardown()


def _run(cfg: dict, resume: Path | None, out, force: bool, progress, echo) -> dict:
    main = distributed.is_main()
    run_dir = resume
    if resume is None:
        made = None
        if main:
            try:
                made = _run_dir(out, cfg["name"], force)
                storage.write_text(made / "config.yaml", cfgmod.dump(cfg))
            except SftError as exc:
                distributed.broadcast_object(str(exc))  # the other ranks stop with the same line
                raise
        made = distributed.broadcast_object(str(made) if made is not None else None)
        if not isinstance(made, str) or not Path(made).is_dir():
            raise ConfigError(made if isinstance(made, str) else "rank 0 could not create the run directory")
        run_dir = Path(made)
    if cfg["checkpoints"] and main:
        (run_dir / "checkpoints").mkdir(exist_ok=True)
    if not main:
        echo, progress = None, False
    if progress is None:
        import sys

        progress = echo is not None and sys.stderr.isatty()
    again = f"resume with: sft run --resume {run_dir}" if cfg["checkpoints"] else "start the run again"
    try:
        with StopSignals(catch_repeats=distributed.active()) as stop:
            summary = Pipeline(cfg, run_dir, progress, echo, resume=resume is not None, stop=stop).run()
    except KeyboardInterrupt:  # outside the training loop (loading data, evaluating): nothing half-written
        raise Interrupted(f"Ctrl-C; every finished stage and epoch is saved; {again}", signal.SIGINT) from None
    except (Interrupted, TrainingError) as exc:
        if isinstance(exc, Interrupted):
            raise Interrupted(f"{exc}; {again}", exc.exit_code - 128) from None
        raise
    if main:
        storage.write_json(run_dir / "summary.json", summary)
    if echo is not None:
        echo(results_table(summary))
        echo(f"run directory: {run_dir}")
    return summary
