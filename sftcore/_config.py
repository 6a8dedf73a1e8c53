"""The run config: defaults, the schema of every key, and resolution with one-line validation errors.
Reading YAML files and ``--set`` overrides is in _config_yaml."""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

from .api import MAX_SEED
from . import _components as components
from .errors import ConfigError, show
from ._config_yaml import (MAX_YAML_NODES, YamlRefused, _plain, apply_override, load_yaml,  # noqa: F401
                           parse_override)
from ._registry import suggest

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECT = ("auto", "best", "last")
TTA = ("none", "flip")  # test-time augmentation of a stage's test evaluation (_evaluate.TTA)
# MAX_SEED (2**32 - 1, from the api, as the built-in datasets' seed: option shares it): seeds feed torch
# generators, some multiplied (seed * 100003 + epoch seeds the data order), and numpy takes at most
# 2**32 - 1; beyond it a seed is an error now, not an overflow deep in a run.
MAX_SEEDS = 1000  # seeds: N runs N finetunes; more is a typo, not an experiment
MAX_EPOCHS = 100_000  # epochs, max_epochs, patience: more would never end, and is a typo
MAX_BATCH = 1_000_000  # batch sizes
MAX_CHUNK = 64  # augment_chunk's largest value
AUTO_SELECT_MIN_VAL = 50  # select: auto picks the best epoch only on at least this many validation examples

# Keys of a stage's `dataset:` the runner consumes itself; the rest go to the dataset's factory.
DATASET_RUNNER_KEYS = {
    "labels_per_class": None,  # few-label subset: N labelled examples per class (stratified, seeded)
    "fraction": None,  # or this fraction of the training split
    "val_fraction": 0.1,  # held out of the (subset) training data for model selection
}

# The optimizer and schedule are components (sft list optimizers, sft list schedules): a resolved config
# holds every option, its default filled in from the factory's signature.
DEFAULT_OPTIMIZER, DEFAULT_SCHEDULE = "sgd", "cosine"

STAGE_DEFAULTS: dict[str, Any] = {
    "dataset": None,
    "epochs": 10,
    "max_epochs": 200,
    "patience": 10,
    "batch_size": 128,
    "eval_batch_size": 512,
    "optimizer": {"name": DEFAULT_OPTIMIZER},
    "schedule": {"name": DEFAULT_SCHEDULE},
    "head": {"name": "reinit"},
    "regularizers": [],
    "param_groups": None,
    "backbone_lr_mult": 1.0,
    "select": "auto",
    "label_smoothing": 0.0,
    "tta": "none",
    "augment": None,
    "augment_chunk": "auto",
}

RUN_DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "seeds": 3,
    "pretrain_per_seed": False,
    "device": "auto",
    "backbone": {"name": "lenet"},
    "pretrain": None,
    "finetune": None,
    "baseline": None,
    "precision": "auto",
    "channels_last": "auto",
    "compile": "auto",
    "checkpoints": True,
    "pretrain_cache": True,
    "callbacks": [],
}

STAGES = ("pretrain", "finetune", "baseline")


# --------------------------------------------------------------------------- schema
def _one_of(choices) -> str:
    return ", ".join(map(str, choices))


# What every key of the tables above means: {dotted path: (type, allowed values, meaning)}. Defaults
# are not repeated here: describe() reads them from the tables, and tests/test_docs.py fails when a
# table key has no entry. `<stage>` is pretrain, finetune or baseline.
SCHEMA: dict[str, tuple[str, str, str]] = {
    "name": ("string", "non-empty", "names the run directory runs/<name>-<timestamp> (unless --out is given)"),
    "seed": ("integer", f"0 to {MAX_SEED}", "seeds the subset, validation hold-out, init, shuffling and augmentation"),
    "seeds": ("integer or list of integers", f"1 to {MAX_SEEDS}; a list: distinct integers 0 to {MAX_SEED}",
              "N: finetune and baseline "
              "repeat for seeds seed, seed+1, ..., seed+N-1 (a list names them); the verdict rests on the spread "
              "over seeds"),
    "pretrain_per_seed": ("boolean", "true, false", "false: one pretraining (with seed) shared by every seed; "
                          "true: pretrain again for each seed"),
    "device": ("string", _one_of(DEVICES), "auto: CUDA if torch sees it, else MPS, else the CPU"),
    "backbone": ("component", "a backbone name, or {name: ..., its options}", "the feature extractor every stage "
                 "trains (sft list backbones)"),
    "pretrain": ("stage or null", "a mapping of stage keys, or null", "train on the source task first"),
    "finetune": ("stage or null", "a mapping of stage keys, or null; pretrain or finetune is required",
                 "train on the target task, starting from the backbone pretrain left or loaded"),
    "baseline": ("string, mapping or null", "scratch, {name: scratch, stage keys to change}, null or false; "
                 "needs finetune", "finetune's training from a random init, on its data: the transfer verdict"),
    "precision": ("string", _one_of(PRECISIONS), "auto: bf16 on CUDA that supports it, else fp16 on CUDA, "
                  "fp32 on the CPU and MPS"),
    "channels_last": ("auto or boolean", "auto, true, false", "channels-last memory format; auto: true on the "
                      "CPU and CUDA, false on MPS"),
    "compile": ("auto or boolean", "auto, true, false", "torch.compile the backbone; auto: off"),
    "checkpoints": ("boolean", "true, false", "write checkpoints/ (--resume needs it)"),
    "pretrain_cache": ("boolean", "true, false", "reuse a pretraining another run already computed, from the "
                       "cache folder $SFT_CACHE_DIR or ~/.cache/sftcore (docs/cache.md); false: always pretrain"),
    "callbacks": ("list of components", "callback names or {name: ..., its options}", "told of training events, "
                  "in list order: loggers (csv, tensorboard, mlflow), early_stopping (sft list callbacks)"),
    "<stage>.dataset": ("component", "required: a dataset name, or {name: ..., its options, the runner keys "
                        "below}", "the stage's data (sft list datasets); baseline always uses finetune's"),
    "<stage>.epochs": ("integer or auto", "1 to 100000, or auto; 0 only on finetune with a head that needs no "
                       "training (match_classes, imprint)", "training epochs; auto: until the training loss "
                       "stops improving (lowering the lr on plateaus) with training accuracy >= 0.9, at most "
                       "max_epochs (baseline: auto)"),
    "<stage>.max_epochs": ("integer", "1 to 100000", "epochs: auto trains at most this many epochs; the learning-rate "
                           "schedule spans them"),
    "<stage>.patience": ("integer", "1 to 100000", "epochs: auto: epochs without a 1% (and 0.001) better training "
                         "loss that make a plateau; two plateaus lower the lr tenfold, the third ends the stage"),
    "<stage>.batch_size": ("integer", "1 to 1000000", "training batch size"),
    "<stage>.eval_batch_size": ("integer", "1 to 1000000", "batch size of validation, test and imprint's "
                                "feature extraction"),
    "<stage>.optimizer": ("component", "an optimizer name, or {name: ..., its options}; a mapping without "
                          f"name keeps {DEFAULT_OPTIMIZER}", "the optimizer (sft list optimizers); every option is "
                          "filled in from its factory's defaults; no weight decay on biases and norm weights"),
    "<stage>.schedule": ("component", "a schedule name, or {name: ..., its options}; a mapping without name "
                         f"keeps {DEFAULT_SCHEDULE}", "the learning-rate factor, updated after every batch "
                         "(sft list schedules); warmup_epochs is at most the stage's epochs"),
    "<stage>.head": ("component", "a head strategy name, or {name: ..., its options}", "builds the new "
                     "classifier and decides what is frozen in each epoch (sft list heads)"),
    "<stage>.regularizers": ("list of components", "regularizer names or {name: ..., its options}",
                             "penalties added to the loss; they add up (sft list regularizers)"),
    "<stage>.param_groups": ("component or null", "a param_groups name, or {name: ..., its options}, or null",
                             "how the model splits into optimizer groups (sft list param_groups), e.g. layer_decay; "
                             "null: the head strategy's groups (backbone at lr * backbone_lr_mult, head at lr)"),
    "<stage>.backbone_lr_mult": ("number", ">= 0", "the backbone learns at lr * this, the head at lr "
                                 "(built-in head strategies and param_groups)"),
    "<stage>.select": ("string", _one_of(SELECT), "best: the epoch with the highest validation accuracy; "
                       f"last: the final epoch; auto: best with {AUTO_SELECT_MIN_VAL} or more validation examples, "
                       "else last (a few examples make the best epoch noise)"),
    "<stage>.label_smoothing": ("number", "0 to 1", "label smoothing of the cross-entropy loss"),
    "<stage>.tta": ("string", _one_of(TTA), "test-time augmentation of the test evaluation; flip: average the "
                    "softmax probabilities of each image and its horizontal flip (validation is never augmented)"),
    "<stage>.augment": ("list of components or null", "augmentation names or {name: ..., its options}; [] for none",
                        "training-time augmentations, per batch on the device, in list order (sft list "
                        "augmentations); null: the dataset's default (shapes and cifar: crop and flip)"),
    "<stage>.augment_chunk": ("integer or auto", f"1 to {MAX_CHUNK}, or auto", "training batches augmented as one "
                              "(set by the config, never by the device); auto: as many as hold 2^19 pixels, at most 4; "
                              "always 1 without float augmentations (crop, flip alone) and under torch.distributed"),
    "<stage>.dataset.labels_per_class": ("integer or null", ">= 1; not with fraction", "keep N training "
                                         "examples per class (stratified, seeded); null: all"),
    "<stage>.dataset.fraction": ("number or null", "> 0 and <= 1; not with labels_per_class",
                                 "keep this fraction of each class's training examples; null: all"),
    "<stage>.dataset.val_fraction": ("number", "0 to 0.9", "share of the kept training examples held out for "
                                     "validation, unless the dataset has a val split"),
}
def table_keys() -> list[str]:
    """Every dotted path the defaults tables define, in table order."""
    return [*RUN_DEFAULTS, *(f"<stage>.{k}" for k in STAGE_DEFAULTS), *(f"<stage>.dataset.{k}" for k in DATASET_RUNNER_KEYS)]


def default_of(path: str) -> Any:
    """A key's default, read from the tables."""
    parts = path.split(".")
    if len(parts) == 1:
        return RUN_DEFAULTS[path]
    if len(parts) == 2:
        return STAGE_DEFAULTS[parts[1]]
    return DATASET_RUNNER_KEYS[parts[2]]


def describe() -> list[dict]:
    """One row per config key: path, type, default, allowed values and meaning (the reference's source)."""
    rows = []
    for key in table_keys():
        kind, allowed, meaning = SCHEMA[key]
        rows.append({"path": key, "type": kind, "default": default_of(key), "allowed": allowed, "meaning": meaning})
    return rows


def load(config: dict | str | os.PathLike | None = None, overrides=()) -> dict:
    """Raw config (not yet validated) from a dict, a YAML path or the embedded default, plus overrides."""
    if config is None:
        raw = load_yaml(DEFAULT_CONFIG)
    elif isinstance(config, dict):
        raw = _plain(config)
    else:
        raw = load_yaml(config)
    for item in overrides:
        path, value = parse_override(item)
        apply_override(raw, path, value)
    return raw


# --------------------------------------------------------------------------- validation
def _where(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_keys(mapping: dict, allowed, path: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise ConfigError(
                f"config: unknown key {show(_where(path, str(key)))}{suggest(str(key)[:100], allowed)}; "
                f"allowed here: {', '.join(sorted(allowed))}"
            )


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _int(value: Any, path: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"config: {path} must be an integer, got {_type_name(value)} {show(value)}")
    if value < minimum:
        raise ConfigError(f"config: {path} must be >= {minimum}, got {show(value)}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"config: {path} must be <= {maximum}, got {show(value)}")
    return value


def _float(value: Any, path: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite number in range: .nan passes every < and > test, so it is refused by name."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config: {path} must be a number, got {_type_name(value)} {show(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        raise ConfigError(f"config: {path} must be a finite number, got {show(value)}") from None
    if not math.isfinite(value):
        raise ConfigError(f"config: {path} must be a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"config: {path} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(f"config: {path} must be {'<' if high_open else '<='} {high}, got {value}")
    return value


def _choice(value: Any, choices, path: str) -> Any:
    if value not in choices:
        raise ConfigError(
            f"config: {path} must be one of {', '.join(map(str, choices))}, got {show(value)}"
            f"{suggest(value, choices) if isinstance(value, str) and len(value) < 100 else ''}"
        )
    return value


def _tristate(value: Any, path: str) -> Any:
    if value == "auto" or isinstance(value, bool):
        return value
    raise ConfigError(f"config: {path} must be auto, true or false, got {show(value)}")


def _dataset(value: Any, path: str, registry) -> dict:
    value = components.check(value, "datasets", path, registry, runner_keys=DATASET_RUNNER_KEYS)
    runner = {k: value.get(k, d) for k, d in DATASET_RUNNER_KEYS.items()}
    if runner["labels_per_class"] is not None:
        _int(runner["labels_per_class"], f"{path}.labels_per_class", 1)
    if runner["fraction"] is not None:
        _float(runner["fraction"], f"{path}.fraction", 0.0, 1.0, low_open=True)
    if runner["labels_per_class"] is not None and runner["fraction"] is not None:
        raise ConfigError(f"config: {path} sets both labels_per_class and fraction; keep one")
    runner["val_fraction"] = _float(runner["val_fraction"], f"{path}.val_fraction", 0.0, 0.9)
    return {"name": value["name"], **runner, **components.options(value, DATASET_RUNNER_KEYS)}


def _filled(value: Any, kind: str, path: str, registry, default: str) -> dict:
    """An optimizer or schedule: every option written out; a mapping without name keeps the default
    (`--set finetune.optimizer.lr=0.1`)."""
    if isinstance(value, dict) and "name" not in value:
        value = {"name": default, **value}
    value = components.check(value, kind, path, registry, fill=True)
    if registry is not None:  # `lr: 1` is the float 1.0 its default's type says, as in the factory
        defaults = registry.get(kind, value["name"]).defaults()
        value = {k: float(v) if isinstance(defaults.get(k), float) and type(v) is int else v for k, v in value.items()}
    return value


def _optimizer(value: Any, path: str, registry) -> dict:
    value = _filled(value, "optimizers", path, registry, DEFAULT_OPTIMIZER)
    if registry is not None and "lr" not in value:
        raise ConfigError(f"config: {path}: optimizer '{value['name']}' has no lr option; sftcore sets each group's "
                          "lr from it, so an optimizer factory must take lr")
    return value


def _built(value: Any, kind: str, path: str, registry) -> tuple[dict, Any]:
    """Heads, regularizers and param_groups are cheap to build: bad values fail now, not after pretraining."""
    value = components.check(value, kind, path, registry)
    made = components.build(registry, kind, value, path) if registry is not None else None
    return value, made


def _epochs(value: Any, path: str) -> int | str:
    return _auto_int(value, path, 0, MAX_EPOCHS)


def _auto_int(value: Any, path: str, minimum: int, maximum: int) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, str):
        raise ConfigError(f"config: {path} must be an integer or auto, got {show(value)}")
    return _int(value, path, minimum, maximum)


def epoch_budget(stage: dict) -> int:
    """The most epochs a stage can train: ``epochs``, or ``max_epochs`` under ``epochs: auto``."""
    return stage["max_epochs"] if stage["epochs"] == "auto" else stage["epochs"]


def _seeds(value: Any, seed: int) -> list[int]:
    """``seeds: N`` -> seed, seed+1, ..., seed+N-1; a list names the seeds. Each within MAX_SEED."""
    if isinstance(value, list):
        if not value:
            raise ConfigError("config: seeds must name at least one seed, e.g. seeds: [0, 1, 2] or seeds: 3")
        if len(value) > MAX_SEEDS:
            raise ConfigError(f"config: seeds lists {len(value)} seeds; at most {MAX_SEEDS}")
        seeds = [_int(s, f"seeds[{i}]", 0, MAX_SEED) for i, s in enumerate(value)]
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"config: seeds lists a seed twice ({show(seeds)}); each seed must be distinct")
        return seeds
    count = _int(value, "seeds", 1, MAX_SEEDS)
    if seed + count - 1 > MAX_SEED:
        raise ConfigError(f"config: seed + seeds - 1 must be <= {MAX_SEED} (the last seed run), got "
                          f"{seed + count - 1}; lower seed")
    return [seed + i for i in range(count)]


def _stage(value: Any, path: str, registry, base: dict | None = None) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"config: {path} must be a mapping of stage settings, got {_type_name(value)}")
    _check_keys(value, STAGE_DEFAULTS, path)
    stage = {**copy.deepcopy(base if base is not None else STAGE_DEFAULTS), **copy.deepcopy(value)}
    if stage["dataset"] is None:
        raise ConfigError(f"config: {path}.dataset is required, e.g. {path}: {{dataset: {{name: shapes}}}}")
    stage["dataset"] = _dataset(stage["dataset"], f"{path}.dataset", registry)
    stage["epochs"] = _epochs(stage["epochs"], f"{path}.epochs")
    stage["max_epochs"] = _int(stage["max_epochs"], f"{path}.max_epochs", 1, MAX_EPOCHS)
    stage["patience"] = _int(stage["patience"], f"{path}.patience", 1, MAX_EPOCHS)
    stage["batch_size"] = _int(stage["batch_size"], f"{path}.batch_size", 1, MAX_BATCH)
    stage["eval_batch_size"] = _int(stage["eval_batch_size"], f"{path}.eval_batch_size", 1, MAX_BATCH)
    stage["optimizer"] = _optimizer(stage["optimizer"], f"{path}.optimizer", registry)
    stage["schedule"] = _filled(stage["schedule"], "schedules", f"{path}.schedule", registry, DEFAULT_SCHEDULE)
    _check_warmup(stage, path)
    stage["head"], strategy = _built(stage["head"], "heads", f"{path}.head", registry)
    if stage["epochs"] == 0 and not (path == "finetune" and getattr(strategy, "usable_untrained", registry is None)):
        raise ConfigError(f"config: {path}.epochs must be >= 1, got 0 (0 only evaluates a finetune head that needs "
                          "no training, such as head: match_classes or imprint)")
    regs = stage["regularizers"] if stage["regularizers"] is not None else []
    if not isinstance(regs, list):
        raise ConfigError(f"config: {path}.regularizers must be a list, e.g. [{{name: l2_sp, alpha: 0.1}}]")
    stage["regularizers"] = [
        _built(r, "regularizers", f"{path}.regularizers[{i}]", registry)[0] for i, r in enumerate(regs)
    ]
    if stage["param_groups"] is not None:
        stage["param_groups"] = _built(stage["param_groups"], "param_groups", f"{path}.param_groups", registry)[0]
    stage["backbone_lr_mult"] = _float(stage["backbone_lr_mult"], f"{path}.backbone_lr_mult", 0.0)
    stage["select"] = _choice(stage["select"], SELECT, f"{path}.select")
    stage["label_smoothing"] = _float(stage["label_smoothing"], f"{path}.label_smoothing", 0.0, 1.0)
    stage["tta"] = _choice(stage["tta"], TTA, f"{path}.tta")
    stage["augment"] = _augment(stage["augment"], path, registry)
    stage["augment_chunk"] = _auto_int(stage["augment_chunk"], f"{path}.augment_chunk", 1, MAX_CHUNK)
    return stage


def _augment(value: Any, path: str, registry) -> list[dict] | None:
    """A list of augmentations, each built now so that a bad option fails before anything trains."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ConfigError(f"config: {path}.augment must be a list, e.g. [crop, flip] or "
                          f"[{{name: random_resized_crop, scale: [0.35, 1]}}], or null; got {_type_name(value)}")
    out = [components.check(a, "augmentations", f"{path}.augment[{i}]", registry) for i, a in enumerate(value)]
    if registry is not None:  # built now: a bad option fails before anything trains
        for i, a in enumerate(out):
            components.build_augmentation(registry, a, f"{path}.augment[{i}]")
    return out


def _check_warmup(stage: dict, path: str) -> None:
    """Warmup longer than the stage would train the whole stage at a sliver of the lr (warmup_epochs:
    1e12 trains at lr * 1e-14): it may last at most the stage's epochs (max_epochs under auto)."""
    budget, warmup = epoch_budget(stage), stage["schedule"].get("warmup_epochs", 0)
    if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup > budget:
        cap = f"max_epochs ({budget})" if stage["epochs"] == "auto" else f"epochs ({budget})"
        raise ConfigError(f"config: {path}.schedule.warmup_epochs must be at most the stage's {cap}, "
                          f"got {show(warmup)}")


def _baseline(value: Any, finetune: dict | None, registry) -> dict | None:
    if value is None or value is False:
        return None
    if finetune is None:
        raise ConfigError("config: baseline needs a finetune stage to compare with; add finetune: or drop baseline:")
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or value.get("name", "scratch") != "scratch":
        raise ConfigError(f"config: baseline must be 'scratch' (or a mapping with name: scratch), got {show(value)}")
    # Same data, budget and optimizer as finetune, from a random init, trained plainly.
    # Its own budget: trained to convergence, so that the verdict compares converged models.
    base = {**copy.deepcopy(finetune), "head": {"name": "reinit"}, "regularizers": [], "backbone_lr_mult": 1.0,
            "param_groups": None, "epochs": "auto"}
    options = {k: v for k, v in value.items() if k != "name"}
    for key in ("optimizer", "schedule"):  # `optimizer: {lr: 0.1}` changes the lr, keeps the rest
        given = options.get(key)
        if isinstance(given, dict) and given.get("name", base[key]["name"]) == base[key]["name"]:
            options[key] = {**base[key], **given}
    if options.pop("dataset", finetune["dataset"]) != finetune["dataset"]:  # a resolved config repeats it
        raise ConfigError("config: baseline.dataset cannot be set: the baseline always trains on the finetune "
                          "stage's data (same subset, same validation split)")
    return {"name": "scratch", **_stage(options, "baseline", registry, base=base)}


def _callbacks(value: Any, registry) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"config: callbacks must be a list, e.g. [csv, {{name: early_stopping, patience: 5}}]; "
                          f"got {_type_name(value)}")
    return [components.check(c, "callbacks", f"callbacks[{i}]", registry) for i, c in enumerate(value)]


def seed_list(cfg: dict) -> list[int]:
    """The seeds a resolved config runs, in order; the first one's files carry the plain stage names."""
    return _seeds(cfg["seeds"], cfg["seed"])


def resolve(raw: dict, registry=None) -> dict:
    """Validate and fill in defaults. With a registry, component names and options are checked too."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config must be a mapping, got {_type_name(raw)}")
    _check_keys(raw, RUN_DEFAULTS, "")
    cfg = {**copy.deepcopy(RUN_DEFAULTS), **copy.deepcopy(raw)}
    if not isinstance(cfg["name"], str) or not cfg["name"].strip():
        raise ConfigError("config: name must be a non-empty string")
    cfg["seed"] = _int(cfg["seed"], "seed", 0, MAX_SEED)
    _seeds(cfg["seeds"], cfg["seed"])
    if not isinstance(cfg["pretrain_per_seed"], bool):
        raise ConfigError(f"config: pretrain_per_seed must be true or false, got {show(cfg['pretrain_per_seed'])}")
    cfg["device"] = _choice(cfg["device"], DEVICES, "device")
    cfg["precision"] = _choice(cfg["precision"], PRECISIONS, "precision")
    cfg["channels_last"] = _tristate(cfg["channels_last"], "channels_last")
    cfg["compile"] = _tristate(cfg["compile"], "compile")
    if not isinstance(cfg["checkpoints"], bool):
        raise ConfigError(f"config: checkpoints must be true or false, got {show(cfg['checkpoints'])}")
    if not isinstance(cfg["pretrain_cache"], bool):
        raise ConfigError(f"config: pretrain_cache must be true or false, got {show(cfg['pretrain_cache'])}")
    cfg["backbone"] = components.check(cfg["backbone"], "backbones", "backbone", registry)
    cfg["callbacks"] = _callbacks(cfg["callbacks"], registry)
    for stage in ("pretrain", "finetune"):
        if cfg[stage] is not None:
            cfg[stage] = _stage(cfg[stage], stage, registry)
    cfg["baseline"] = _baseline(cfg["baseline"], cfg["finetune"], registry)
    if cfg["pretrain"] is None and cfg["finetune"] is None:
        raise ConfigError("config: nothing to run; add a pretrain: and/or finetune: stage")
    return cfg


def dump(cfg: dict) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None, width=100)
