"""Every config key, declared once: its type, default, bounds and meaning, as fields of the dataclasses the code
reads (``RunConfig``, ``StageConfig``, ``DatasetConfig``). The defaults tables, the validation of plain keys,
``sft config show`` and docs/config-reference.md all come from these fields (resolve.py, reference.py)."""

from __future__ import annotations

import copy
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from sftcore._plugins.contracts import MAX_SEED, STAGES, suggest
from sftcore.errors import ConfigError, show

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SELECT = ("auto", "best", "last")
TTA = ("none", "flip")  # test-time augmentation of a stage's test evaluation (_train/evaluate.py)
# MAX_SEED (2**32 - 1, from the api, as the built-in datasets' seed: option shares it): seeds feed torch
# generators, some multiplied (seed * 100003 + epoch seeds the data order), and numpy takes at most
# 2**32 - 1; beyond it a seed is an error now, not an overflow deep in a run.
MAX_SEEDS = 1000  # seeds: N runs N finetunes; more is a typo, not an experiment
MAX_EPOCHS = 100_000  # epochs, max_epochs, patience: more would never end, and is a typo
MAX_BATCH = 1_000_000  # batch sizes
MAX_CHUNK = 64  # augment_chunk's largest value
AUTO_SELECT_MIN_VAL = 50  # select: auto picks the best epoch only on at least this many validation examples
# The optimizer and schedule are components (sft list optimizers, sft list schedules): a resolved config
# holds every option, its default filled in from the factory's signature.
DEFAULT_OPTIMIZER, DEFAULT_SCHEDULE = "sgd", "cosine"


# --------------------------------------------------------------------------- checks of plain values
def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


MAX_CANDIDATES = 1000  # sft rank's candidates: each is one feature extraction


@dataclass(frozen=True)
class Int:
    """An integer from ``low`` to ``high``; with ``auto``, the string auto too."""

    low: int
    high: int | None = None
    auto: bool = False

    def __call__(self, value: Any, path: str) -> Any:
        if self.auto and isinstance(value, str):
            if value == "auto":
                return value
            raise ConfigError(f"config: {path} must be an integer or auto, got {show(value)}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config: {path} must be an integer, got {type_name(value)} {show(value)}")
        if value < self.low:
            raise ConfigError(f"config: {path} must be >= {self.low}, got {show(value)}")
        if self.high is not None and value > self.high:
            raise ConfigError(f"config: {path} must be <= {self.high}, got {show(value)}")
        return value

    @property
    def allowed(self) -> str:
        text = f"{self.low} to {self.high}" if self.high is not None else f">= {self.low}"
        return text + (", or auto" if self.auto else "")


@dataclass(frozen=True)
class Float:
    """A finite number in range: .nan passes every < and > test, so it is refused by name."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def __call__(self, value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config: {path} must be a number, got {type_name(value)} {show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            raise ConfigError(f"config: {path} must be a finite number, got {show(value)}") from None
        if not math.isfinite(number):
            raise ConfigError(f"config: {path} must be a finite number, got {number}")
        low, high = self.low, self.high
        if low is not None and (number < low or (self.low_open and number == low)):
            raise ConfigError(f"config: {path} must be {'>' if self.low_open else '>='} {low}, got {number}")
        if high is not None and number > high:
            raise ConfigError(f"config: {path} must be <= {high}, got {number}")
        return number

    @property
    def allowed(self) -> str:
        if self.low is not None and self.high is not None and not self.low_open:
            return f"{self.low:g} to {self.high:g}"
        return f"{'>' if self.low_open else '>='} {self.low:g}"


@dataclass(frozen=True)
class Choice:
    choices: tuple

    def __call__(self, value: Any, path: str) -> Any:
        if value not in self.choices:
            hint = suggest(value, self.choices) if isinstance(value, str) and len(value) < 100 else ""
            raise ConfigError(f"config: {path} must be one of {self.allowed}, got {show(value)}{hint}")
        return value

    @property
    def allowed(self) -> str:
        return ", ".join(map(str, self.choices))


@dataclass(frozen=True)
class Flag:
    """true or false; with ``auto``, the string auto too."""

    auto: bool = False

    def __call__(self, value: Any, path: str) -> Any:
        if isinstance(value, bool) or (self.auto and value == "auto"):
            return value
        want = "auto, true or false" if self.auto else "true or false"
        raise ConfigError(f"config: {path} must be {want}, got {show(value)}")

    @property
    def allowed(self) -> str:
        return "auto, true, false" if self.auto else "true, false"


@dataclass(frozen=True)
class Key:
    """What a key is, for people: its type, allowed values and meaning (one line each in the reference)."""

    type: str
    allowed: str
    meaning: str
    check: Any = None  # Int, Float, Choice or Flag: resolve applies it; None: resolve checks the key itself


def key(default: Any, type: str, meaning: str, check: Any = None, allowed: str | None = None) -> Any:
    """A dataclass field carrying its Key; the allowed values come from the check unless written out."""
    spec = Key(type, allowed if allowed is not None else check.allowed, meaning, check)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"key": spec})
    return field(default=default, metadata={"key": spec})


# --------------------------------------------------------------------------- the typed config
@dataclass(frozen=True)
class Component:
    """A component entry: its name and options (``{name: l2_sp, alpha: 0.1}``)."""

    name: str
    options: dict[str, Any]

    @classmethod
    def of(cls, entry: dict) -> Component:
        return cls(entry["name"], {k: v for k, v in entry.items() if k != "name"})

    def entry(self) -> dict:
        """The entry as the config file holds it (what components.build and plugins receive)."""
        return {"name": self.name, **self.options}


def _components(entries: list | None) -> list[Component] | None:
    return None if entries is None else [Component.of(e) for e in entries]


@dataclass(frozen=True)
class DatasetConfig:
    """A stage's ``dataset:``: the dataset component, and the keys the runner consumes itself."""

    name: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    labels_per_class: int | None = key(
        None,
        "integer or null",
        "keep N training examples per class (stratified, seeded); null: all",
        allowed=">= 1; not with fraction or train_examples",
    )
    fraction: float | None = key(
        None,
        "number or null",
        "keep this fraction of each class's training examples; null: all",
        allowed="> 0 and <= 1; not with labels_per_class or train_examples",
    )
    train_examples: int | None = key(
        None,
        "integer or null",
        "keep N training examples in all, stratified as the classes' shares (VTAB's 1000); null: all",
        allowed=">= the number of classes; not with labels_per_class or fraction",
    )
    val_fraction: float = key(
        0.1,
        "number",
        "share of the kept training examples held out for validation, unless the dataset has a val split",
        Float(0.0, 0.9),
        allowed="0 to 0.9",
    )

    @classmethod
    def of(cls, entry: dict) -> DatasetConfig:
        runner = {f.name: entry[f.name] for f in fields(cls) if "key" in f.metadata}
        options = {k: v for k, v in entry.items() if k != "name" and k not in runner}
        return cls(name=entry["name"], options=options, **runner)

    def entry(self) -> dict:
        """The dataset factory's entry: its name and options, without the runner's keys."""
        return {"name": self.name, **self.options}


@dataclass(frozen=True)
class StageConfig:
    """The keys of ``pretrain:``, ``finetune:`` and ``baseline:``."""

    dataset: DatasetConfig | None = key(
        None,
        "component",
        "the stage's data (sft list datasets); baseline always uses finetune's",
        allowed="required: a dataset name, or {name: ..., its options, the runner keys below}",
    )
    epochs: int | Literal["auto"] = key(
        10,
        "integer or auto",
        "training epochs; auto: until the training loss stops improving (lowering the lr on "
        "plateaus) with training accuracy >= 0.9, at most max_epochs (baseline: auto)",
        Int(0, MAX_EPOCHS, auto=True),
        allowed="1 to 100000, or auto; 0 only on finetune with a head that needs no training (match_classes, imprint)",
    )
    max_epochs: int = key(
        200,
        "integer",
        "epochs: auto trains at most this many epochs; the learning-rate schedule spans them",
        Int(1, MAX_EPOCHS),
    )
    patience: int = key(
        10,
        "integer",
        "epochs: auto: epochs without a 1% (and 0.001) better training loss that make a plateau; two "
        "plateaus lower the lr tenfold, the third ends the stage",
        Int(1, MAX_EPOCHS),
    )
    batch_size: int = key(128, "integer", "training batch size", Int(1, MAX_BATCH))
    eval_batch_size: int = key(
        512, "integer", "batch size of validation, test and imprint's feature extraction", Int(1, MAX_BATCH)
    )
    optimizer: Component = key(
        {"name": DEFAULT_OPTIMIZER},
        "component",
        "the optimizer (sft list optimizers); every option is filled in "
        "from its factory's defaults; no weight decay on biases and norm weights",
        allowed=f"an optimizer name, or {{name: ..., its options}}; a mapping without name keeps {DEFAULT_OPTIMIZER}",
    )
    schedule: Component = key(
        {"name": DEFAULT_SCHEDULE},
        "component",
        "the learning-rate factor, updated after every batch (sft list "
        "schedules); warmup_epochs is at most the stage's epochs",
        allowed=f"a schedule name, or {{name: ..., its options}}; a mapping without name keeps {DEFAULT_SCHEDULE}",
    )
    head: Component = key(
        {"name": "reinit"},
        "component",
        "builds the new classifier and decides what is frozen in each epoch (sft list heads)",
        allowed="a head strategy name, or {name: ..., its options}",
    )
    regularizers: list[Component] = key(
        [],
        "list of components",
        "penalties added to the loss; they add up (sft list regularizers)",
        allowed="regularizer names or {name: ..., its options}",
    )
    param_groups: Component | None = key(
        None,
        "component or null",
        "how the model splits into optimizer groups (sft list param_groups), e.g. "
        "layer_decay; null: the head strategy's groups (backbone at lr * backbone_lr_mult, head at lr)",
        allowed="a param_groups name, or {name: ..., its options}, or null",
    )
    adapter: Component | None = key(
        None,
        "component or null",
        "parameter-efficient finetuning (sft list adapters), e.g. lora or bitfit: applied to the backbone before "
        "the head strategy and param_groups, it decides which backbone parameters can train at all; null: all",
        allowed="an adapter name, or {name: ..., its options}, or null; finetune and baseline only",
    )
    backbone_lr_mult: float = key(
        1.0,
        "number",
        "the backbone learns at lr * this, the head at lr (built-in head strategies and param_groups)",
        Float(0.0),
    )
    select: str = key(
        "auto",
        "string",
        "best: the epoch with the highest validation accuracy; last: the final epoch; auto: best "
        f"with {AUTO_SELECT_MIN_VAL} or more validation examples, else last (a few examples make the best epoch "
        "noise)",
        Choice(SELECT),
    )
    label_smoothing: float = key(0.0, "number", "label smoothing of the cross-entropy loss", Float(0.0, 1.0))
    tta: str = key(
        "none",
        "string",
        "test-time augmentation of the test evaluation; flip: average the softmax probabilities of "
        "each image and its horizontal flip (validation is never augmented)",
        Choice(TTA),
    )
    augment: list[Component] | None = key(
        None,
        "list of components or null",
        "training-time augmentations, per batch on the device, in list order "
        "(sft list augmentations); null: the dataset's default (shapes and cifar: crop and flip)",
        allowed="augmentation names or {name: ..., its options}; [] for none",
    )
    augment_chunk: int | Literal["auto"] = key(
        "auto",
        "integer or auto",
        "training batches augmented as one (set by the config, never by the device); auto: "
        "as many as hold 2^19 pixels, at most 4; always 1 without float augmentations (crop, flip alone) and under "
        "torch.distributed",
        Int(1, MAX_CHUNK, auto=True),
    )

    raw: dict = field(default_factory=dict, repr=False, compare=False)  # the mapping read: what plugins see

    @classmethod
    def of(cls, stage: dict) -> StageConfig:
        """The typed view of a resolved stage; a key the mapping lacks reads as its declared default."""
        given = {**{name: default for name, (default, _) in declared(cls).items()}, **stage}
        values = {name: given[name] for name in declared(cls)}
        values["dataset"] = None if given["dataset"] is None else DatasetConfig.of(given["dataset"])
        for name in ("optimizer", "schedule", "head"):
            values[name] = Component.of(given[name])
        values["param_groups"] = None if given["param_groups"] is None else Component.of(given["param_groups"])
        values["adapter"] = None if given["adapter"] is None else Component.of(given["adapter"])
        values["regularizers"] = _components(given["regularizers"]) or []
        values["augment"] = _components(given["augment"])
        return cls(**values, raw=stage)

    @property
    def lr(self) -> float:
        """The optimizer's learning rate (every optimizer takes ``lr``: resolve checks it)."""
        return float(self.optimizer.options["lr"])

    @property
    def budget(self) -> int:
        """The most epochs the stage can train: ``epochs``, or ``max_epochs`` under ``epochs: auto``."""
        return self.max_epochs if self.epochs == "auto" else self.epochs


@dataclass(frozen=True)
class RunConfig:
    """The keys of the config file itself; a resolved config (a dict) read as attributes through ``of``."""

    name: str = key(
        "run", "string", "names the run directory runs/<name>-<timestamp> (unless --out is given)", allowed="non-empty"
    )
    seed: int = key(
        0, "integer", "seeds the subset, validation hold-out, init, shuffling and augmentation", Int(0, MAX_SEED)
    )
    seeds: int | list[int] = key(
        3,
        "integer or list of integers",
        "N: finetune and baseline repeat for seeds seed, seed+1, ..., seed+N-1 (a "
        "list names them); the verdict rests on the spread over seeds",
        allowed=f"1 to {MAX_SEEDS}; a list: distinct integers 0 to {MAX_SEED}",
    )
    pretrain_per_seed: bool = key(
        False,
        "boolean",
        "false: one pretraining (with seed) shared by every seed; true: pretrain again for each seed",
        Flag(),
    )
    device: str = key("auto", "string", "auto: CUDA if torch sees it, else MPS, else the CPU", Choice(DEVICES))
    backbone: Component = key(
        {"name": "lenet"},
        "component",
        "the feature extractor every stage trains (sft list backbones)",
        allowed="a backbone name, or {name: ..., its options}",
    )
    pretrain: StageConfig | None = key(
        None, "stage or null", "train on the source task first", allowed="a mapping of stage keys, or null"
    )
    finetune: StageConfig | None = key(
        None,
        "stage or null",
        "train on the target task, starting from the backbone pretrain left or loaded",
        allowed="a mapping of stage keys, or null; pretrain or finetune is required",
    )
    baseline: StageConfig | None = key(
        None,
        "string, mapping or null",
        "finetune's training from a random init, on its data: the transfer verdict",
        allowed="scratch, {name: scratch, stage keys to change}, null or false; needs finetune",
    )
    precision: str = key(
        "auto",
        "string",
        "auto: bf16 on CUDA that supports it, else fp16 on CUDA, fp32 on the CPU and MPS",
        Choice(PRECISIONS),
    )
    channels_last: bool | Literal["auto"] = key(
        "auto",
        "auto or boolean",
        "channels-last memory format; auto: true on the CPU and CUDA, false on MPS",
        Flag(auto=True),
    )
    compile: bool | Literal["auto"] = key(
        "auto", "auto or boolean", "torch.compile the backbone; auto: off", Flag(auto=True)
    )
    checkpoints: bool = key(True, "boolean", "write checkpoints/ (--resume needs it)", Flag())
    pretrain_cache: bool = key(
        True,
        "boolean",
        "reuse a pretraining another run already computed, from the cache folder $SFT_CACHE_DIR or "
        "~/.cache/sftcore (docs/cache.md); false: always pretrain",
        Flag(),
    )
    callbacks: list[Component] = key(
        [],
        "list of components",
        "told of training events, in list order: loggers (csv, tensorboard, mlflow), "
        "early_stopping (sft list callbacks)",
        allowed="callback names or {name: ..., its options}",
    )

    rank: list = key(
        [],
        "list",
        "the candidate backbones `sft rank` scores when no --candidate is given (`sft run` ignores it)",
        allowed=f"at most {MAX_CANDIDATES} run directories, weights files, backbone names or {{name: ..., options}}",
    )

    raw: dict = field(default_factory=dict, repr=False, compare=False)  # the resolved mapping (config.yaml)

    @classmethod
    def of(cls, cfg: dict) -> RunConfig:
        """The typed view of a resolved config (``resolve``'s dict, as config.yaml holds it)."""
        given = {**{name: default for name, (default, _) in declared(cls).items()}, **cfg}
        values = {name: given[name] for name in declared(cls)}
        values["backbone"] = Component.of(given["backbone"])
        values["callbacks"] = _components(given["callbacks"]) or []
        for name in STAGES:
            values[name] = None if given[name] is None else StageConfig.of(given[name])
        return cls(**values, raw=cfg)

    @property
    def seed_list(self) -> list[int]:
        """The seeds the config runs, in order; the first one's files carry the plain stage names."""
        return seeds_run(self.seeds, self.seed)

    def stage(self, name: str) -> StageConfig:
        """A stage that the config has (pretrain, finetune or baseline)."""
        found = getattr(self, name)
        if found is None:
            raise ConfigError(f"config: the config has no {name} stage")
        return found


def seeds_run(seeds: int | list[int], seed: int) -> list[int]:
    """``seeds: N`` -> seed, seed+1, ..., seed+N-1; a list names the seeds (checked by resolve)."""
    return list(seeds) if isinstance(seeds, list) else [seed + i for i in range(seeds)]


def _default(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def declared(cls) -> dict[str, tuple[Any, Key]]:
    """{key: (default, Key)} of a config dataclass, in declaration order."""
    return {f.name: (_default(f), f.metadata["key"]) for f in fields(cls) if "key" in f.metadata}
