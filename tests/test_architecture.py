"""The architecture the docs describe, checked: short functions, a core that never imports a built-in
plugin, private internals in subpackages by role, an import order that only runs one way, docs/architecture.md
naming every module, and one table of kinds that the hooks, registry and config read."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = sorted((ROOT / "sftcore").rglob("*.py"))
PUBLIC = {"__init__", "__main__", "api", "hookspecs", "testing", "errors", "cli"}
DEPRECATED = {"registry", "plugins", "model"}  # old import paths, kept with a DeprecationWarning
SUBPACKAGES = sorted(p.parent.name for p in (ROOT / "sftcore").glob("*/__init__.py"))
MAX_LAYERS = 10


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_the_core_or_the_builtins_is_over_60_lines():
    long = [f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in [*CORE, *(ROOT / "plugins").rglob("*.py")] for node in _functions(path)
            if node.end_lineno - node.lineno >= 60]
    assert long == []


def test_the_core_never_imports_a_builtin_plugin():
    for path in CORE:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("sftcore_plugins") for n in names), path.name


def test_internal_modules_are_visibly_private():
    top = {p.stem for p in (ROOT / "sftcore").glob("*.py")}
    assert sorted(n for n in top if not n.startswith("_") or n in ("__init__", "__main__")) == \
        sorted(PUBLIC | DEPRECATED)
    assert SUBPACKAGES and all(name.startswith("_") for name in SUBPACKAGES)


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_each_subpackage_says_its_one_job_and_what_it_may_import(package):
    init = ROOT / "sftcore" / package / "__init__.py"
    tree = ast.parse(init.read_text())
    doc = ast.get_docstring(tree) or ""
    assert doc and "May import:" in doc, f"sftcore/{package}/__init__.py needs a docstring: its job, 'May import: ...'"
    # the face of a room imports nothing: importing sftcore._config must not import torch through it
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[room.strip() for room in re.split(r"[|:]", layer)] for layer in contract["layers"]]


def test_the_import_contract_covers_every_room_in_at_most_ten_layers():
    rooms = {room for layer in _layers() for room in layer}
    top = {p.stem for p in (ROOT / "sftcore").glob("*.py")} - {"__init__", "__main__", "_deprecated"} - DEPRECATED
    assert rooms == top | set(SUBPACKAGES), "every subpackage and top-level module belongs to a layer"
    assert len(_layers()) <= MAX_LAYERS


@pytest.mark.slow
def test_imports_run_one_way():
    """The layers contract itself (import-linter), so that a local pytest run catches a new upward import."""
    lint = Path(sys.executable).with_name("lint-imports")
    if not lint.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def _documented_modules(text: str) -> set[str]:
    """The modules the tree in docs/architecture.md names: ``name.py`` at two spaces, ``folder/name.py`` at four."""
    block = text[text.index("```text\nsftcore/") :]
    block = block[: block.index("```", 3)]
    named, folder = set(), ""
    for line in block.splitlines()[2:]:  # after ```text and sftcore/
        indent = len(line) - len(line.lstrip())
        if indent == 0:  # plugins/, examples/: outside the package
            break
        if indent not in (2, 4):  # a description's second line
            continue
        names = line.strip().split("   ")[0]  # the names come before the description
        if indent == 2:
            folder = names if names.endswith("/") else ""
        named |= {(folder if indent == 4 else "") + word for word in re.findall(r"[\w.]+\.py\b", names)}
    return named


def test_docs_architecture_names_every_module_and_only_modules_that_exist():
    named = _documented_modules((ROOT / "docs" / "architecture.md").read_text())
    modules = {str(p.relative_to(ROOT / "sftcore")) for p in CORE if p.name != "__init__.py" or p.parent.name == "sftcore"}
    assert sorted(modules - named) == [], "docs/architecture.md does not name these modules"
    assert sorted(named - modules) == [], "docs/architecture.md names modules that do not exist"


def test_hookspecs_are_written_out_one_per_kind():
    """Plain functions a reader, an IDE and grep can see, matching the kinds table row for row."""
    from sftcore import hookspecs
    from sftcore._plugins.kinds import KIND_TABLE

    source = (ROOT / "sftcore" / "hookspecs.py").read_text()
    written = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    assert set(written) == {k.hook for k in KIND_TABLE} | {"register_commands"}
    for kind in KIND_TABLE:
        assert ast.get_docstring(written[kind.hook]) == f"Register {kind.name}: ``{kind.contract}``."
        assert [a.arg for a in written[kind.hook].args.args] == ["register"]
        assert callable(getattr(hookspecs, kind.hook))
    assert "globals()" not in source


def test_deprecated_paths_live_in_one_table_with_their_removal_version():
    from sftcore._deprecated import MOVED

    assert set(MOVED) == {f"sftcore.{name}" for name in DEPRECATED}
    for name in DEPRECATED:
        assert len((ROOT / "sftcore" / f"{name}.py").read_text().splitlines()) <= 6
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", removed) for _, _, removed in MOVED.values())


def test_the_package_ships_its_types():
    assert (ROOT / "sftcore" / "py.typed").exists()
    assert "py.typed" in (ROOT / "pyproject.toml").read_text()


@pytest.mark.slow
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
    from sftcore._plugins.kinds import ALIASES, KIND_TABLE
    from sftcore._plugins.registry import Registry

    for kind in KIND_TABLE:
        assert callable(getattr(hookspecs, kind.hook)) and kind.name in kind.hook
        assert kind.name in Registry().components
        assert ALIASES[kind.name] == ALIASES[kind.singular] == kind.name


@pytest.mark.slow
@pytest.mark.parametrize("module", ["sftcore.api", "sftcore.hookspecs", "sftcore.cli", "sftcore._plugins.kinds",
                                    "sftcore._plugins.manager", "sftcore._config.resolve", "sftcore._plugins.components"])
def test_modules_the_command_line_needs_import_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_sftcore_testing_imports_without_pytest():
    code = "import sys; sys.modules['pytest'] = None; import sftcore.testing as t; print(t.sft_plugin is None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_hooks_are_called_through_pluggy_so_monitoring_sees_them():
    from sftcore._plugins import manager as plugins

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


# --------------------------------------------------------------------------- the fast tier
HEAVY_CALLS = {"run", "run_tiny", "run_sft", "sft", "Popen", "check_output", "check_call", "torchrun", "sweep", "find",
               "train_stage", "launch"}  # a run, a sweep, lr-find, a stage, or a process


def _called(node: ast.AST) -> set[str]:
    return {f.attr if isinstance(f, ast.Attribute) else f.id for n in ast.walk(node) if isinstance(n, ast.Call)
            for f in [n.func] if isinstance(f, (ast.Attribute, ast.Name))}


def _is_fixture(fn: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(d) for d in fn.decorator_list)


def _heavy(fn: ast.FunctionDef, helpers: dict, seen: set) -> bool:
    """Whether ``fn`` trains or starts a process, itself or through a fixture or helper it uses."""
    if _called(fn) & HEAVY_CALLS:
        return True
    for name in [a.arg for a in fn.args.args] + sorted(_called(fn)):
        if name in helpers and name not in seen and not name.startswith("test_"):
            seen.add(name)
            if _heavy(helpers[name], helpers, seen):
                return True
    return False


def test_every_test_that_trains_or_starts_a_process_is_marked_slow():
    """So that `pytest -m "not slow"` stays the quick tier to run while developing."""
    conftest = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    shared = {n.name: n for n in conftest.body if isinstance(n, ast.FunctionDef) and _is_fixture(n)}
    unmarked = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        if any("pytestmark" in ast.unparse(n) and "slow" in ast.unparse(n) for n in tree.body if isinstance(n, ast.Assign)):
            continue
        helpers = {**shared, **{n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}}
        tests = [n for n in tree.body if isinstance(n, ast.FunctionDef)] + [
            m for c in tree.body if isinstance(c, ast.ClassDef) for m in c.body if isinstance(m, ast.FunctionDef)]
        unmarked += [f"{path.name}::{fn.name}" for fn in tests if fn.name.startswith("test_") and not _is_fixture(fn)
                     and not any("slow" in ast.unparse(d) for d in fn.decorator_list) and _heavy(fn, helpers, set())]
    assert unmarked == [], "mark these @pytest.mark.slow"
