"""`sft plugin new NAME`: a plugin package to start from, written from the string templates below.

The package registers one regularizer and one callback lazily ("module:attr" strings), each in its
own module, and tests both with ``sftcore.testing``. Importing this module imports no torch.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass, field
from pathlib import Path

from sftcore.errors import SftError, show

# PEP 508 / the packaging spec: letters, digits, and . _ - inside, starting and ending alphanumeric
_DIST_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
# import names the package must not take: it would shadow sftcore, or what its tests import
_RESERVED = {"sftcore", "sftcore_plugins", "torch", "pytest", "tests", "test", "conftest"}


@dataclass
class Scaffold:
    """What ``write_plugin`` wrote."""

    name: str  # the distribution and plugin (entry-point) name
    package: str  # the Python package
    root: Path
    files: list[Path] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


def package_name(name: str) -> str:
    """The Python package of distribution ``name``: ``sft-my-thing`` -> ``sft_my_thing``; one-line
    ``SftError`` for a name that is not a valid distribution name or makes no importable package."""
    if not isinstance(name, str) or not _DIST_NAME.match(name):
        raise SftError(
            f"plugin name {show(name)} is not a valid distribution name: use letters, digits and "
            "- _ . inside, starting and ending with a letter or digit (e.g. sft-my-thing)"
        )
    package = re.sub(r"[-_.]+", "_", name).lower()
    if not package.isidentifier() or keyword.iskeyword(package):
        raise SftError(
            f"plugin name '{name}' gives the package name '{package}', which Python cannot import; "
            "start the name with a letter and avoid keywords (e.g. sft-my-thing)"
        )
    if package in _RESERVED or package.startswith("sftcore_"):
        raise SftError(
            f"plugin name '{name}' gives the package name '{package}', which would shadow "
            f"{'a module of sftcore' if package.startswith('sftcore') else 'a module its tests need'}; "
            "choose another (e.g. sft-my-thing)"
        )
    return package


def component_prefix(package: str) -> str:
    """The prefix of the example components' names: the package without a leading ``sft_``, so that
    two plugins made from this template do not register the same names."""
    short = package[4:] if package.startswith("sft_") and len(package) > 4 else package
    return short.strip("_") or package


def write_plugin(name: str, directory: str | Path = ".", *, force: bool = False) -> Scaffold:
    """Write the package ``directory/name``; refuses a non-empty folder unless ``force``."""
    package = package_name(name)
    root = Path(directory) / name
    if root.exists() and not root.is_dir():
        raise SftError(f"'{root}' is a file; choose another --dir or NAME")
    if root.is_dir() and any(root.iterdir()) and not force:
        raise SftError(
            f"'{root}' already exists and is not empty; pass --force to write into it, or choose another --dir or NAME"
        )
    files = render(name, package)
    scaffold = Scaffold(name, package, root)
    try:
        for relative, text in files.items():
            path = root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            scaffold.files.append(path)
    except OSError as exc:
        raise SftError(f"cannot write '{root}': {exc.strerror or exc}") from None
    prefix = component_prefix(package)
    scaffold.next_steps = [
        f"cd {root}",
        "pip install -e '.[test]'      # the plugin, in the environment that has sftcore",
        "python -m pytest              # its tests (they also run uninstalled, from this folder)",
        f"sft plugins                   # lists '{name}' with its regularizer and callback",
        f"sft list regularizers {prefix}_l1",
        f"then use them in a config: regularizers: [{{name: {prefix}_l1, alpha: 0.0001}}] and "
        f"callbacks: [{prefix}_epoch_log]",
    ]
    return scaffold


def render(name: str, package: str) -> dict[str, str]:
    """``{relative path: text}`` of every file of the package."""
    prefix = component_prefix(package)
    values = {
        "name": name,
        "package": package,
        "reg": f"{prefix}_l1",
        "callback": f"{prefix}_epoch_log",
        "entry_key": _toml_string(name),
    }
    return {_fill(path, values): _fill(template, values) for path, template in TEMPLATES.items()}


def _toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fill(template: str, values: dict[str, str]) -> str:
    """``<<key>>`` placeholders: the templates are Python, TOML and Markdown full of braces."""
    return re.sub(r"<<(\w+)>>", lambda m: values[m.group(1)], template)


# --------------------------------------------------------------------------- the templates
PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "<<name>>"
version = "0.1.0"
description = "An sftcore plugin: the <<reg>> regularizer and the <<callback>> callback."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["sftcore"]

[project.optional-dependencies]
test = ["pytest>=7.4"]

# sftcore finds plugins through this entry-point group; the key is the plugin's name in `sft plugins`.
[project.entry-points.sftcore]
<<entry_key>> = "<<package>>"

[tool.setuptools]
packages = ["<<package>>"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# <<name>>

An [sftcore](https://pypi.org/project/sftcore/) plugin. It registers

- the regularizer `<<reg>>`: `alpha * sum(|w|)` over the weights of the new head, and
- the callback `<<callback>>`: one line per epoch (losses, accuracies) appended to `epochs.log` in the
  run directory.

## Install

In the environment where sftcore is installed:

```
pip install -e .
sft plugins                     # shows <<name>> with its components
sft list regularizers <<reg>>   # the regularizer's documentation and options
```

## Use

```yaml
finetune:
  regularizers: [{name: <<reg>>, alpha: 0.0001}]
callbacks: [<<callback>>]
```

## Test

```
pip install -e '.[test]'
python -m pytest
```

The tests also run without installing (`tests/conftest.py` puts the package on `sys.path`). They use
`sftcore.testing`: `create` and `rejects` build a component and check its options, `train_context`
and `make_step` feed a regularizer a tiny model, and a tiny run trains with both components.

## Add a component

Write its module in `<<package>>/` (import torch there, never in `__init__.py`, so that `sft list`
stays fast), then add one line to the matching table in `<<package>>/__init__.py`. The hooks, one per
kind of component, are listed in `sftcore.hookspecs`; what each factory returns is in `sftcore.api`.
"""

INIT = '''\
"""<<name>>: an sftcore plugin.

sftcore loads this module through the ``sftcore`` entry point (pyproject.toml), also for ``sft list``
and ``sft --help``, so it must stay cheap: no torch import here. Each component lives in its own
module and is registered as a ``"module:attr"`` string that sftcore imports only when the component
is built. To add a component, write its module and add one line to the matching table below.
"""

from sftcore import hookimpl

# name -> (module:attr, the one-line description `sft list` shows)
REGULARIZERS = {
    "<<reg>>": ("<<package>>.head_l1:HeadL1", "alpha * sum(|w|) over the new head's weights (sparse class weights)"),
}
CALLBACKS = {
    "<<callback>>": ("<<package>>.epoch_log:EpochLog",
                     "One line per epoch (losses, accuracies) appended to a file in the run directory"),
}


def _register_all(register, table):
    for name, (target, description) in table.items():
        register(name, target, description)


@hookimpl
def register_regularizers(register):
    _register_all(register, REGULARIZERS)


@hookimpl
def register_callbacks(register):
    _register_all(register, CALLBACKS)
'''

HEAD_L1 = '''\
"""``<<reg>>``: an L1 penalty on the new head's weights."""

from __future__ import annotations

import torch

from sftcore.api import Regularizer, Step, TrainContext, check_option


class HeadL1(Regularizer):
    """alpha * sum(|w|) over the new head's weights (sparse class weights)

    Each class is pushed to lean on few of the backbone's features. Only the head's weight matrices
    are penalised (not its biases, not the backbone); while the head is frozen the term is 0.
    """

    def __init__(self, alpha: float = 1e-4):
        # checked here, so a bad value is one line when the config is resolved, not a torch error later;
        # sftcore puts where the regularizer is configured in front (config: finetune.regularizers[0].alpha ...)
        self.alpha = check_option("alpha", alpha, float, low=0)
        self.weights: list[torch.nn.Parameter] = []

    def setup(self, ctx: TrainContext) -> None:
        self.weights = [p for p in ctx.model.head.parameters() if p.ndim > 1]

    def penalty(self, step: Step) -> torch.Tensor:
        live = [p for p in self.weights if p.requires_grad]
        total = step.logits.new_zeros((), dtype=torch.float32)
        if self.alpha and live:
            total = total + self.alpha * sum(p.float().abs().sum() for p in live)
        return total
'''

EPOCH_LOG = '''\
"""``<<callback>>``: one line per epoch in a file of the run directory."""

from __future__ import annotations

from pathlib import Path

from sftcore.api import Callback, RunInfo, StageInfo, check_option
from sftcore.errors import OptionError

FIELDS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


class EpochLog(Callback):
    """One line per epoch (losses, accuracies) appended to a file in the run directory

    A line reads ``finetune epoch 1/3 train_loss=0.6931 train_accuracy=0.5000 val_accuracy=0.6250``
    (the values of the epoch's record in metrics.jsonl). A run without a run directory writes nothing.
    """

    def __init__(self, filename: str = "epochs.log"):
        filename = check_option("filename", filename, str)
        if not filename or Path(filename).name != filename or filename in (".", ".."):
            raise OptionError("filename", f"must be a plain file name (it is written in the run directory), "
                              f"got {filename!r}")
        self.filename = filename
        self.path: Path | None = None

    def on_run_start(self, run: RunInfo) -> None:
        self.path = Path(run.run_dir) / self.filename if run.run_dir is not None else None

    def on_epoch_end(self, stage: StageInfo, record: dict) -> None:
        if self.path is None:
            return
        values = " ".join(f"{key}={record[key]:.4f}" for key in FIELDS if isinstance(record.get(key), (int, float)))
        head = f"{stage.name} epoch {record.get('epoch')}/"
        # a resumed run trains again the epoch it was stopped in: its line replaces the earlier one
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        lines = [line for line in lines if not line.startswith(head)]
        lines.append(f"{head}{stage.epochs} {values}".rstrip())
        self.path.write_text("\\n".join(lines) + "\\n", encoding="utf-8")
'''

CONFTEST = '''\
"""The tests run from the source folder, installed or not: the package goes on ``sys.path`` and every
test gets the plugin registered through ``sftcore.testing`` (as installed, if it is)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import <<package>>  # noqa: E402
from sftcore.testing import registered, sft_plugin  # noqa: E402,F401  (sft_plugin: a fixture for your tests)


@pytest.fixture(autouse=True)
def plugin_info():
    """The plugin, registered under its entry-point name for one test; its load record."""
    with registered(<<package>>, "<<name>>") as info:
        yield info


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
'''

TEST = '''\
"""<<name>>'s components, tested with sftcore.testing: registration, the regularizer's value, gradient
and option checks on a tiny model, the callback alone, and a tiny run with both."""

from __future__ import annotations

import json

import pytest
import torch

import sftcore
from sftcore.api import RunInfo, StageInfo
from sftcore.testing import create, make_step, rejects, tiny_backbone, tiny_config, train_context

REG = "<<reg>>"
CALLBACK = "<<callback>>"


def test_the_plugin_registers_its_components_cleanly(plugin_info):
    assert plugin_info.errors == []
    assert sorted(plugin_info.hooks) == ["register_callbacks", "register_regularizers"]


# --------------------------------------------------------------------------- the regularizer
def test_penalty_is_alpha_times_the_l1_norm_of_the_head_weights():
    ctx = train_context(tiny_backbone())
    reg = create("regularizers", REG, alpha=0.5)
    reg.setup(ctx)
    value = reg.penalty(make_step(ctx))
    assert value.ndim == 0 and value.dtype == torch.float32
    assert value.item() == pytest.approx(0.5 * ctx.model.head.weight.abs().sum().item(), rel=1e-6)


def test_gradient_reaches_the_head_weights_only():
    ctx = train_context(tiny_backbone())
    reg = create("regularizers", REG, alpha=0.1)
    reg.setup(ctx)
    reg.penalty(make_step(ctx)).backward()
    head = ctx.model.head
    torch.testing.assert_close(head.weight.grad, 0.1 * head.weight.detach().sign())
    assert head.bias.grad is None
    assert all(p.grad is None for p in ctx.model.backbone.parameters())


def test_a_frozen_head_adds_nothing():
    ctx = train_context(tiny_backbone())
    reg = create("regularizers", REG, alpha=1.0)
    reg.setup(ctx)
    ctx.model.head.requires_grad_(False)
    assert reg.penalty(make_step(ctx)).item() == 0.0


@pytest.mark.parametrize("alpha", [-1.0, "big", float("nan"), True])
def test_bad_alpha_is_one_line(alpha):
    assert "alpha must be a finite number >= 0" in rejects("regularizers", REG, alpha=alpha)


def test_a_misspelt_option_is_refused():
    assert "did you mean 'alpha'" in rejects("regularizers", REG, alpah=0.1)


# --------------------------------------------------------------------------- the callback
def test_the_callback_writes_one_line_per_epoch(tmp_path):
    callback = create("callbacks", CALLBACK)
    run = RunInfo(config={}, run_dir=tmp_path)
    stage = StageInfo(name="finetune", stage="finetune", seed=0, epochs=2, config={}, run=run)
    callback.on_run_start(run)
    callback.on_epoch_end(stage, {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.75})
    callback.on_epoch_end(stage, {"epoch": 2, "train_loss": 0.25, "train_accuracy": 1.0, "val_accuracy": 0.5})
    assert (tmp_path / "epochs.log").read_text().splitlines() == [
        "finetune epoch 1/2 train_loss=0.5000 train_accuracy=0.7500",
        "finetune epoch 2/2 train_loss=0.2500 train_accuracy=1.0000 val_accuracy=0.5000",
    ]


@pytest.mark.parametrize("filename", ["", "../escape.log", "logs/epochs.log", 3])
def test_bad_filename_is_one_line(filename):
    assert "filename must be" in rejects("callbacks", CALLBACK, filename=filename)


# --------------------------------------------------------------------------- a tiny run with both
def test_a_tiny_run_with_both_components(tmp_path):
    config = tiny_config(regularizers=[{"name": REG, "alpha": 0.01}], epochs=2)
    config["callbacks"] = [CALLBACK]
    out = tmp_path / "run"
    summary = sftcore.run(config, out=out)
    assert summary["finetune"]["regularizers"] == [REG]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all(r["penalty"] > 0 for r in records)  # the L1 term was in the loss
    lines = (out / "epochs.log").read_text().splitlines()
    assert [line.split(" train_loss=")[0] for line in lines] == ["finetune epoch 1/2", "finetune epoch 2/2"]
'''

TEMPLATES = {
    "pyproject.toml": PYPROJECT,
    "README.md": README,
    "<<package>>/__init__.py": INIT,
    "<<package>>/head_l1.py": HEAD_L1,
    "<<package>>/epoch_log.py": EPOCH_LOG,
    "tests/conftest.py": CONFTEST,
    "tests/test_<<package>>.py": TEST,
}
