"""The run config: defaults, YAML loading, ``--set`` overrides and one-line validation errors."""

from __future__ import annotations

import copy
import math
import os
import re
from pathlib import Path
from typing import Any

from .api import MAX_SEED
from .errors import ConfigError, show
from ._registry import suggest

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "default.yaml"

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECT = ("auto", "best", "last")
# MAX_SEED (2**32 - 1, from the api, as the built-in datasets' seed: option shares it): seeds feed torch
# generators, some multiplied (seed * 100003 + epoch seeds the data order), and numpy takes at most
# 2**32 - 1; beyond it a seed is an error now, not an overflow deep in a run.
MAX_SEEDS = 1000  # seeds: N runs N finetunes; more is a typo, not an experiment
MAX_EPOCHS = 100_000  # epochs, max_epochs, patience: more would never end, and is a typo
MAX_BATCH = 1_000_000  # batch sizes
AUTO_SELECT_MIN_VAL = 50  # select: auto picks the best epoch only on at least this many validation examples

# Keys of a stage's `dataset:` the runner consumes itself; the rest go to the dataset's factory.
DATASET_RUNNER_KEYS = {
    "labels_per_class": None,  # few-label subset: N labelled examples per class (stratified, seeded)
    "fraction": None,  # or this fraction of the training split
    "val_fraction": 0.1,  # held out of the (subset) training data for model selection
}

OPTIMIZERS = {
    "sgd": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False},
    "adamw": {"lr": 0.001, "weight_decay": 0.01, "betas": [0.9, 0.999]},
}
SCHEDULES = {
    "cosine": {"warmup_epochs": 0},
    "step": {"step_size": 10, "gamma": 0.1, "warmup_epochs": 0},
    "none": {"warmup_epochs": 0},
}

STAGE_DEFAULTS: dict[str, Any] = {
    "dataset": None,
    "epochs": 10,
    "max_epochs": 200,
    "patience": 10,
    "batch_size": 128,
    "eval_batch_size": 512,
    "optimizer": {"name": "sgd"},
    "schedule": {"name": "cosine"},
    "head": {"name": "reinit"},
    "regularizers": [],
    "backbone_lr_mult": 1.0,
    "select": "auto",
    "label_smoothing": 0.0,
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
    "<stage>.optimizer": ("name or mapping", f"{_one_of(OPTIMIZERS)}, or a mapping of name and options "
                          "(no name: sgd)", "the optimizer; its options are the optimizer keys below"),
    "<stage>.schedule": ("name or mapping", f"{_one_of(SCHEDULES)}, or a mapping of name and options "
                         "(no name: cosine)", "the learning-rate schedule, updated after every batch"),
    "<stage>.head": ("component", "a head strategy name, or {name: ..., its options}", "builds the new "
                     "classifier and decides what is frozen in each epoch (sft list heads)"),
    "<stage>.regularizers": ("list of components", "regularizer names or {name: ..., its options}",
                             "penalties added to the loss; they add up (sft list regularizers)"),
    "<stage>.backbone_lr_mult": ("number", ">= 0", "the backbone learns at lr * this, the head at lr "
                                 "(built-in head strategies)"),
    "<stage>.select": ("string", _one_of(SELECT), "best: the epoch with the highest validation accuracy; "
                       f"last: the final epoch; auto: best with {AUTO_SELECT_MIN_VAL} or more validation examples, "
                       "else last (a few examples make the best epoch noise)"),
    "<stage>.label_smoothing": ("number", "0 to 1", "label smoothing of the cross-entropy loss"),
    "<stage>.dataset.labels_per_class": ("integer or null", ">= 1; not with fraction", "keep N training "
                                         "examples per class (stratified, seeded); null: all"),
    "<stage>.dataset.fraction": ("number or null", "> 0 and <= 1; not with labels_per_class",
                                 "keep this fraction of each class's training examples; null: all"),
    "<stage>.dataset.val_fraction": ("number", "0 to 0.9", "share of the kept training examples held out for "
                                     "validation, unless the dataset has a val split"),
    "<stage>.optimizer.name": ("string", _one_of(OPTIMIZERS), "which optimizer; each takes only its own options"),
    "<stage>.optimizer.lr": ("number", "> 0", "the head's learning rate, before the schedule"),
    "<stage>.optimizer.momentum": ("number", "0 to 1", "SGD momentum"),
    "<stage>.optimizer.weight_decay": ("number", ">= 0", "sgd: coupled L2 term in the gradient; adamw: "
                                       "decoupled decay; never on biases or norm layers"),
    "<stage>.optimizer.nesterov": ("boolean", "true, false", "Nesterov momentum (has an effect when momentum > 0)"),
    "<stage>.optimizer.betas": ("list of 2 numbers", "each in [0, 1)", "AdamW's moment decay rates"),
    "<stage>.schedule.name": ("string", _one_of(SCHEDULES), "cosine: half a cosine from 1 to 0; step: "
                              "gamma ** (epoch // step_size); none: constant"),
    "<stage>.schedule.warmup_epochs": ("integer", "0 to the stage's epochs (max_epochs under auto)",
                                       "epochs of linear warmup before the schedule"),
    "<stage>.schedule.step_size": ("integer", "1 to 1000000", "epochs between learning-rate drops"),
    "<stage>.schedule.gamma": ("number", "0 to 1", "the factor of each drop"),
}
NAMED_TABLES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}


def table_keys() -> list[str]:
    """Every dotted path the defaults tables define, in table order."""
    keys = [*RUN_DEFAULTS, *(f"<stage>.{k}" for k in STAGE_DEFAULTS),
            *(f"<stage>.dataset.{k}" for k in DATASET_RUNNER_KEYS)]
    for key, table in NAMED_TABLES.items():
        keys.append(f"<stage>.{key}.name")
        keys.extend(f"<stage>.{key}.{opt}" for opt in dict.fromkeys(o for options in table.values() for o in options))
    return keys


def default_of(path: str) -> Any:
    """A key's default, read from the tables; an optimizer or schedule option gives {name: default}."""
    parts = path.split(".")
    if len(parts) == 1:
        return RUN_DEFAULTS[path]
    if len(parts) == 2:
        return STAGE_DEFAULTS[parts[1]]
    if parts[1] == "dataset":
        return DATASET_RUNNER_KEYS[parts[2]]
    if parts[2] == "name":
        return STAGE_DEFAULTS[parts[1]]["name"]
    return {name: options[parts[2]] for name, options in NAMED_TABLES[parts[1]].items() if parts[2] in options}


def describe() -> list[dict]:
    """One row per config key: path, type, default, allowed values and meaning (the reference's source)."""
    rows = []
    for key in table_keys():
        kind, allowed, meaning = SCHEMA[key]
        rows.append({"path": key, "type": kind, "default": default_of(key), "allowed": allowed, "meaning": meaning})
    return rows


# A config is a few hundred values. A document whose tree, with every alias expanded, holds more
# nodes than this is refused before it is built: a YAML alias bomb ("billion laughs") expands a few
# hundred bytes into billions of values, which then hang any code that walks or prints them.
MAX_YAML_NODES = 100_000


class YamlRefused(ConfigError):
    """A YAML document that is well-formed but refused: too large once aliases expand, or recursive."""


def _expanded_size(root) -> int:
    """How many nodes the document holds with every alias expanded, counted without expanding.

    Aliases share one node object, so the size is computed once per node (memoised) and the walk
    takes time linear in the text, however large the expansion. Stops as soon as the limit is passed.
    """
    import yaml

    sizes: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done:
            sizes[id(node)] = 1 + sum(sizes.get(id(k), 0) for k in kids)
            if sizes[id(node)] > MAX_YAML_NODES:
                return sizes[id(node)]
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def _yaml_loader():
    """PyYAML's safe loader, strict: ``1e-3`` is a float (YAML 1.2) instead of a string, a key given
    twice in one mapping is an error (PyYAML keeps the last one silently), and a document that
    expands past MAX_YAML_NODES through aliases, or refers to itself, is refused before it is built."""
    import yaml

    class Loader(yaml.SafeLoader):
        def get_single_data(self):
            node = self.get_single_node()
            if node is None:
                return None
            if _recursive(node):
                raise YamlRefused("an alias refers to the mapping or list that contains it")
            if _expanded_size(node) > MAX_YAML_NODES:
                raise YamlRefused(f"with its aliases expanded it holds over {MAX_YAML_NODES:,} values (an alias "
                                  "bomb?); a config needs a few hundred")
            return self.construct_document(node)

        def construct_mapping(self, node, deep=False):
            seen: dict = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {show(key)} appears twice in one mapping (first at line {seen[key]}); "
                        "keep one", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep)

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _recursive(root) -> bool:
    """Whether a node contains itself (``a: &x [*x]``), which no config needs and no walk survives."""
    import yaml

    state: dict[int, bool] = {}  # False: on the current path; True: done
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            state[id(node)] = True
            continue
        if state.get(id(node)) is False:
            return True
        if id(node) in state:
            continue
        state[id(node)] = False
        stack.append((node, True))
        kids = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                else node.value if isinstance(node, yaml.SequenceNode) else [])
        stack.extend((k, False) for k in kids)
    return False


def _parse(text: str, loader):
    """``yaml.load`` with PyYAML's failures that are not YAMLError (deep nesting, a huge integer) as one."""
    import yaml

    try:
        return yaml.load(text, Loader=loader)
    except RecursionError:
        raise YamlRefused("it nests mappings or lists too deeply") from None
    except ValueError as exc:  # int() of more digits than Python converts
        raise YamlRefused(f"a value cannot be read ({str(exc)[:80]})") from None


def load_yaml(path: str | os.PathLike) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; pass an existing YAML file or omit it for the default")
    try:
        data = _parse(p.read_text(), _yaml_loader())
    except YamlRefused as exc:
        raise ConfigError(f"config file '{p}' is refused: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{p}' is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, not a {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {show(text)} must look like key.path=value, e.g. finetune.epochs=5")
    try:
        parsed = _parse(value, _yaml_loader()) if value.strip() else None
    except YamlRefused as exc:
        raise ConfigError(f"--set {show(key.strip())}: the value is refused: {exc}") from None
    except yaml.YAMLError as exc:
        if "appears twice" in str(getattr(exc, "problem", "")):  # not a plain string either: say so
            raise ConfigError(f"--set {show(key.strip())}: {exc.problem}") from None
        parsed = value  # not YAML: the text itself (`--set name=a: b`)
    return key.strip().split("."), parsed


def apply_override(config: dict, path: list[str], value: Any) -> None:
    node: Any = config
    for i, part in enumerate(path[:-1]):
        nxt = _child(node, part, path[: i + 1])
        if nxt is None or isinstance(nxt, str):
            # `backbone=lenet` style shorthand becomes a mapping once a sub-key is set
            nxt = {"name": nxt} if isinstance(nxt, str) else {}
            _set(node, part, nxt, path[: i + 1])
        node = nxt
    _set(node, path[-1], value, path)


def _child(node: Any, part: str, where: list[str]) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if isinstance(node, dict):
        return node.get(part)
    raise ConfigError(f"--set {'.'.join(where)}: '{'.'.join(where[:-1])}' is not a mapping")


def _set(node: Any, part: str, value: Any, where: list[str]) -> None:
    if isinstance(node, list):
        node[_index(node, part, where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"--set {'.'.join(where)}: '{'.'.join(where[:-1])}' is not a mapping")


def _index(node: list, part: str, where: list[str]) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"--set {'.'.join(where)}: '{part}' is not an index of a list of {len(node)}")
    return int(part)


def _plain(value: Any) -> Any:
    """A deep copy in YAML's own types: paths become strings, tuples lists (the config is saved as YAML)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return copy.deepcopy(value)


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


def _component(value: Any, path: str) -> dict:
    """A component is `name` or a mapping with a `name` key plus its options."""
    if isinstance(value, str):
        return {"name": value}
    if isinstance(value, dict):
        if not isinstance(value.get("name"), str):
            raise ConfigError(f"config: {path} needs a 'name' (a string), e.g. {path}: {{name: ...}}")
        return dict(value)
    raise ConfigError(f"config: {path} must be a name or a mapping with 'name', got {_type_name(value)}")


# Ranges of the optimizer and schedule options: (low, high, low excluded). Every number is also
# finite. warmup_epochs is bounded by the stage's epochs in _stage, where those are known.
MAX_STEP_SIZE = 1_000_000  # SCHEMA says so too
NAMED_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "lr": (0.0, None, True), "momentum": (0.0, 1.0, False), "weight_decay": (0.0, None, False),
    "gamma": (0.0, 1.0, False), "step_size": (1, MAX_STEP_SIZE, False), "warmup_epochs": (0, None, False),
}


def _named_option(key: str, value: Any, default: Any, where: str) -> Any:
    """One optimizer or schedule option, checked by the type of its default and NAMED_RANGES."""
    low, high, low_open = NAMED_RANGES.get(key, (0.0, None, False))
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config: {where} must be true or false, got {show(value)}")
        return value
    if isinstance(default, float):
        return _float(value, where, low, high, low_open=low_open)
    if isinstance(default, int):
        return _int(value, where, int(low), None if high is None else int(high))
    if key == "betas":
        if not isinstance(value, list) or len(value) != 2:
            raise ConfigError(f"config: {where} must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {show(value)}")
        return [_float(b, f"{where}[{i}]", 0.0, 1.0, high_open=True) for i, b in enumerate(value)]
    return value


def _named_options(value: Any, table: dict, path: str, what: str, default: str) -> dict:
    if isinstance(value, dict) and "name" not in value:  # `--set finetune.optimizer.lr=0.1` keeps the default
        value = {"name": default, **value}
    value = _component(value, path)
    name = value["name"]
    if name not in table:
        raise ConfigError(f"config: unknown {what} {show(name)} at {path}{suggest(name, table)}; "
                          f"available: {', '.join(table)}")
    _check_keys(value, {"name", *table[name]}, path)
    merged = {"name": name, **copy.deepcopy(table[name]), **value}
    for key, default_value in table[name].items():
        merged[key] = _named_option(key, merged[key], default_value, f"{path}.{key}")
    return merged


def _dataset(value: Any, path: str, registry) -> dict:
    value = _component(value, path)
    runner = {k: value.get(k, d) for k, d in DATASET_RUNNER_KEYS.items()}
    if runner["labels_per_class"] is not None:
        _int(runner["labels_per_class"], f"{path}.labels_per_class", 1)
    if runner["fraction"] is not None:
        _float(runner["fraction"], f"{path}.fraction", 0.0, 1.0, low_open=True)
    if runner["labels_per_class"] is not None and runner["fraction"] is not None:
        raise ConfigError(f"config: {path} sets both labels_per_class and fraction; keep one")
    runner["val_fraction"] = _float(runner["val_fraction"], f"{path}.val_fraction", 0.0, 0.9)
    options = {k: v for k, v in value.items() if k not in DATASET_RUNNER_KEYS and k != "name"}
    if registry is not None:
        try:
            comp = registry.get("datasets", value["name"])
        except ConfigError as exc:
            raise ConfigError(f"config: {path}: {exc}") from None
        comp.check_options(options, f"config: {path}")
        comp.validate(options, f"config: {path}")
    return {"name": value["name"], **runner, **options}


def _checked_component(value: Any, kind: str, path: str, registry) -> tuple[dict, Any]:
    """The component's config, and the object for heads and regularizers (None without a registry)."""
    value = _component(value, path)
    made = None
    if registry is not None:
        try:
            comp = registry.get(kind, value["name"])
        except ConfigError as exc:
            raise ConfigError(f"config: {path}: {exc}") from None
        options = {k: v for k, v in value.items() if k != "name"}
        comp.check_options(options, f"config: {path}")
        comp.validate(options, f"config: {path}")
        if kind in ("heads", "regularizers"):  # cheap to build: bad values fail now, not after pretraining
            made = comp.create(where=f"config: {path}", **options)
    return value, made


def _epochs(value: Any, path: str) -> int | str:
    if value == "auto":
        return value
    if isinstance(value, str):
        raise ConfigError(f"config: {path} must be an integer or auto, got {show(value)}")
    return _int(value, path, 0, MAX_EPOCHS)


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
    stage["optimizer"] = _named_options(stage["optimizer"], OPTIMIZERS, f"{path}.optimizer", "optimizer", "sgd")
    stage["schedule"] = _named_options(stage["schedule"], SCHEDULES, f"{path}.schedule", "schedule", "cosine")
    _check_warmup(stage, path)
    stage["head"], strategy = _checked_component(stage["head"], "heads", f"{path}.head", registry)
    if stage["epochs"] == 0 and not (path == "finetune" and getattr(strategy, "usable_untrained", registry is None)):
        raise ConfigError(f"config: {path}.epochs must be >= 1, got 0 (0 only evaluates a finetune head that needs "
                          "no training, such as head: match_classes or imprint)")
    regs = stage["regularizers"] if stage["regularizers"] is not None else []
    if not isinstance(regs, list):
        raise ConfigError(f"config: {path}.regularizers must be a list, e.g. [{{name: l2_sp, alpha: 0.1}}]")
    stage["regularizers"] = [
        _checked_component(r, "regularizers", f"{path}.regularizers[{i}]", registry)[0] for i, r in enumerate(regs)
    ]
    stage["backbone_lr_mult"] = _float(stage["backbone_lr_mult"], f"{path}.backbone_lr_mult", 0.0)
    stage["select"] = _choice(stage["select"], SELECT, f"{path}.select")
    stage["label_smoothing"] = _float(stage["label_smoothing"], f"{path}.label_smoothing", 0.0, 1.0)
    return stage


def _check_warmup(stage: dict, path: str) -> None:
    """Warmup longer than the stage would train the whole stage at a sliver of the lr (warmup_epochs:
    1e12 trains at lr * 1e-14): it may last at most the stage's epochs (max_epochs under auto)."""
    budget, warmup = epoch_budget(stage), stage["schedule"]["warmup_epochs"]
    if warmup > budget:
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
            "epochs": "auto"}
    options = {k: v for k, v in value.items() if k != "name"}
    for key in ("optimizer", "schedule"):  # `optimizer: {lr: 0.1}` changes the lr, keeps the rest
        given = options.get(key)
        if isinstance(given, dict) and given.get("name", base[key]["name"]) == base[key]["name"]:
            options[key] = {**base[key], **given}
    if options.pop("dataset", finetune["dataset"]) != finetune["dataset"]:  # a resolved config repeats it
        raise ConfigError("config: baseline.dataset cannot be set: the baseline always trains on the finetune "
                          "stage's data (same subset, same validation split)")
    return {"name": "scratch", **_stage(options, "baseline", registry, base=base)}


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
    cfg["backbone"] = _checked_component(cfg["backbone"], "backbones", "backbone", registry)[0]
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
