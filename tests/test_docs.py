"""The docs say what the code does: hooks, components, options, config keys, examples, quickstart.

Like datasette's tests/test_docs.py, these fail when code grows something the docs do not mention.
Only resolving the example configs, reading factory signatures and running docs/hooks.md's
examples (a tiny run) import torch; everything else reads text.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import shlex
import types
from pathlib import Path

import pytest
import yaml

import sftcore
from sftcore import api, hookspecs
from sftcore._config import resolve as cfgmod
from sftcore._plugins.manager import get_registry, plugin_infos
from sftcore._plugins.registry import KINDS

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


def option_rows(text: str) -> dict[str, tuple[str, str]]:
    """Table rows ``| `option` | `type` | `default` or required | ...`` as {option: (type, default text)}."""
    rows = re.findall(r"^\| `(\w+)` \| `((?:[^`\\]|\\.)*)` \| (`[^`]*`|required) \|", text, flags=re.M)
    return {opt: (kind.replace("\\|", "|"), default) for opt, kind, default in rows}


def sections(text: str) -> dict[str, str]:
    """Markdown ``### `name` `` sections by name (each up to the next heading of level 1-3)."""
    out = {}
    for match in re.finditer(r"^### `([^`]+)`[^\n]*\n(.*?)(?=^#{1,3} |\Z)", text, flags=re.S | re.M):
        out[match.group(1)] = match.group(2)
    return out


# --------------------------------------------------------------------------- plugins.md
def test_there_are_hooks_to_document():
    from sftcore._plugins.kinds import KINDS

    assert sorted(hook_specs()) == sorted([f"register_{k}" for k in KINDS] + ["register_commands"])


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
        assert var in read(ROOT / "sftcore" / "_plugins" / "manager.py")
        assert f"{var}=" in text


# --------------------------------------------------------------------------- hooks.md
def hook_examples() -> list[str]:
    """The Python blocks of docs/hooks.md that implement a hook: each is a whole plugin module."""
    blocks = re.findall(r"```python\n(.*?)```", read(DOCS / "hooks.md"), flags=re.S)
    return [block for block in blocks if "@hookimpl" in block]


def api_sections() -> dict[str, str]:
    """``#### `Name` `` or ``#### `name(args)` `` sections of docs/hooks.md, by name and heading."""
    out = {}
    for match in re.finditer(r"^#### `([^`]+)`[^\n]*\n(.*?)(?=^#{1,4} |\Z)", read(DOCS / "hooks.md"),
                             flags=re.S | re.M):
        out[match.group(1)] = match.group(2)
    return out


@pytest.mark.parametrize("name", sorted(hook_specs()))
def test_every_hook_is_in_the_hook_reference(name):
    text = read(DOCS / "hooks.md")
    assert f"### `{name}{inspect.signature(hook_specs()[name])}`" in text, f"docs/hooks.md needs ### `{name}(...)`"
    assert inspect.getdoc(hook_specs()[name]).replace("``", "`") in text, f"docs/hooks.md: {name}'s contract"
    argument = "cli" if name == "register_commands" else "register"
    assert [b for b in hook_examples() if f"def {name}({argument}):" in b], f"docs/hooks.md: no example of {name}"
    assert "## `register(name, factory, description=None, override=False)`" in text


@pytest.mark.parametrize("name", api.__all__)
def test_every_api_name_is_in_the_hook_reference(name):
    obj = getattr(api, name)
    if inspect.isfunction(obj):
        heading = f"{name}({', '.join(inspect.signature(obj).parameters)})"
        assert heading in api_sections(), f"docs/hooks.md needs a heading #### `{heading}`"
        return
    assert name in api_sections(), f"docs/hooks.md needs a heading #### `{name}`"
    members = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
    members |= {m for m in vars(obj) if not m.startswith("_")}
    if not dataclasses.is_dataclass(obj) and "__init__" in vars(obj):
        members |= set(inspect.signature(obj.__init__).parameters) - {"self"}
    missing = sorted(m for m in members - {"_start"} if not re.search(rf"`{m}[`(]", api_sections()[name]))
    assert not missing, f"docs/hooks.md, section `{name}`, does not mention {missing}"


@pytest.mark.slow
def test_the_hook_examples_work_together(plugin, tmp_path, one_thread):
    """The four examples as plugins, in one tiny run with the config the page shows."""
    for i, code in enumerate(hook_examples()):
        module = types.ModuleType(f"hooks_md_example_{i}")
        exec(compile(code, f"docs/hooks.md example {i}", "exec"), module.__dict__)
        info = plugin(module, f"hooks-md-{i}")
        get_registry()
        assert info.errors == []
    config = yaml.safe_load(re.search(r"```yaml\n(.*?)```", read(DOCS / "hooks.md"), flags=re.S).group(1))
    config["device"] = "cpu"
    summary = sftcore.run(config, out=tmp_path / "run")
    assert (summary["finetune"]["head"], summary["finetune"]["regularizers"]) == ("top_blocks", ["feature_norm"])
    assert summary["finetune"]["classes"] == 4 and summary["baseline"]["test_accuracy"] is not None
    bands = get_registry().get("datasets", "bands")  # registered without a description: the docstring's
    assert bands.description == "Images of horizontal bands; the class is the band height."


# --------------------------------------------------------------------------- components.md
def test_there_are_builtin_components():
    found = builtin_components()
    assert {kind for kind, _ in found} == set(KINDS)


@pytest.mark.parametrize("kind,name", builtin_components())
def test_every_builtin_component_is_documented_with_its_options(kind, name):
    documented = sections(read(DOCS / "components.md"))
    assert name in documented, f"docs/components.md needs a section ### `{name}` for the {kind[:-1]}"
    names, _ = get_registry().get(kind, name).option_names()
    rows = option_rows(documented[name])
    missing = [opt for opt in names if opt not in rows]
    assert not missing, f"docs/components.md, section `{name}`, has no table row for option(s) {missing}"
    params = inspect.signature(get_registry().get(kind, name).load()).parameters
    for opt, (documented_type, default) in rows.items():
        where = f"docs/components.md, section `{name}`, option `{opt}`"
        assert opt in names, f"{where}: the factory takes no such option"
        annotation = params[opt].annotation
        real_type = annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)
        assert documented_type == real_type, f"{where}: the type is {real_type!r}, not {documented_type!r}"
        if default == "required":
            assert params[opt].default is None, f"{where}: not required, it defaults to {params[opt].default!r}"
        else:
            assert yaml.safe_load(default.strip("`")) == params[opt].default, \
                f"{where}: defaults to {params[opt].default!r}, not {default}"


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


@pytest.mark.parametrize("choices", [cfgmod.DEVICES, cfgmod.PRECISIONS, cfgmod.SELECT])
def test_every_choice_is_documented(choices):
    text = read(DOCS / "config.md")
    assert [c for c in choices if f"`{c}`" not in text] == []


# --------------------------------------------------------------------------- config-reference.md
def test_every_key_of_the_defaults_tables_has_a_description():
    keys = cfgmod.table_keys()
    assert [k for k in keys if k not in cfgmod.SCHEMA] == [], "add the key(s) to SCHEMA in sftcore/_config.py"
    assert [k for k in cfgmod.SCHEMA if k not in keys] == [], "SCHEMA describes key(s) no defaults table has"
    assert all(all(text.strip() for text in entry) for entry in cfgmod.SCHEMA.values())


def test_schema_defaults_come_from_the_tables():
    rows = {row["path"]: row["default"] for row in cfgmod.describe()}
    assert rows["seed"] == cfgmod.RUN_DEFAULTS["seed"]
    assert rows["<stage>.epochs"] == cfgmod.STAGE_DEFAULTS["epochs"]
    assert rows["<stage>.dataset.val_fraction"] == cfgmod.DATASET_RUNNER_KEYS["val_fraction"]
    assert rows["<stage>.optimizer"] == {"name": cfgmod.DEFAULT_OPTIMIZER}
    assert rows["callbacks"] == [] and rows["<stage>.param_groups"] is None


def test_config_reference_is_the_generated_text():
    from sftcore._config import reference as config_reference

    assert read(DOCS / "config-reference.md") == config_reference.markdown(), \
        "docs/config-reference.md is stale: python -m sftcore._config.reference > docs/config-reference.md"


def test_config_reference_lists_every_key_and_default():
    text = read(DOCS / "config-reference.md")
    for key in cfgmod.table_keys():
        assert f"| `{key}` |" in text
    assert "| `<stage>.optimizer` | component | `{name: sgd}` |" in text
    assert "| `<stage>.dataset` | component | required |" in text


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
        # the baseline has its own budget: trained until it converges
        assert (s["epochs"], s["batch_size"]) == ("auto" if stage == "baseline" else 10, 100)
        assert {k: s["optimizer"][k] for k in ("name", "lr", "momentum")} == {"name": "sgd", "lr": 0.001,
                                                                               "momentum": 0.9}
        assert s["dataset"]["mean"] == s["dataset"]["std"] == 0.5
    assert cfg["baseline"]["name"] == "scratch"


# --------------------------------------------------------------------------- getting-started.md
def getting_started(prefix: str, fence: str) -> list[tuple[list[str], str]]:
    """``(sft arguments, the line after)`` for each line of a ```fence block that starts with prefix."""
    out = []
    for block in re.findall(rf"```{fence}\n(.*?)```", read(DOCS / "getting-started.md"), flags=re.S):
        lines = [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines()] + [""]
        out += [(shlex.split(line[len(prefix):]), lines[i + 1]) for i, line in enumerate(lines)
                if line.startswith(prefix)]
    return out


@pytest.fixture
def in_scratch_dir(tmp_path, monkeypatch):
    """A fresh working directory in which the docs' relative paths (examples/...) resolve."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_getting_started_commands_work(in_scratch_dir):
    """Every `sft` command of the page, in order; a run becomes `sft config show` of the same config."""
    from click.testing import CliRunner

    from sftcore.cli import cli

    commands = getting_started("sft ", "bash")
    assert len(commands) >= 12 and ["run"] in [args for args, _ in commands]
    for args, _ in commands:
        if args[0] == "run":  # a run takes too long here: check the config it would run
            args = ["config", "show", *args[1:]]
            if "--out" in args:
                del args[args.index("--out"):args.index("--out") + 2]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, f"docs/getting-started.md: sft {shlex.join(args)}: {result.output}"


def test_getting_started_errors_are_the_real_ones(in_scratch_dir):
    from click.testing import CliRunner

    from sftcore.cli import cli

    shown = getting_started("$ sft ", "text")
    assert shown
    for args, message in shown:
        result = CliRunner().invoke(cli, args)
        assert (result.exit_code, result.stderr.strip()) == (2, message)


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
