"""``sft example-info``: the command the plugin adds through ``register_commands``, in this process
(click's CliRunner on sftcore's own ``sft`` group) and in a whole ``sft`` process that finds the plugin
through its entry point, as an installed one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import sft_example_plugin
from sftcore.cli import cli
from sftcore.testing import reset_commands

PLUGIN_ROOT = Path(__file__).resolve().parents[1]
KINDS = ["datasets", "backbones", "regularizers", "heads", "param_groups", "callbacks", "augmentations"]


@pytest.fixture
def sft_commands():
    """``sft``'s plugin commands, asked for afresh in this test and forgotten after it.

    sftcore loads plugin commands once per process, when a name is not a built-in command. A test
    that registers its plugin at run time (as this suite's conftest does) must make sftcore ask again,
    and must not leave its command behind for other tests: ``sftcore.testing.reset_commands``.
    """
    reset_commands()
    try:
        yield cli
    finally:
        reset_commands()


def invoke(group, *args):
    return CliRunner().invoke(group, list(args), prog_name="sft", catch_exceptions=False)


# --------------------------------------------------------------------------- through sftcore's `sft`
def test_sft_example_info_lists_the_components_by_kind(sft_commands):
    result = invoke(sft_commands, "example-info")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"sft-example-plugin {sft_example_plugin.__version__} (plugin 'example')"
    for kind in KINDS:
        assert f"{kind}:" in lines
    for name in ("stripes", "tiny_cnn", "delta", "zero_init", "discriminative", "stop_at_accuracy"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert lines[-1] == "commands: example-info"


def test_sft_example_info_json_matches_the_registry(sft_commands):
    result = invoke(sft_commands, "example-info", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["plugin"], data["distribution"], data["version"]) == ("example", "sft-example-plugin",
                                                                       sft_example_plugin.__version__)
    assert list(data["components"]) == KINDS
    listed = json.loads(invoke(sft_commands, "list", "--json").output)  # what sftcore says the plugin registered
    for kind, components in data["components"].items():
        mine = {c["name"]: c["description"] for c in listed[kind] if c["plugin"] == "example"}
        assert {c["name"]: c["description"] for c in components} == mine
    for kind in set(listed) - set(KINDS):  # optimizers, schedules: none from this plugin
        assert not [c for c in listed[kind] if c["plugin"] == "example"]


def test_sft_help_lists_the_command(sft_commands):
    result = invoke(sft_commands, "--help")
    assert result.exit_code == 0
    assert "example-info" in result.output and "List what the sft-example-plugin adds" in result.output


def test_the_hook_is_recorded_and_clashes_with_no_builtin(sft_commands, example_plugin):
    assert "register_commands" in example_plugin.hooks and example_plugin.errors == []
    assert invoke(sft_commands, "example-info").exit_code == 0
    assert example_plugin.errors == []  # sftcore reports a plugin that tries to replace a built-in command


# --------------------------------------------------------------------------- the hook on its own
def test_register_commands_adds_one_command_to_any_click_group():
    group = click.Group("sft")
    sft_example_plugin.register_commands(group)  # the hook is a plain function too
    assert list(group.commands) == list(sft_example_plugin.COMMANDS)
    result = invoke(group, "example-info", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == sft_example_plugin.info()
    assert invoke(group, "example-info", "--jsn").exit_code == 2  # click's usage error


def test_the_version_is_pyprojects():
    project = tomllib.loads((PLUGIN_ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == sft_example_plugin.__version__
    assert project["name"] == sft_example_plugin.DISTRIBUTION
    assert project["entry-points"]["sftcore"] == {sft_example_plugin.PLUGIN: "sft_example_plugin"}


# --------------------------------------------------------------------------- a whole `sft` process
PROBE = """
import json, sys
from sftcore.cli import main
code = 0
try:
    main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
example = sorted(m for m in sys.modules if m.split(".")[0] == "sft_example_plugin")
print("@@PROBE@@" + json.dumps({"code": code, "heavy": heavy, "example": example}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> list[Path]:
    """PYTHONPATH on which the plugin is found through its entry point, as pip would leave it: a
    .dist-info folder, and the package from this source folder (nothing is built or copied)."""
    site = tmp_path_factory.mktemp("example-site")
    info = site / f"sft_example_plugin-{sft_example_plugin.__version__}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: sft-example-plugin\n"
                                   f"Version: {sft_example_plugin.__version__}\n")
    (info / "entry_points.txt").write_text("[sftcore]\nexample = sft_example_plugin\n")
    return [site, PLUGIN_ROOT]


def probe(args, pythonpath, cwd) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFTCORE_")}
    env["PYTHONPATH"] = os.pathsep.join(map(str, pythonpath))
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("@@PROBE@@")]
    return {**json.loads(line[len("@@PROBE@@"):]), "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.mark.parametrize("args", [["example-info", "--json"], ["--help"]])
def test_an_installed_plugins_command_imports_no_torch(installed, tmp_path, args):
    result = probe(args, installed, tmp_path)
    assert result["code"] in (0, None), result["stderr"]
    assert result["stderr"] == ""
    assert result["heavy"] == []
    assert result["example"] == ["sft_example_plugin", "sft_example_plugin.command"]
    output = result["stdout"].split("@@PROBE@@")[0]
    if args == ["--help"]:
        assert "example-info" in output
    else:
        assert json.loads(output) == sft_example_plugin.info()


def test_built_in_commands_do_not_load_the_command_module(installed, tmp_path):
    result = probe(["list", "callbacks"], installed, tmp_path)
    assert result["code"] in (0, None), result["stderr"]
    assert "stop_at_accuracy" in result["stdout"] and "[example]" in result["stdout"]
    assert result["example"] == ["sft_example_plugin"]  # plugin commands load only for non-built-in names
