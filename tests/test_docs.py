"""The docs say what the code does: hooks, components, options, config keys, examples, quickstart.

Like datasette's tests/test_docs.py, these fail when code grows something the docs do not mention.
Only resolving the example configs and reading factory signatures import torch (through the
built-in factories' modules); everything else reads text.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from sftcore import config as cfgmod
from sftcore import hookspecs
from sftcore.plugins import get_registry, plugin_infos
from sftcore.registry import KINDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = sorted((ROOT / "examples" / "configs").glob("*.yaml"))

INSTALL_AND_RUN = "pip install -e . && sft run"
TEST_COMMAND = "pip install -e '.[test]' && pytest"


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def hook_specs() -> dict:
    return {name: fn for name, fn in vars(hookspecs).items()
            if inspect.isfunction(fn) and hasattr(fn, "sftcore_spec")}


def builtin_components() -> list[tuple[str, str]]:
    """(kind, name) of every component registered by a built-in plugin."""
    out = []
    for info in plugin_infos():
        if info["builtin"]:
            out.extend((kind, name) for kind, names in info["components"].items() for name in names)
    return sorted(out)


def default_rows(text: str) -> dict[str, object]:
    """Table rows ``| `key` | `default` | ...`` as {key: the default parsed as YAML}."""
    return {key: yaml.safe_load(value) for key, value in re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, flags=re.M)}


def sections(text: str) -> dict[str, str]:
    """Markdown ``### `name` `` sections by name (each up to the next heading of level 1-3)."""
    out = {}
    for match in re.finditer(r"^### `([^`]+)`[^\n]*\n(.*?)(?=^#{1,3} |\Z)", text, flags=re.S | re.M):
        out[match.group(1)] = match.group(2)
    return out


# --------------------------------------------------------------------------- plugins.md
def test_there_are_hooks_to_document():
    assert sorted(hook_specs()) == ["register_backbones", "register_datasets", "register_heads",
                                    "register_regularizers"]


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_is_documented_with_its_exact_signature(name):
    signature = f"{name}{inspect.signature(hook_specs()[name])}"
    text = read(DOCS / "plugins.md")
    assert f"### `{signature}`" in text, f"docs/plugins.md needs a heading ### `{signature}`"
    # the hookspec's docstring (the factory contract) is repeated under it
    contract = inspect.getdoc(hook_specs()[name]).replace("``", "`")
    assert contract in text, f"docs/plugins.md should state {name}'s contract: {contract}"


def test_register_callback_signature_is_documented():
    text = read(DOCS / "plugins.md")
    assert "register(name, factory, description=None, override=False)" in read(ROOT / "sftcore" / "hookspecs.py")
    assert "`register(name, factory, description=None, override=False)`" in text


def test_plugin_environment_variables_are_documented():
    text = read(DOCS / "plugins.md")
    for var in ("SFTCORE_STRICT_PLUGINS", "SFTCORE_LOAD_PLUGINS"):
        assert var in read(ROOT / "sftcore" / "plugins.py")
        assert f"{var}=" in text


# --------------------------------------------------------------------------- components.md
def test_there_are_builtin_components():
    found = builtin_components()
    assert {kind for kind, _ in found} == set(KINDS)


@pytest.mark.parametrize("kind,name", builtin_components())
def test_every_builtin_component_is_documented_with_its_options(kind, name):
    documented = sections(read(DOCS / "components.md"))
    assert name in documented, f"docs/components.md needs a section ### `{name}` for the {kind[:-1]}"
    names, _ = get_registry().get(kind, name).option_names()
    missing = [opt for opt in names if f"`{opt}`" not in documented[name]]
    assert not missing, f"docs/components.md, section `{name}`, does not mention option(s) {missing}"
    params = inspect.signature(get_registry().get(kind, name).load()).parameters
    for opt, default in default_rows(documented[name]).items():
        assert opt in names, f"docs/components.md, section `{name}`, documents option `{opt}` it does not take"
        assert default == params[opt].default, \
            f"docs/components.md, section `{name}`: `{opt}` defaults to {params[opt].default!r}, not {default!r}"


# --------------------------------------------------------------------------- config.md
CONFIG_KEYS = sorted({*cfgmod.RUN_DEFAULTS, *cfgmod.STAGE_DEFAULTS, *cfgmod.DATASET_RUNNER_KEYS})


@pytest.mark.parametrize("key", CONFIG_KEYS)
def test_every_config_key_is_documented(key):
    assert f"`{key}`" in read(DOCS / "config.md"), f"docs/config.md does not mention config key `{key}`"


def test_documented_config_defaults_are_the_real_ones():
    defaults = {**cfgmod.RUN_DEFAULTS, **cfgmod.STAGE_DEFAULTS, **cfgmod.DATASET_RUNNER_KEYS}
    rows = {k: v for k, v in default_rows(read(DOCS / "config.md")).items() if k in defaults}
    assert len(rows) >= len(defaults) - 1  # all but the required `dataset`
    assert {k: defaults[k] for k in rows} == rows


@pytest.mark.parametrize("table,choices", [("optimizer", cfgmod.OPTIMIZERS), ("schedule", cfgmod.SCHEDULES)])
def test_every_optimizer_and_schedule_option_is_documented(table, choices):
    text = read(DOCS / "config.md")
    for name, options in choices.items():
        assert f"`{name}`" in text, f"docs/config.md does not mention {table} `{name}`"
        for option, default in options.items():
            assert f"`{option}: " in text, f"docs/config.md does not give {table} option `{option}`"


@pytest.mark.parametrize("choices", [cfgmod.DEVICES, cfgmod.PRECISIONS, cfgmod.SELECT])
def test_every_choice_is_documented(choices):
    text = read(DOCS / "config.md")
    assert [c for c in choices if f"`{c}`" not in text] == []


# --------------------------------------------------------------------------- examples
def test_shapes_example_is_the_embedded_default():
    assert read(ROOT / "examples" / "configs" / "shapes.yaml") == read(cfgmod.DEFAULT_CONFIG)


def test_the_examples_are_there():
    assert {p.name for p in EXAMPLES} >= {"seed-cifar10-to-cifar100.yaml", "shapes.yaml", "timm-resnet18.yaml",
                                          "image-folder.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_resolves(path):
    resolved = cfgmod.resolve(cfgmod.load(path), get_registry())
    assert resolved["finetune"] is not None


def test_seed_example_is_the_seed_experiment():
    cfg = cfgmod.resolve(cfgmod.load(ROOT / "examples" / "configs" / "seed-cifar10-to-cifar100.yaml"),
                         get_registry())
    assert cfg["backbone"]["name"] == "lenet"
    assert cfg["pretrain"]["dataset"]["name"] == "cifar10" and cfg["finetune"]["dataset"]["name"] == "cifar100"
    for stage in ("pretrain", "finetune", "baseline"):
        s = cfg[stage]
        assert (s["epochs"], s["batch_size"]) == (10, 100)
        assert {k: s["optimizer"][k] for k in ("name", "lr", "momentum")} == {"name": "sgd", "lr": 0.001,
                                                                               "momentum": 0.9}
        assert s["dataset"]["mean"] == s["dataset"]["std"] == 0.5
    assert cfg["baseline"]["name"] == "scratch"


# --------------------------------------------------------------------------- README and CI
def test_readme_quickstart_commands():
    readme = read(ROOT / "README.md")
    assert INSTALL_AND_RUN in readme
    assert TEST_COMMAND in readme
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    assert [c.strip() for c in commands] == [INSTALL_AND_RUN, TEST_COMMAND]


def test_ci_runs_the_readme_test_command():
    assert TEST_COMMAND in read(ROOT / ".ci" / "run").splitlines()


def test_relative_links_in_readme_and_docs_exist():
    for doc in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(doc)):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"
