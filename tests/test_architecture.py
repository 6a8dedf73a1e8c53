"""The architecture the docs describe, checked: short functions, a core that never imports a built-in
plugin, private internals, and one table of kinds that the hooks, registry and config read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted((ROOT / "sftcore").glob("*.py"))
PUBLIC = {"__init__", "__main__", "api", "hookspecs", "testing", "errors", "cli"}
DEPRECATED = {"registry", "plugins", "model"}  # old import paths, kept with a DeprecationWarning


def test_no_function_in_the_core_is_over_60_lines():
    long = []
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.name}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_the_core_never_imports_a_builtin_plugin():
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("sftcore_plugins") for n in names), path.name


def test_internal_modules_are_visibly_private():
    assert sorted(p.stem for p in CORE if not p.stem.startswith("_") or p.stem in ("__init__", "__main__")) == \
        sorted(PUBLIC | DEPRECATED)


@pytest.mark.parametrize("old,name", [("registry", "suggest"), ("plugins", "get_registry"), ("model", "TransferModel")])
def test_old_import_paths_still_work_with_a_deprecation_warning(old, name):
    code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import sftcore.{old}\nexcept DeprecationWarning as w:\n    print('warned', w)\n"
            f"warnings.simplefilter('ignore')\nimport sftcore.{old} as m; print(callable(getattr(m, '{name}')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("warned sftcore.{0} is private now".format(old)) and out.strip().endswith("True")


def test_builtin_plugins_use_only_the_public_api():
    for path in [*(ROOT / "plugins").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sftcore"):
                module = node.module or ""
                assert module.split(".")[1:2] == [] or not module.split(".")[1].startswith("_"), \
                    f"{path.relative_to(ROOT)} imports {module}"
                if module == "sftcore":
                    assert not any(a.name.startswith("_") for a in node.names), path


def test_every_kind_has_its_hook_registry_slot_and_cli_alias():
    from sftcore import hookspecs
    from sftcore._kinds import ALIASES, KIND_TABLE
    from sftcore._registry import Registry

    for kind in KIND_TABLE:
        assert callable(getattr(hookspecs, kind.hook)) and kind.name in kind.hook
        assert kind.name in Registry().components
        assert ALIASES[kind.name] == ALIASES[kind.singular] == kind.name


@pytest.mark.parametrize("module", ["sftcore.api", "sftcore.hookspecs", "sftcore.cli", "sftcore._kinds",
                                    "sftcore._plugins", "sftcore._config", "sftcore._components"])
def test_modules_the_command_line_needs_import_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_sftcore_testing_imports_without_pytest():
    code = "import sys; sys.modules['pytest'] = None; import sftcore.testing as t; print(t.sft_plugin is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_hooks_are_called_through_pluggy_so_monitoring_sees_them():
    from sftcore import _plugins as plugins

    plugins.load_plugins()
    seen = []
    undo = plugins.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: seen.append((name, tuple(i.plugin_name for i in impls))), lambda *a: None)
    try:
        plugins._registry = None  # rebuild: every hook is called again
        registry = plugins.get_registry()
    finally:
        undo()
    assert ("register_heads", ("sftcore.heads",)) in seen
    assert ("register_optimizers", ("sftcore.optim",)) in seen
    assert {name for name, _ in seen} >= set(plugins.HOOKS.values())
    assert registry.get("heads", "lp_ft").plugin == "sftcore.heads"
