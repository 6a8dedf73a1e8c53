"""The CLI and plugins: commands a plugin adds (``register_commands``), `sft list KIND NAME` showing one
component, and `sft plugin new` writing a plugin package that passes its own tests.

Plugin commands are loaded once per process; the ``commands`` fixture forgets them before and after a
test (``cli.reset_plugin_commands()``), so a plugin registered for one test adds its commands there only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tomllib
from contextlib import ExitStack
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from sftcore import hookimpl
from sftcore._plugins.kinds import KINDS
from sftcore.cli import cli
from sftcore.errors import ConfigError
from sftcore.testing import registered

HEAVY = ("torch", "torchvision", "timm")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True, prog_name="sft")


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_error_line(result, code=2, prefix="sft: error: ") -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    [line] = lines(result.stderr)
    assert line.startswith(prefix), line
    assert "Traceback" not in result.output
    return line


def clean_env(pythonpath=(), **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFTCORE_") and k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    return {**env, **extra}


@pytest.fixture
def commands():
    """``commands(obj, name)`` registers a plugin for this test; plugin commands load afresh."""
    cli.reset_plugin_commands()
    try:
        with ExitStack() as stack:
            yield lambda obj, name: stack.enter_context(registered(obj, name, check=False))
    finally:
        cli.reset_plugin_commands()


class Greeter:
    """A plugin adding `sft hello`, and `sft t-config-error` / `sft t-crash` that fail."""

    def __init__(self):
        self.calls = 0

    @hookimpl
    def register_commands(self, cli):
        self.calls += 1

        @cli.command("hello")
        @click.argument("who", default="world")
        @click.option("--shout", is_flag=True, help="In capitals.")
        def hello(who, shout):
            """Say hello (a command from a plugin)."""
            text = f"hello {who}"
            click.echo(text.upper() if shout else text)

        @cli.command("t-config-error")
        def config_error():
            """Fail as a user error."""
            raise ConfigError("config: t-config-error: bad value, got 3")

        @cli.command("t-crash")
        def crash():
            """Fail as a bug."""
            raise RuntimeError("plugin bug")


class Hijacker:
    """Tries to replace `sft run`, and adds `sft t-own` besides."""

    @hookimpl
    def register_commands(self, cli):
        @cli.command("run")
        def run():
            """Not sftcore's run."""
            click.echo("hijacked")

        @cli.command("t-own")
        def own():
            """A harmless command."""
            click.echo("own")


class Raiser:
    @hookimpl
    def register_commands(self, cli):
        raise KeyError("no commands today")


# --------------------------------------------------------------------------- register_commands
def test_a_plugin_command_is_callable_and_in_help(commands):
    commands(Greeter(), "t-greeter")
    result = invoke("hello", "you", "--shout")
    assert result.exit_code == 0, result.output
    assert result.stdout == "HELLO YOU\n"
    helped = invoke("--help")
    assert helped.exit_code == 0
    [row] = [line for line in helped.stdout.splitlines() if line.split()[:1] == ["hello"]]
    assert "Say hello (a command from a plugin)." in row
    assert "plugin" in helped.stdout and "run" in helped.stdout  # the built-ins are still listed
    assert invoke("hello", "--help").stdout.startswith("Usage: sft hello [OPTIONS] [WHO]")


def test_plugin_commands_load_once_and_built_ins_never_load_them(commands):
    greeter = Greeter()
    commands(greeter, "t-greeter")
    for args in (["list", "heads"], ["plugins", "--json"], ["run", "--help"], ["config", "--help"]):
        assert invoke(*args).exit_code == 0, args
    assert greeter.calls == 0 and not cli._plugin_commands_loaded
    assert "hello" not in cli.commands
    assert invoke("hello").stdout == "hello world\n"
    assert invoke("hello", "again").exit_code == 0 and invoke("--help").exit_code == 0
    assert greeter.calls == 1


def test_plugin_command_errors_are_handled_like_sftcores(commands):
    commands(Greeter(), "t-greeter")
    line = one_error_line(invoke("t-config-error"))
    assert line == "sft: error: config: t-config-error: bad value, got 3"
    line = one_error_line(invoke("t-crash"), code=1, prefix="sft: internal error: ")
    assert "RuntimeError: plugin bug" in line and "--debug" in line
    result = invoke("--debug", "t-crash")
    assert isinstance(result.exception, RuntimeError)


def test_a_plugin_cannot_replace_a_built_in_command(commands):
    commands(Hijacker(), "t-hijacker")
    helped = invoke("--help")
    assert helped.exit_code == 0
    [warning] = lines(helped.stderr)
    assert warning.startswith("sft: warning: plugin 't-hijacker' tried to replace the command 'sft run'")
    assert "keeping sftcore's" in warning
    run_help = invoke("run", "--help")
    assert run_help.exit_code == 0
    assert "Run pretrain -> finetune -> baseline" in run_help.stdout and "--resume" in run_help.stdout
    assert "hijacked" not in invoke("run", "--help").output
    assert invoke("t-own").stdout == "own\n"  # its other command is kept


def test_a_plugin_whose_hook_raises_is_one_warning(commands):
    commands(Raiser(), "t-raiser")
    commands(Greeter(), "t-greeter")
    result = invoke("hello")
    assert result.exit_code == 0 and result.stdout == "hello world\n"
    [warning] = lines(result.stderr)
    assert warning.startswith("sft: warning: plugin 't-raiser' raised in register_commands: KeyError")
    assert invoke("list", "heads").exit_code == 0
    helped = invoke("--help")
    assert helped.exit_code == 0 and "hello" in helped.stdout


def test_unknown_command_is_clicks_message_with_a_suggestion(commands):
    result = invoke("lsit")
    assert result.exit_code == 2
    assert "No such command 'lsit'" in result.output and "list" in result.output
    commands(Greeter(), "t-greeter")  # registered after the commands were loaded: they load again
    assert "Did you mean 'hello'" in invoke("helo").output  # the plugin's commands are suggested too


# --------------------------------------------------------------------------- whole processes, no torch
PROBE = f"""
import json, sys
from sftcore.cli import main
code = 0
try:
    main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print("@@PROBE@@" + json.dumps({{"code": code, "heavy": heavy, "commands": "cmdplug_cli" in sys.modules}}))
"""

CMD_PLUGIN = """
from sftcore import hookimpl


@hookimpl
def register_commands(cli):
    from cmdplug_cli import add  # imported only when sft asks the plugins for commands
    add(cli)
"""

CMD_MODULE = """
import click


def add(cli):
    @cli.command("greet")
    def greet():
        '''Greet from an installed plugin.'''
        click.echo("greetings")
"""


@pytest.fixture(scope="module")
def cmd_site(tmp_path_factory) -> Path:
    """An installed plugin (a .dist-info with an entry point) whose command module is imported lazily."""
    site = tmp_path_factory.mktemp("cmdplug")
    info = site / "cmdplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cmdplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sftcore]\ncmdplug = cmdplug\n")
    (site / "cmdplug.py").write_text(textwrap.dedent(CMD_PLUGIN))
    (site / "cmdplug_cli.py").write_text(textwrap.dedent(CMD_MODULE))
    return site


def probe(args, cwd, pythonpath=()) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          env=clean_env(pythonpath), cwd=cwd, timeout=120)
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("@@PROBE@@")]
    return {**json.loads(line[len("@@PROBE@@"):]), "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.mark.slow
@pytest.mark.parametrize("args, loads_commands", [
    (["--help"], True), (["list"], False), (["list", "--json"], False), (["plugins", "--json"], False),
    (["greet"], True), (["plugin", "new", "sft-probe", "--dir", "out"], False),
])
def test_help_list_and_plugin_commands_import_no_torch(cmd_site, tmp_path, args, loads_commands):
    result = probe(args, tmp_path, [cmd_site])
    assert result["code"] in (0, None), result["stderr"]
    assert result["stderr"] == ""
    assert result["heavy"] == [], f"`sft {' '.join(args)}` imported {result['heavy'][:5]}"
    assert result["commands"] is loads_commands
    if args == ["--help"]:
        assert "greet    Greet from an installed plugin." in result["stdout"]
    if args == ["greet"]:
        assert "greetings" in result["stdout"]


@pytest.mark.slow
def test_help_without_plugins_imports_no_torch(tmp_path):
    result = probe(["--help"], tmp_path)
    assert result["code"] in (0, None) and result["heavy"] == []
    assert "plugin " in result["stdout"] and "param_groups" in result["stdout"]


# --------------------------------------------------------------------------- sft list KIND NAME
def test_list_without_kind_lists_every_kind():
    result = invoke("list")
    assert result.exit_code == 0
    assert [line[:-1] for line in result.stdout.splitlines() if not line.startswith(" ")] == list(KINDS)
    assert list(json.loads(invoke("list", "--json").stdout)) == list(KINDS)


def test_list_kind_name_shows_the_component():
    result = invoke("list", "heads", "lp_ft")
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    assert out[0] == "lp_ft (heads, sftcore.heads)"
    assert "Linear probe for" in result.stdout
    header = out.index("options:")
    assert out[header + 1].split() == ["option", "default", "type"]
    assert out[header + 2].split() == ["probe_epochs", "null", "int", "|", "None"]
    assert invoke("list", "head", "lp_ft").stdout == result.stdout  # the singular works too


def test_list_kind_name_json():
    result = invoke("list", "regularizers", "l2_sp", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"name", "kind", "plugin", "description", "doc", "options"}
    assert (data["name"], data["kind"], data["plugin"]) == ("l2_sp", "regularizers", "sftcore.regularizers")
    assert data["description"].startswith("L2-SP") and "\n" in data["doc"]
    assert data["options"][0] == {"name": "alpha", "default": 0.1, "type": "float"}
    assert {"name": "match", "default": None, "type": "str | None"} in data["options"]
    head = json.loads(invoke("list", "heads", "lp_ft", "--json").stdout)
    assert head["options"] == [{"name": "probe_epochs", "default": None, "type": "int | None"},
                               {"name": "probe_head", "default": "linear", "type": "str"}]


class Odd:
    """Not JSON."""

    def __repr__(self):
        return "Odd()"


def odd_head(size: int, shape=Odd(), *, ratio=float("nan"), **extra):
    """A head with odd options (for tests).

    Its second paragraph.
    """


class OddPlugin:
    @hookimpl
    def register_heads(self, register):
        register("t_odd", odd_head)


def test_list_kind_name_required_and_unserialisable_defaults(plugin):
    plugin(OddPlugin(), "t-odd")
    text = invoke("list", "heads", "t_odd")
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith("t_odd (heads, t-odd)\n\nA head with odd options (for tests).\n\nIts second")
    rows = {line.split()[0]: line.split()[1:] for line in text.stdout.split("options:\n")[1].splitlines()}
    assert rows["size"] == ["required", "int"] and rows["shape"] == ["Odd()"] and rows["ratio"] == ["nan"]
    assert "**kwargs" in text.stdout
    data = json.loads(invoke("list", "heads", "t_odd", "--json").stdout)
    assert data["options"] == [{"name": "size", "type": "int"}, {"name": "shape", "default": "Odd()"},
                               {"name": "ratio", "default": "nan"}]


@pytest.mark.parametrize("pattern, names", [("lp*", ["lp_ft"]), ("lp_f?", ["lp_ft"]), ("[lm]*", None)])
def test_list_kind_wildcard_still_lists(pattern, names):
    result = invoke("list", "heads", pattern)
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == "heads:"
    found = [line.split()[0] for line in result.stdout.splitlines()[1:]]
    assert found == (names or ["linear_probe", "logistic", "lp_ft", "match_classes"])
    assert list(json.loads(invoke("list", "heads", pattern, "--json").stdout)) == ["heads"]


def test_list_one_argument_is_still_a_pattern_over_every_kind():
    result = invoke("list", "lp_ft", "--json")
    data = json.loads(result.stdout)
    assert list(data) == list(KINDS) and [c["name"] for c in data["heads"]] == ["lp_ft"]


def test_list_unknown_name_is_one_line_with_a_suggestion():
    line = one_error_line(invoke("list", "heads", "lp_fx"))
    assert "unknown head 'lp_fx'" in line and "did you mean 'lp_ft'" in line
    line = one_error_line(invoke("list", "hedas", "lp_ft"))
    assert "unknown kind 'hedas'" in line and "'heads'" in line
    assert ", ".join(KINDS[:-1]) + " or " + KINDS[-1] in line


# --------------------------------------------------------------------------- sft plugin new
EXPECTED_FILES = ["README.md", "pyproject.toml", "sft_my_thing/__init__.py", "sft_my_thing/epoch_log.py",
                  "sft_my_thing/head_l1.py", "tests/conftest.py", "tests/test_sft_my_thing.py"]


def new_plugin(tmp_path, name="sft-my-thing", *extra):
    result = invoke("plugin", "new", name, "--dir", tmp_path, *extra)
    assert result.exit_code == 0, (result.output, result.exception)
    return tmp_path / name, result


def test_plugin_new_writes_the_package(tmp_path):
    root, result = new_plugin(tmp_path)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == EXPECTED_FILES
    for relative in EXPECTED_FILES:
        assert str(root / relative) in result.stdout
    assert "pip install -e" in result.stdout and "sft plugins" in result.stdout
    project = tomllib.loads((root / "pyproject.toml").read_text())
    assert project["build-system"]["build-backend"] == "setuptools.build_meta"
    assert project["project"]["name"] == "sft-my-thing" and project["project"]["dependencies"] == ["sftcore"]
    assert project["project"]["entry-points"]["sftcore"] == {"sft-my-thing": "sft_my_thing"}
    assert any(d.startswith("pytest") for d in project["project"]["optional-dependencies"]["test"])
    assert project["tool"]["setuptools"]["packages"] == ["sft_my_thing"]
    init = (root / "sft_my_thing" / "__init__.py").read_text()
    assert "import torch" not in init and '"sft_my_thing.head_l1:HeadL1"' in init
    assert '"sft_my_thing.epoch_log:EpochLog"' in init
    assert "from sftcore.testing import registered, sft_plugin" in (root / "tests" / "conftest.py").read_text()
    readme = (root / "README.md").read_text()
    assert "pip install -e ." in readme and "sft plugins" in readme and "pytest" in readme
    for path in root.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")


def test_plugin_new_default_dir_is_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert invoke("plugin", "new", "My.Plugin").exit_code == 0
    assert (tmp_path / "My.Plugin" / "my_plugin" / "__init__.py").is_file()
    assert (tmp_path / "My.Plugin" / "tests" / "test_my_plugin.py").is_file()


def test_plugin_new_refuses_a_non_empty_folder_unless_forced(tmp_path):
    root = tmp_path / "sft-my-thing"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    line = one_error_line(invoke("plugin", "new", "sft-my-thing", "--dir", tmp_path))
    assert "already exists and is not empty" in line and "--force" in line
    assert [p.name for p in root.iterdir()] == ["keep.txt"]
    new_plugin(tmp_path, "sft-my-thing", "--force")
    assert (root / "keep.txt").read_text() == "mine" and (root / "pyproject.toml").is_file()
    empty = tmp_path / "sft-empty"
    empty.mkdir()
    new_plugin(tmp_path, "sft-empty")  # an empty folder is fine


@pytest.mark.parametrize("name, message", [
    ("bad name", "not a valid distribution name"),
    ("-dash", "not a valid distribution name"),
    ("trailing-", "not a valid distribution name"),
    ("sft/evil", "not a valid distribution name"),
    ("3d-thing", "Python cannot import"),
    ("import", "Python cannot import"),
    ("sftcore", "would shadow"),
    ("Tests", "would shadow"),
])
def test_plugin_new_refuses_bad_names(tmp_path, name, message):
    line = one_error_line(invoke("plugin", "new", "--dir", tmp_path, "--", name))
    assert message in line
    assert list(tmp_path.iterdir()) == []


def test_plugin_new_is_listed_in_help():
    assert "new  Write a plugin package skeleton" in invoke("plugin", "--help").stdout


@pytest.mark.slow
def test_the_generated_plugin_passes_its_own_tests(tmp_path):
    root, _ = new_plugin(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "tests")],
                          capture_output=True, text=True, cwd=root, env=clean_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout and "skipped" not in proc.stdout


@pytest.mark.slow
def test_the_generated_plugin_installs_and_is_discovered(tmp_path):
    pytest.importorskip("setuptools", reason="installing offline needs setuptools (the build backend)")
    root, _ = new_plugin(tmp_path / "src")
    site = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
           "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(site), str(root)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=clean_env(PIP_NO_INPUT="1", PIP_CONFIG_FILE=os.devnull))
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"

    def sft(*args):
        return subprocess.run([sys.executable, "-m", "sftcore", *args], capture_output=True, text=True,
                              env=clean_env([site]), cwd=tmp_path, timeout=120)

    plugins = sft("plugins", "--json")
    assert plugins.returncode == 0 and plugins.stderr == "", plugins.stderr
    [entry] = [e for e in json.loads(plugins.stdout) if e["name"] == "sft-my-thing"]
    assert (entry["distribution"], entry["version"], entry["error"]) == ("sft-my-thing", "0.1.0", None)
    assert sorted(entry["hooks"]) == ["register_callbacks", "register_regularizers"]
    assert entry["components"]["regularizers"] == ["my_thing_l1"]
    assert entry["components"]["callbacks"] == ["my_thing_epoch_log"]
    shown = sft("list", "regularizers", "my_thing_l1", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["options"] == [{"name": "alpha", "default": 0.0001, "type": "float"}]
