"""Resolving a run config: defaults filled in and every key checked, with one-line errors. The keys themselves
are declared in schema.py; reading YAML is sftcore._fileio's, ``--set`` overrides are in overrides.py."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from sftcore._fileio.yaml_reader import MAX_YAML_NODES, YamlRefused, load_yaml  # noqa: F401
from sftcore._plugins import components
from sftcore._plugins.registry import suggest
from sftcore.errors import ConfigError, show

from .overrides import _plain, apply_override, parse_override
from .schema import (  # noqa: F401  (the names callers and tests know this module by)
    AUTO_SELECT_MIN_VAL,
    DEFAULT_OPTIMIZER,
    DEFAULT_SCHEDULE,
    DEVICES,
    MAX_BATCH,
    MAX_CANDIDATES,
    MAX_CHUNK,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_SEEDS,
    PRECISIONS,
    SELECT,
    STAGES,
    TTA,
    DatasetConfig,
    Float,
    Int,
    RunConfig,
    StageConfig,
    declared,
    seeds_run,
    type_name,
)

DEFAULT_CONFIG = Path(__file__).parent.parent / "configs" / "default.yaml"

# The defaults tables and the schema, read from the declaration (schema.py); tests/test_docs.py checks the
# reference against them.
RUN_DEFAULTS: dict[str, Any] = {name: default for name, (default, _) in declared(RunConfig).items()}
STAGE_DEFAULTS: dict[str, Any] = {name: default for name, (default, _) in declared(StageConfig).items()}
# Keys of a stage's `dataset:` the runner consumes itself; the rest go to the dataset's factory.
DATASET_RUNNER_KEYS = {name: default for name, (default, _) in declared(DatasetConfig).items()}
SCHEMA: dict[str, tuple[str, str, str]] = {
    prefix + name: (spec.type, spec.allowed, spec.meaning)
    for prefix, cls in (("", RunConfig), ("<stage>.", StageConfig), ("<stage>.dataset.", DatasetConfig))
    for name, (_, spec) in declared(cls).items()
}
_CHECKS = {
    cls: {name: spec.check for name, (_, spec) in declared(cls).items() if spec.check is not None}
    for cls in (RunConfig, StageConfig, DatasetConfig)
}


def table_keys() -> list[str]:
    """Every dotted path the defaults tables define, in table order."""
    return [
        *RUN_DEFAULTS,
        *(f"<stage>.{k}" for k in STAGE_DEFAULTS),
        *(f"<stage>.dataset.{k}" for k in DATASET_RUNNER_KEYS),
    ]


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


_type_name = type_name


def _int(value: Any, path: str, minimum: int = 0, maximum: int | None = None) -> int:
    return Int(minimum, maximum)(value, path)


def _float(value: Any, path: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> float:
    return Float(low, high, low_open)(value, path)


def _plain_keys(mapping: dict, cls, path: str, first: str | None = None, last: str | None = None) -> None:
    """Check the keys the declaration gives a check (Int, Float, Choice, Flag), in place, in declaration order
    (from ``first`` to ``last`` inclusive: resolve checks the keys in the order the config reads them)."""
    names = list(_CHECKS[cls])
    start = names.index(first) if first else 0
    stop = names.index(last) + 1 if last else len(names)
    for name in names[start:stop]:
        mapping[name] = _CHECKS[cls][name](mapping[name], _where(path, name))


def _dataset(value: Any, path: str, registry) -> dict:
    value = components.check(value, "datasets", path, registry, runner_keys=DATASET_RUNNER_KEYS)
    runner = {k: value.get(k, d) for k, d in DATASET_RUNNER_KEYS.items()}
    if runner["labels_per_class"] is not None:
        _int(runner["labels_per_class"], f"{path}.labels_per_class", 1)
    if runner["fraction"] is not None:
        _float(runner["fraction"], f"{path}.fraction", 0.0, 1.0, low_open=True)
    if runner["train_examples"] is not None:
        _int(runner["train_examples"], f"{path}.train_examples", 1)
    chosen = [k for k in ("labels_per_class", "fraction", "train_examples") if runner[k] is not None]
    if len(chosen) > 1:
        raise ConfigError(f"config: {path} sets both {chosen[0]} and {chosen[1]}; keep one")
    _plain_keys(runner, DatasetConfig, path)  # val_fraction, as declared
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
        raise ConfigError(
            f"config: {path}: optimizer '{value['name']}' has no lr option; sftcore sets each group's "
            "lr from it, so an optimizer factory must take lr"
        )
    return value


def _built(value: Any, kind: str, path: str, registry) -> tuple[dict, Any]:
    """Heads, regularizers and param_groups are cheap to build: bad values fail now, not after pretraining."""
    value = components.check(value, kind, path, registry)
    made = components.build(registry, kind, value, path) if registry is not None else None
    return value, made


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
        return seeds_run(seeds, seed)
    count = _int(value, "seeds", 1, MAX_SEEDS)
    if seed + count - 1 > MAX_SEED:
        raise ConfigError(
            f"config: seed + seeds - 1 must be <= {MAX_SEED} (the last seed run), got {seed + count - 1}; lower seed"
        )
    return seeds_run(count, seed)


def _stage(value: Any, path: str, registry, base: dict | None = None) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"config: {path} must be a mapping of stage settings, got {_type_name(value)}")
    _check_keys(value, STAGE_DEFAULTS, path)
    stage = {**copy.deepcopy(base if base is not None else STAGE_DEFAULTS), **copy.deepcopy(value)}
    if stage["dataset"] is None:
        raise ConfigError(f"config: {path}.dataset is required, e.g. {path}: {{dataset: {{name: shapes}}}}")
    stage["dataset"] = _dataset(stage["dataset"], f"{path}.dataset", registry)
    _plain_keys(stage, StageConfig, path, last="eval_batch_size")
    stage["optimizer"] = _optimizer(stage["optimizer"], f"{path}.optimizer", registry)
    stage["schedule"] = _filled(stage["schedule"], "schedules", f"{path}.schedule", registry, DEFAULT_SCHEDULE)
    _check_warmup(stage, path)
    stage["head"], strategy = _built(stage["head"], "heads", f"{path}.head", registry)
    if stage["epochs"] == 0 and not (path == "finetune" and getattr(strategy, "usable_untrained", registry is None)):
        raise ConfigError(
            f"config: {path}.epochs must be >= 1, got 0 (0 only evaluates a finetune head that needs "
            "no training, such as head: match_classes or imprint)"
        )
    regs = stage["regularizers"] if stage["regularizers"] is not None else []
    if not isinstance(regs, list):
        raise ConfigError(f"config: {path}.regularizers must be a list, e.g. [{{name: l2_sp, alpha: 0.1}}]")
    stage["regularizers"] = [
        _built(r, "regularizers", f"{path}.regularizers[{i}]", registry)[0] for i, r in enumerate(regs)
    ]
    if stage["param_groups"] is not None:
        stage["param_groups"] = _built(stage["param_groups"], "param_groups", f"{path}.param_groups", registry)[0]
    stage["adapter"] = _adapter(stage["adapter"], path, registry)
    _plain_keys(stage, StageConfig, path, first="backbone_lr_mult", last="tta")
    stage["augment"] = _augment(stage["augment"], path, registry)
    _plain_keys(stage, StageConfig, path, first="augment_chunk")
    return stage


def _adapter(value: Any, path: str, registry) -> dict | None:
    """The stage's adapter, built now (a bad option fails before anything trains). Pretraining trains the
    whole backbone that later stages start from: an adapter there would change what they transfer."""
    if value is None:
        return None
    if path == "pretrain":
        raise ConfigError(
            "config: pretrain.adapter must be null: adapters apply to finetune (and baseline), "
            "pretraining trains the whole backbone"
        )
    return _built(value, "adapters", f"{path}.adapter", registry)[0]


def _augment(value: Any, path: str, registry) -> list[dict] | None:
    """A list of augmentations, each built now so that a bad option fails before anything trains."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ConfigError(
            f"config: {path}.augment must be a list, e.g. [crop, flip] or "
            f"[{{name: random_resized_crop, scale: [0.35, 1]}}], or null; got {_type_name(value)}"
        )
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
        raise ConfigError(
            f"config: {path}.schedule.warmup_epochs must be at most the stage's {cap}, got {show(warmup)}"
        )


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
    base = {
        **copy.deepcopy(finetune),
        "head": {"name": "reinit"},
        "regularizers": [],
        "backbone_lr_mult": 1.0,
        "param_groups": None,
        "adapter": None,
        "epochs": "auto",
    }
    options = {k: v for k, v in value.items() if k != "name"}
    for key in ("optimizer", "schedule"):  # `optimizer: {lr: 0.1}` changes the lr, keeps the rest
        given = options.get(key)
        if isinstance(given, dict) and given.get("name", base[key]["name"]) == base[key]["name"]:
            options[key] = {**base[key], **given}
    if options.pop("dataset", finetune["dataset"]) != finetune["dataset"]:  # a resolved config repeats it
        raise ConfigError(
            "config: baseline.dataset cannot be set: the baseline always trains on the finetune "
            "stage's data (same subset, same validation split)"
        )
    return {"name": "scratch", **_stage(options, "baseline", registry, base=base)}


def _rank(value: Any) -> list:
    """``rank:``'s candidates, their form only: each is checked when `sft rank` builds it, so that one bad
    candidate is its own error line and never stops the others."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_CANDIDATES:
        raise ConfigError(
            f"config: rank must be a list of at most {MAX_CANDIDATES} candidates (run directories, weights files, "
            f"backbone names or {{name: ..., options}}), got {_type_name(value)}"
            + (f" of {len(value)}" if isinstance(value, list) else "")
        )
    for i, item in enumerate(value):
        named = isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip()
        if not (isinstance(item, str) and item.strip()) and not named:
            raise ConfigError(
                f"config: rank[{i}] must be a run directory, a weights file, a backbone name or "
                f"{{name: ..., options}}, got {show(item)}"
            )
    return value


def _callbacks(value: Any, registry) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(
            f"config: callbacks must be a list, e.g. [csv, {{name: early_stopping, patience: 5}}]; "
            f"got {_type_name(value)}"
        )
    checked = [components.check(c, "callbacks", f"callbacks[{i}]", registry) for i, c in enumerate(value)]
    for i, entry in enumerate(checked):
        if entry in checked[:i]:  # the same callback twice does everything twice (two writers of one file)
            first = checked.index(entry)
            raise ConfigError(f"config: callbacks[{i}] repeats callbacks[{first}] ({show(entry)}); list it once")
    return checked


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
    _plain_keys(cfg, RunConfig, "", last="seed")
    _seeds(cfg["seeds"], cfg["seed"])
    _plain_keys(cfg, RunConfig, "", first="pretrain_per_seed")
    cfg["backbone"] = components.check(cfg["backbone"], "backbones", "backbone", registry)
    cfg["callbacks"] = _callbacks(cfg["callbacks"], registry)
    cfg["rank"] = _rank(cfg["rank"])
    for stage in ("pretrain", "finetune"):
        if cfg[stage] is not None:
            cfg[stage] = _stage(cfg[stage], stage, registry)
    cfg["baseline"] = _baseline(cfg["baseline"], cfg["finetune"], registry)
    if cfg["pretrain"] is None and cfg["finetune"] is None:
        raise ConfigError("config: nothing to run; add a pretrain: and/or finetune: stage")
    return cfg


def dump(cfg: dict) -> str:
    """The config as YAML a person reads: a value that appears twice (a default shared by two stages) is
    written out twice, never as an ``&id001`` anchor and ``*id001`` alias."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    return yaml.dump(cfg, Dumper=Dumper, sort_keys=False, default_flow_style=None, width=100)
