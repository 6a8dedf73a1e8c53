"""The pipeline: pretrain -> finetune -> (scratch baseline) -> evaluate, wired from a resolved config."""

from __future__ import annotations

import copy
import math
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import _config as cfgmod
from . import _distributed as distributed, _ownership as ownership, _storage as storage
from .api import (Augment, Backbone, BackboneContext, DatasetContext, DataSplits, FileSet, ImageSet, TrainContext)
from ._data import Batches, BatchTransform, few_label_index, holdout_index
from .errors import ConfigError, Interrupted, PluginError, SftError, show
from ._interrupt import StopSignals
from ._model import TransferModel
from ._plugins import get_registry
from . import _report as report
from ._report import results_table
from ._training import MetricsLog, Performance, Stage, evaluate


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
    """The stage's data as the run with ``seed`` trains on it: the dataset, then its seeded subset."""
    return subset_stage_data(load_splits(stage, ds_cfg, backbone, seed, registry), stage, ds_cfg, seed)


def load_splits(stage: str, ds_cfg: dict, backbone: Backbone, seed: int, registry) -> StageData:
    """The dataset's splits, checked, before any subset: loaded once, then subset for every seed."""
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
    present = int(torch.unique(splits.train.labels).numel()) if len(splits.train) else 0
    if len(splits.classes) < 2 or present < 2:  # with one class every prediction is right: 100% says nothing
        raise ConfigError(f"config: {stage}.dataset '{comp.name}' has {present} class(es) with training examples; "
                          "a classifier needs at least 2")
    want = ds_cfg["labels_per_class"]
    if want is not None and len(splits.train):
        counts = torch.bincount(splits.train.labels.cpu(), minlength=len(splits.classes))
        have = int(counts.min())
        if have < want:
            short = splits.classes[int(counts.argmin())]
            raise ConfigError(f"config: {stage}.dataset.labels_per_class is {want} but class '{short}' has only "
                              f"{have} training examples; set labels_per_class to {have} or less")
    return StageData(comp.name, list(splits.classes), splits.train, splits.val, splits.test, splits.mean,
                     splits.std, splits.augment)


def subset_stage_data(full: StageData, stage: str, ds_cfg: dict, seed: int) -> StageData:
    """The few-label subset and validation hold-out drawn with ``seed``; the test split is shared."""
    train, val = full.train, full.val
    sub = few_label_index(train.labels, seed, ds_cfg["labels_per_class"], ds_cfg["fraction"])
    if sub is not None:
        train = train.subset(sub)
    if val is None and ds_cfg["val_fraction"] > 0:
        # Validation comes out of the (few-label) training data, never out of the test split.
        tr, va = holdout_index(train.labels, ds_cfg["val_fraction"], seed + 1)
        train, val = train.subset(tr), train.subset(va)
    if len(train) == 0:
        raise ConfigError(f"config: {stage}.dataset '{full.name}' leaves no training examples")
    return StageData(full.name, full.classes, train, val, full.test, full.mean, full.std, full.augment)


# --------------------------------------------------------------------------- stages
def build_backbone(cfg: dict, registry, random_init: bool = False, seed: int | None = None) -> Backbone:
    """The configured backbone, seeded from the config (or ``seed``); shared with `sft predict`, which
    rebuilds a run's model."""
    comp = registry.get("backbones", cfg["backbone"]["name"])
    options = {k: v for k, v in cfg["backbone"].items() if k != "name"}
    seed = cfg["seed"] if seed is None else seed
    torch.manual_seed(seed)
    backbone = comp.create(BackboneContext(seed=seed, random_init=random_init),
                           where="config: backbone", **options)
    if not isinstance(backbone, Backbone):
        raise PluginError(f"backbone '{comp.name}' (plugin '{comp.plugin}') returned "
                          f"{type(backbone).__name__}, not sftcore.api.Backbone")
    return backbone


def _six_decimals(probabilities: torch.Tensor) -> list[list[float]]:
    """Probabilities cut (not rounded) to 6 decimals: the file stays small, and an example's top-k
    never sums above 1, as rounding each of them up could make it."""
    return [[math.floor(p * 1e6) / 1e6 for p in row] for row in probabilities.double().tolist()]


STAGE_SEED_OFFSET = {"pretrain": 0, "finetune": 1, "baseline": 2}


@dataclass
class Start:
    """Where finetuning starts: a backbone, the head that came with it and its classes, and the
    pretrain result when a pretrain stage produced it."""

    backbone: Backbone
    head: torch.nn.Module | None
    classes: list[str] | None
    result: dict | None = None


def environment(perf: Performance) -> dict:
    """What changes results besides the config: on the CPU, even the thread count (docs/reproducibility.md)."""
    import platform
    from importlib import metadata

    from . import __version__

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    env = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "torchvision": version("torchvision"), "timm": version("timm"), "sftcore": __version__,
           "python": platform.python_version(), "device": str(perf.device)}
    if perf.device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(perf.device)
    return env


class Pipeline:
    def __init__(self, cfg: dict, run_dir: Path | None, progress: bool, echo: Callable[[str], None] | None,
                 resume: bool = False, stop: StopSignals | None = None):
        self.cfg, self.run_dir, self.progress, self.echo = cfg, run_dir, progress, echo
        self.resume, self.stop = resume, stop
        self.registry = get_registry()
        self.perf = resolve_performance(cfg)
        self.log = MetricsLog(run_dir / "metrics.jsonl" if run_dir and distributed.is_main() else None)
        self.seed = cfg["seed"]
        self.seeds = cfgmod.seed_list(cfg)
        self._splits: dict[str, StageData] = {}

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

    def build_backbone(self, random_init: bool = False, seed: int | None = None) -> Backbone:
        return build_backbone(self.cfg, self.registry, random_init, seed)

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

    def _train_batches(self, train, batch_size: int, transform: BatchTransform, seed: int):
        """``ctx.train_batches()``: every training example once, un-augmented, in an order shuffled from
        ``seed`` (the same at every call), so that a plugin reading only the first examples sees every
        class: image folders store their examples class by class."""
        def batches():
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
            for x, y in Batches(train.subset(order), batch_size, self.perf.device, shuffle=False):
                yield transform(x), y

        return batches

    def _model(self, backbone: Backbone, head: torch.nn.Module) -> TransferModel:
        model = TransferModel(backbone, head).to(self.perf.device)
        if self.perf.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.perf.compile:
            model.backbone.compile()
        return model

    def _regularizers(self, name: str, scfg: dict) -> list:
        regs = []
        for i, rcfg in enumerate(scfg["regularizers"]):
            comp = self.registry.get("regularizers", rcfg["name"])
            regs.append(comp.create(where=f"config: {name}.regularizers[{i}]",
                                    **{k: v for k, v in rcfg.items() if k != "name"}))
        return regs

    def _checkpoint_paths(self, tag: str) -> tuple[Path | None, Path | None]:
        if self.run_dir is None or not self.cfg["checkpoints"]:
            return None, None
        return self.run_dir / "checkpoints" / f"{tag}-last.pt", self.run_dir / "checkpoints" / f"{tag}.pt"

    def train_stage(self, name: str, scfg: dict, backbone: Backbone, data: StageData, source_head=None,
                    source_classes=None, seed: int | None = None, tag: str | None = None) -> tuple[TransferModel, dict]:
        """Train stage ``name`` for ``seed``; ``tag`` names its files and log lines (``finetune-seed1``)."""
        t0 = time.perf_counter()
        perf, seed, tag = self.perf, self.seed if seed is None else seed, tag or name
        train_tf, eval_tf = self._transforms(data, backbone)
        stage_seed = seed + STAGE_SEED_OFFSET.get(name, 3)
        on_device = data.train.to(perf.device) if isinstance(data.train, ImageSet) else data.train  # once
        train = Batches(on_device, scfg["batch_size"], perf.device, shuffle=True, seed=stage_seed, sharded=True)
        val = (Batches(data.val, scfg["eval_batch_size"], perf.device, shuffle=False, sharded=True)
               if data.val is not None else None)
        backbone.features.to(perf.device)
        ctx = TrainContext(stage=name, backbone=backbone, classes=data.classes, epochs=cfgmod.epoch_budget(scfg),
                           epochs_auto=scfg["epochs"] == "auto",
                           device=perf.device, seed=stage_seed, source_classes=source_classes, source_head=source_head,
                           train_batches=self._train_batches(on_device, scfg["eval_batch_size"], eval_tf, stage_seed))
        heads = self.registry.get("heads", scfg["head"]["name"])
        strategy = heads.create(where=f"config: {name}.head",
                                **{k: v for k, v in scfg["head"].items() if k != "name"})
        torch.manual_seed(stage_seed)
        model = self._model(backbone, strategy.build_head(ctx))
        regs = self._regularizers(name, scfg)
        checkpoint, final = self._checkpoint_paths(tag)
        if self.resume and final is not None and final.exists():  # finished before the interruption
            state = _load_run_file(final, map_location="cpu")  # result tensors stay on the CPU
            if state.get("seed", seed) != seed:
                raise ConfigError(f"checkpoint '{final}' was trained with seed {state['seed']}, not {seed}; the run's "
                                  "seeds changed: start a new run")
            _load_model(model, state, final)
            self.say(f"{tag}: finished in the earlier session, reusing {final}")
            return model, state["result"]
        stage = Stage(name=tag, cfg=scfg, model=model, ctx=ctx, strategy=strategy, regularizers=regs,
                      train=train, val=val, train_transform=train_tf, eval_transform=eval_tf, perf=perf,
                      log=self.log, checkpoint=checkpoint, progress=self.progress, echo=self.echo, stop=self.stop,
                      seed=seed)
        if self.resume:
            self._resume_stage(stage, model, checkpoint, tag)
        result = stage.run()
        result.update(seed=seed, dataset=data.name, **data.sizes(), head=scfg["head"]["name"],
                      regularizers=[r["name"] for r in scfg["regularizers"]])
        self._test(tag, model, data, scfg, eval_tf, result)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        if final is not None and distributed.is_main():
            storage.save({"stage": name, "tag": tag, "seed": seed, "model": model.state_dict(),
                          "classes": data.classes, "mean": list(map(float, train_tf.mean)),
                          "std": list(map(float, train_tf.std)),
                          # what the dataset gave and what the model took: `sft predict` prepares new images alike
                          "image_shape": list(data.train.image_shape),
                          "input_shape": [train_tf.out_channels, *train_tf.out_hw],
                          "config": scfg, "result": result}, final)
        return model, result

    def _resume_stage(self, stage: Stage, model: TransferModel, checkpoint: Path | None, tag: str) -> None:
        if checkpoint is not None and checkpoint.exists():
            state = _load_run_file(checkpoint, map_location=self.perf.device)
            _load_model(model, state, checkpoint)
            stage.load_state_dict(state)
            at = f"epoch {stage.start_epoch}" + (f", batch {state['batch']}" if state["batch"] else "")
            self.say(f"{tag}: resuming after {at} of {stage.budget} epochs")
        self.log.keep(tag, len(stage.history))

    def _test(self, tag: str, model: TransferModel, data: StageData, scfg: dict, eval_tf, result: dict) -> None:
        """Test accuracy and loss into ``result``, with the per-example hits (``correct``) for the verdict."""
        result.update(test_accuracy=None, test_loss=None, correct=None)
        if data.test is None or not len(data.test):
            return
        test = Batches(data.test, scfg["eval_batch_size"], self.perf.device, shuffle=False, sharded=True)
        ev = evaluate(model, test, eval_tf, self.perf)
        result.update(test_accuracy=ev["accuracy"], test_loss=ev["loss"], correct=ev["correct"])
        if self.run_dir is not None and distributed.is_main():  # for `sft plot`'s confusion matrix
            storage.make_dir(self.run_dir / "predictions")
            storage.write_json(self.run_dir / "predictions" / f"{tag}.json", {
                "stage": tag, "classes": data.classes,
                "targets": ev["targets"].tolist(), "predicted": ev["predicted"].tolist(),
                # the k = min(5, classes) most probable classes of each example: top-5 accuracy, calibration
                "top_k": ev["top_k"].tolist(), "top_k_probability": _six_decimals(ev["top_k_probability"])},
                indent=None)

    # ------------------------------------------------------------------ stages over seeds
    def _data(self, stage: str, backbone: Backbone, seed: int) -> StageData:
        """The stage's dataset is loaded once (with the run's seed); each seed draws its own subset."""
        ds_cfg = self.cfg[stage]["dataset"]
        if stage not in self._splits:
            self._splits[stage] = load_splits(stage, ds_cfg, backbone, self.seed, self.registry)
        return subset_stage_data(self._splits[stage], stage, ds_cfg, seed)

    def _check_data(self, backbone: Backbone) -> None:
        """Every stage's data, for every seed, before any training: a mistake in the finetune data
        fails in seconds, not after pretraining (and leaves no run behind)."""
        for stage in ("pretrain", "finetune"):
            if self.cfg[stage] is not None:
                per_seed = stage == "finetune" or self.cfg["pretrain_per_seed"]
                for seed in self.seeds if per_seed else [self.seed]:
                    self._data(stage, backbone, seed)

    def _label(self, name: str, seed: int) -> str:
        return name if len(self.seeds) == 1 else f"{name} (seed {seed})"

    def _pretrain(self, backbone: Backbone, seed: int, tag: str) -> Start:
        data = self._data("pretrain", backbone, seed)
        model, result = self.train_stage("pretrain", self.cfg["pretrain"], backbone, data, backbone.head,
                                         backbone.source_classes, seed, tag)
        if backbone.mean is None:  # the features were learned on inputs normalised like this
            backbone.mean, backbone.std = data.mean, data.std
        self.say(f"{self._label('pretrain', seed) if tag != 'pretrain' else 'pretrain'} done: "
                 f"test accuracy {_pct(result['test_accuracy'])}")
        self._check_stop()
        return Start(backbone, model.head, data.classes, result)

    def _one_seed(self, index: int, seed: int, shared: Start | None) -> dict:
        """Every per-seed stage for ``seed``; the first seed's files carry the plain stage names."""
        cfg, suffix, results = self.cfg, "" if index == 0 else f"-seed{seed}", {}
        if index:
            self._check_stop()
        start = shared
        if start is None:  # pretrain_per_seed
            start = self._pretrain(self.build_backbone(seed=seed), seed, "pretrain" + suffix)
            results["pretrain"] = start.result
        if cfg["finetune"] is None:
            return results
        backbone = copy.deepcopy(start.backbone)  # every seed starts from the same pretrained weights
        data = self._data("finetune", backbone, seed)
        _, results["finetune"] = self.train_stage("finetune", cfg["finetune"], backbone, data,
                                                  copy.deepcopy(start.head), start.classes, seed, "finetune" + suffix)
        self.say(f"{self._label('finetune', seed)} done: test accuracy {_pct(results['finetune']['test_accuracy'])}")
        if cfg["baseline"] is not None:
            self._check_stop()
            fresh = self.build_backbone(random_init=True, seed=seed)
            _, results["baseline"] = self.train_stage("baseline", cfg["baseline"], fresh, data, seed=seed,
                                                      tag="baseline" + suffix)
            self.say(f"{self._label('baseline', seed)} done: test accuracy "
                     f"{_pct(results['baseline']['test_accuracy'])}")
        return results

    def _starts_random(self, backbone: Backbone) -> bool:
        """The backbone as built equals a random init of the same seed: it loaded no weights."""
        with torch.random.fork_rng(devices=[]):
            fresh = self.build_backbone(random_init=True)
        built, other = backbone.features.state_dict(), fresh.features.state_dict()
        return built.keys() == other.keys() and all(torch.equal(built[k], other[k].to(built[k].device))
                                                    for k in built)

    def run(self) -> dict:
        cfg = self.cfg
        t0 = time.perf_counter()
        summary: dict = {"name": cfg["name"], "seed": self.seed, "seeds": self.seeds,
                         "pretrain_per_seed": cfg["pretrain_per_seed"],
                         "run_dir": str(self.run_dir) if self.run_dir else None,
                         "performance": self.perf.describe(), "environment": environment(self.perf),
                         "world_size": distributed.world_size()}
        backbone = self.build_backbone()
        random_start = cfg["pretrain"] is None and cfg["baseline"] is not None and self._starts_random(backbone)
        self._check_data(backbone)
        self._check_stop()
        shared: Start | None = Start(backbone, backbone.head, backbone.source_classes)
        if cfg["pretrain"] is not None:
            shared = None if cfg["pretrain_per_seed"] else self._pretrain(backbone, self.seed, "pretrain")
            if shared is not None:
                self._splits.pop("pretrain", None)  # trained once: its data is not needed again
        runs = []
        if cfg["finetune"] is not None or shared is None:
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


RUN_FILES = ownership.RUN_FILES  # what --force removes: only files a run writes


def check_batch_sizes(cfg: dict, world: int) -> None:
    """``batch_size`` is global: each of ``world`` processes needs at least 2 examples of every batch."""
    for stage in cfgmod.STAGES:
        if world > 1 and cfg[stage] is not None and cfg[stage]["batch_size"] < 2 * world:
            raise ConfigError(f"config: {stage}.batch_size is {cfg[stage]['batch_size']}, the global batch of "
                              f"{world} processes; each needs at least 2 examples: use {2 * world} or more")


def check_run_name(name: str) -> None:
    """``name`` becomes one folder, ``runs/<name>-<time>``: it must not lead anywhere else."""
    from pathlib import PureWindowsPath

    name = str(name)
    if (not name or any(c in name for c in ("/", "\\", "\0")) or name.startswith(".")
            or Path(name).is_absolute() or PureWindowsPath(name).drive):
        raise ConfigError(f"config: name {show(name)} names the run directory runs/<name>-<time>, so it must be one "
                          "folder name: no '/', '\\', NUL, '..' or leading '.'; change name, or pass --out DIR")


def new_run_path(name: str) -> Path:
    """``runs/<name>-<timestamp>``, numbered if taken (not created here)."""
    check_run_name(name)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{name}-{stamp}"
    i = 1
    while path.exists():
        i += 1
        path = Path("runs") / f"{name}-{stamp}-{i}"
    return path


def _run_dir(out, cfg: dict, force: bool) -> ownership.Claim:
    """A new run directory, owned (locked) by this process; an existing run in ``out`` is replaced only with
    ``force``, and a directory sftcore did not write never is."""
    path = new_run_path(cfg["name"]) if out is None else Path(out)
    return ownership.claim_new(path, force, cfg)


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


def run(config=None, *, out=None, overrides=(), progress=None, echo=None, resume=None, force=False,
        allow_config_change=False) -> dict:
    """Resolve the config, run every stage, write the run directory, return the summary.

    ``resume=RUN_DIR`` continues an interrupted run from its checkpoints with its own config, which must
    be the config the run started with unless ``allow_config_change`` (the change is recorded in the run's
    config-changes.jsonl); ``force=True`` replaces an earlier run in ``out``.
    """
    registry = get_registry()
    if resume is not None:
        if config is not None or overrides or out is not None or force:
            raise ConfigError("--resume takes the run's own config.yaml; drop CONFIG, --set, --seeds, --out and --force")
        run_dir = Path(resume)
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"--resume '{run_dir}' is a file; pass the run directory an earlier `sft run` printed")
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume '{run_dir}' is not a run directory (it has no config.yaml); "
                              "pass the directory an earlier `sft run` printed")
        raw = cfgmod.load(run_dir / "config.yaml")
        if isinstance(raw, dict):  # a run from before seeds existed ran one seed: keep it at one
            raw.setdefault("seeds", 1)
            raw.setdefault("pretrain_per_seed", False)
        cfg = cfgmod.resolve(raw, registry)
        if not cfg["checkpoints"]:
            raise ConfigError(f"--resume '{run_dir}': that run had checkpoints: false, so there is nothing to "
                              "continue from; start it again")
    else:
        if allow_config_change:
            raise ConfigError("--allow-config-change goes with --resume RUN_DIR; a new run takes any config")
        cfg = cfgmod.resolve(cfgmod.load(config, overrides), registry)
    resolve_performance(cfg)  # joins torchrun's process group; a device error leaves no empty run directory
    try:
        check_batch_sizes(cfg, distributed.world_size())
        summary = _run(cfg, run_dir if resume is not None else None, out, force, progress, echo,
                       allow_config_change)
        distributed.barrier()  # rank 0 writes last; no rank leaves the group before it is done
        return summary
    finally:
        distributed.teardown()


def _claim(cfg: dict, resume: Path | None, out, force: bool, allow_change: bool):
    """Rank 0 owns the run directory (lock, marker, config.yaml); every rank learns its path, or rank 0's error."""
    claim = None
    if distributed.is_main():
        try:
            claim = (_run_dir(out, cfg, force) if resume is None
                     else ownership.claim_resume(resume, cfg, allow_change))
            if cfg["checkpoints"]:
                storage.make_dir(claim.path / "checkpoints")
        except SftError as exc:
            if claim is not None and claim.fresh:
                claim.discard()
            elif claim is not None:
                claim.release()
            distributed.broadcast_object(str(exc))  # the other ranks stop with the same line
            raise
    made = distributed.broadcast_object(str(claim.path) if claim is not None else None)
    if not isinstance(made, str) or not Path(made).is_dir():
        raise ConfigError(made if isinstance(made, str) else "rank 0 could not create the run directory")
    return Path(made), claim


def _run(cfg: dict, resume: Path | None, out, force: bool, progress, echo, allow_change: bool = False) -> dict:
    run_dir, claim = _claim(cfg, resume, out, force, allow_change)
    if not distributed.is_main():
        echo, progress = None, False
    if progress is None:
        import sys

        progress = echo is not None and sys.stderr.isatty()
    try:
        summary = _pipeline(cfg, run_dir, resume is not None, progress, echo)
        if claim is not None:
            storage.write_json(run_dir / "summary.json", summary)
    except SftError as exc:
        # a new run that failed before it saved anything (a dataset error, say) leaves nothing behind,
        # so the corrected config can go to the same --out; an interrupted one stays for --resume
        if claim is not None and claim.fresh and not isinstance(exc, Interrupted) and \
                not ownership.has_progress(run_dir):
            claim.discard()
        raise
    finally:
        if claim is not None:
            claim.release()
    if echo is not None:
        echo(results_table(summary))
        echo(f"run directory: {run_dir}")
    return summary


def _pipeline(cfg: dict, run_dir: Path, resume: bool, progress, echo) -> dict:
    again = f"resume with: sft run --resume {run_dir}" if cfg["checkpoints"] else "start the run again"
    try:
        with StopSignals(catch_repeats=distributed.active()) as stop:
            return Pipeline(cfg, run_dir, progress, echo, resume=resume, stop=stop).run()
    except KeyboardInterrupt:  # outside the training loop (loading data, evaluating): nothing half-written
        raise Interrupted(f"Ctrl-C; every finished stage and epoch is saved; {again}", signal.SIGINT) from None
    except Interrupted as exc:
        raise Interrupted(f"{exc}; {again}", exc.exit_code - 128) from None
