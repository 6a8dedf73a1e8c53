"""Plugin discovery in whole processes: a really pip-installed third-party plugin, the
``SFTCORE_LOAD_PLUGINS`` filter, a broken installed plugin, strict mode, and that listing never
imports torch, torchvision or timm.

The example plugin (``examples/sft-example-plugin``) is pip-installed once per session into a
temporary ``--target`` folder, offline (``--no-index --no-build-isolation``: the build backend is
the setuptools already installed), and put on ``PYTHONPATH`` of the processes under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SRC = ROOT / "examples" / "sft-example-plugin"
BUILTINS = ("sftcore.adapters", "sftcore.augmentations", "sftcore.backbones", "sftcore.callbacks", "sftcore.datasets",
            "sftcore.heads", "sftcore.optim", "sftcore.param_groups", "sftcore.regularizers", "sftcore.scores")
KINDS = ("datasets", "backbones", "regularizers", "heads", "param_groups", "optimizers", "schedules", "callbacks",
         "augmentations", "adapters", "scores")
EXAMPLE_COMPONENTS = {"datasets": ["npz", "stripes"], "backbones": ["tiny_cnn"],
                      "regularizers": ["bss", "delta", "l1"], "heads": ["zero_init"],
                      "param_groups": ["discriminative"], "optimizers": [], "schedules": [],
                      "callbacks": ["stop_at_accuracy"],
                      "augmentations": ["gaussian_noise"], "adapters": [], "scores": []}
HOOKS = ["register_augmentations", "register_backbones", "register_callbacks", "register_commands",
         "register_datasets", "register_heads", "register_param_groups", "register_regularizers"]
HEAVY = ("torch", "torchvision", "timm")


def clean_env(pythonpath=(), **extra) -> dict:
    """The current environment without any SFTCORE_* setting, plus ``extra``; PYTHONPATH from the list."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFTCORE_") and k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    env.update(extra)
    return env


def sft(*args, pythonpath=(), cwd=None, timeout=120, **env):
    """``python -m sftcore ARGS`` as its own process."""
    return subprocess.run([sys.executable, "-m", "sftcore", *args], capture_output=True, text=True,
                          env=clean_env(pythonpath, **env), cwd=cwd, timeout=timeout)


def stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def listing(proc, kinds=KINDS) -> dict[str, dict[str, dict]]:
    """`sft list --json` as {kind: {name: entry}}; keyed by every kind unless one was asked for."""
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data) == list(kinds)
    for kind, items in data.items():
        for item in items:
            assert {"name", "plugin", "description"} <= set(item), item
            assert item["kind"] == kind
    return {kind: {item["name"]: item for item in items} for kind, items in data.items()}


def plugin_entries(proc) -> dict[str, dict]:
    assert proc.returncode == 0, proc.stderr
    return {entry["name"]: entry for entry in json.loads(proc.stdout)}


def assert_builtins_present(found: dict) -> None:
    assert found["datasets"]["shapes"]["plugin"] == "sftcore.datasets"
    assert found["backbones"]["lenet"]["plugin"] == "sftcore.backbones"
    assert found["regularizers"]["l2"]["plugin"] == "sftcore.regularizers"
    assert found["heads"]["reinit"]["plugin"] == "sftcore.heads"


def write_fake_distribution(site: Path, dist: str, version: str, entry_name: str, module: str, source: str):
    """An installed distribution as pip leaves it: a ``.dist-info`` folder beside its module."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[sftcore]\n{entry_name} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    return site


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """The example plugin, pip-installed (offline) into a fresh --target folder, once per session."""
    pytest.importorskip("setuptools", reason="installing the example offline needs setuptools (its build backend)")
    root = tmp_path_factory.mktemp("example-plugin")
    src = root / "src"  # build from a copy: pip writes build/ and *.egg-info next to the sources
    shutil.copytree(EXAMPLE_SRC, src, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info"))
    site = root / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
           "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(site), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=clean_env(PIP_NO_INPUT="1", PIP_CONFIG_FILE=os.devnull))
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    return site


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory) -> Path:
    """An installed plugin whose module raises on import."""
    return write_fake_distribution(
        tmp_path_factory.mktemp("broken-plugin"), "broken-plugin", "0.1", "broken", "broken_plugin",
        """
        raise RuntimeError("kaboom: broken on purpose")
        """,
    )


@pytest.fixture(scope="session")
def hookfail_site(tmp_path_factory) -> Path:
    """An installed plugin that imports fine but whose register_datasets hook raises."""
    return write_fake_distribution(
        tmp_path_factory.mktemp("hookfail-plugin"), "hookfail-plugin", "2.3", "hookfail", "hookfail_plugin",
        """
        from sftcore import hookimpl

        @hookimpl
        def register_datasets(register):
            raise KeyError("hook went wrong")

        @hookimpl
        def register_heads(register):
            register("hookfail_head", "hookfail_plugin:Head", "A head from a plugin whose other hook fails")
        """,
    )


# --------------------------------------------------------------------------- the installed example
@pytest.mark.slow
def test_pip_installed_the_example_with_its_entry_point(example_site):
    assert (example_site / "sft_example_plugin" / "__init__.py").is_file()
    [info] = example_site.glob("sft_example_plugin-*.dist-info")
    assert info.name == "sft_example_plugin-0.1.0.dist-info"
    entry_points = (info / "entry_points.txt").read_text()
    assert "[sftcore]" in entry_points and "example = sft_example_plugin" in entry_points
    assert "Name: sft-example-plugin" in (info / "METADATA").read_text()


@pytest.mark.slow
def test_list_json_shows_the_example_components_under_its_plugin(example_site, tmp_path):
    proc = sft("list", "--json", pythonpath=[example_site], cwd=tmp_path)
    found = listing(proc)
    assert proc.stderr == ""  # a healthy plugin causes no warnings
    for kind, names in EXAMPLE_COMPONENTS.items():
        for name in names:
            entry = found[kind][name]
            assert entry["plugin"] == "example"
            assert entry["description"] and "\n" not in entry["description"]
    assert "stripe" in found["datasets"]["stripes"]["description"].lower()
    assert "|w|" in found["regularizers"]["l1"]["description"]
    assert_builtins_present(found)
    by_plugin = {kind: sorted(n for n, e in items.items() if e["plugin"] == "example") for kind, items in found.items()}
    assert by_plugin == EXAMPLE_COMPONENTS


@pytest.mark.slow
def test_list_text_and_patterns_with_the_example(example_site, tmp_path):
    text = sft("list", "regularizers", pythonpath=[example_site], cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    [l1_line] = [line for line in text.stdout.splitlines() if line.split()[:1] == ["l1"]]
    assert l1_line.rstrip().endswith("[example]")
    assert "l2_sp" in text.stdout and "datasets:" not in text.stdout
    found = listing(sft("list", "*_cnn", "--json", pythonpath=[example_site], cwd=tmp_path))
    assert {kind: sorted(items) for kind, items in found.items()} == {
        kind: ["tiny_cnn"] if kind == "backbones" else [] for kind in KINDS}
    found = listing(sft("list", "heads", "*init", "--json", pythonpath=[example_site], cwd=tmp_path), ["heads"])
    assert sorted(found["heads"]) == ["reinit", "zero_init"]
    assert found["heads"]["zero_init"]["plugin"] == "example"


@pytest.mark.slow
def test_plugins_json_shows_distribution_version_hooks_and_components(example_site, tmp_path):
    proc = sft("plugins", "--json", pythonpath=[example_site], cwd=tmp_path)
    entries = plugin_entries(proc)
    example = entries["example"]
    assert example["distribution"] == "sft-example-plugin"
    assert example["version"] == "0.1.0"
    assert example["builtin"] is False
    assert sorted(example["hooks"]) == HOOKS
    assert example["components"] == EXAMPLE_COMPONENTS
    assert example["error"] is None
    for name in BUILTINS:
        assert entries[name]["builtin"] is True and entries[name]["distribution"] == "sftcore"
    assert list(entries)[:len(BUILTINS)] == list(BUILTINS)  # built-ins first
    text = sft("plugins", pythonpath=[example_site], cwd=tmp_path)
    assert text.returncode == 0
    assert "example  [sft-example-plugin 0.1.0]" in text.stdout
    assert "regularizers: bss, delta, l1" in text.stdout


@pytest.mark.slow
@pytest.mark.parametrize("allow, shown", [
    ("", False),
    ("example", True),
    ("sft-example-plugin", True),
    ("SFT_Example_Plugin", True),  # distribution names compare normalised
    ("someone-else", False),
    ("someone-else, example", True),
])
def test_load_plugins_filter(example_site, tmp_path, allow, shown):
    found = listing(sft("list", "--json", pythonpath=[example_site], cwd=tmp_path, SFTCORE_LOAD_PLUGINS=allow))
    assert ("stripes" in found["datasets"]) is shown
    assert ("l1" in found["regularizers"]) is shown
    assert_builtins_present(found)  # built-ins are never filtered out
    entries = plugin_entries(sft("plugins", "--json", pythonpath=[example_site], cwd=tmp_path,
                                 SFTCORE_LOAD_PLUGINS=allow))
    assert ("example" in entries) is shown
    assert set(BUILTINS) <= set(entries)


@pytest.mark.slow
def test_config_show_checks_options_of_an_installed_plugin(example_site, tmp_path):
    cfg = tmp_path / "ex.yaml"
    cfg.write_text("name: ex\nbackbone: tiny_cnn\nfinetune:\n  dataset: {name: stripes, train_per_class: 4}\n"
                   "  head: zero_init\n  regularizers: [{name: l1, alpha: 0.001}]\n")
    bad = sft("config", "show", str(cfg), "--set", "finetune.regularizers.0.alhpa=1", pythonpath=[example_site],
              cwd=tmp_path)
    assert bad.returncode == 2
    assert "regularizer 'l1' has no option 'alhpa'" in bad.stderr and "did you mean 'alpha'" in bad.stderr
    hidden = sft("config", "show", str(cfg), pythonpath=[example_site], cwd=tmp_path, SFTCORE_LOAD_PLUGINS="")
    assert hidden.returncode == 2
    assert "unknown backbone 'tiny_cnn'" in hidden.stderr


# --------------------------------------------------------------------------- broken plugins
@pytest.mark.slow
def test_broken_plugin_is_one_warning_and_listing_still_works(broken_site, tmp_path):
    proc = sft("list", pythonpath=[broken_site], cwd=tmp_path)
    assert proc.returncode == 0
    lines = stderr_lines(proc)
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sft: warning: plugin 'broken'")
    assert "RuntimeError: kaboom: broken on purpose" in lines[0]
    assert "Traceback" not in proc.stderr
    assert "shapes" in proc.stdout and "lenet" in proc.stdout
    as_json = sft("list", "--json", pythonpath=[broken_site], cwd=tmp_path)
    assert_builtins_present(listing(as_json))  # the warning goes to stderr; stdout stays JSON
    assert len(stderr_lines(as_json)) == 1


@pytest.mark.slow
def test_broken_plugin_error_shows_in_sft_plugins(broken_site, tmp_path):
    proc = sft("plugins", "--json", pythonpath=[broken_site], cwd=tmp_path)
    entries = plugin_entries(proc)
    broken = entries["broken"]
    assert broken["distribution"] == "broken-plugin"
    assert broken["version"] == "0.1"
    assert broken["builtin"] is False
    assert broken["hooks"] == []
    assert broken["components"] == {kind: [] for kind in KINDS}
    assert "failed to import" in broken["error"] and "RuntimeError: kaboom: broken on purpose" in broken["error"]
    assert all(entries[name]["error"] is None for name in BUILTINS)
    text = sft("plugins", pythonpath=[broken_site], cwd=tmp_path)
    assert text.returncode == 0
    assert "broken  [broken-plugin 0.1]" in text.stdout and "error: failed to import" in text.stdout


@pytest.mark.slow
def test_help_works_with_a_broken_plugin(broken_site, tmp_path):
    proc = sft("--help", pythonpath=[broken_site], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout and "list" in proc.stdout and "plugins" in proc.stdout
    assert len(stderr_lines(proc)) <= 1  # help need not load plugins; if it does, one warning at most


@pytest.mark.slow
@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["plugins", "--json"]])
def test_strict_mode_makes_a_broken_plugin_fatal(broken_site, tmp_path, args):
    proc = sft(*args, pythonpath=[broken_site], cwd=tmp_path, SFTCORE_STRICT_PLUGINS="1")
    assert proc.returncode != 0
    assert proc.returncode == 2  # a user-fixable error, like every SftError
    assert "sft: error: plugin 'broken'" in proc.stderr
    assert "kaboom" in proc.stderr and "SFTCORE_STRICT_PLUGINS" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.slow
def test_broken_plugin_beside_a_healthy_one(example_site, broken_site, tmp_path):
    proc = sft("list", "--json", pythonpath=[example_site, broken_site], cwd=tmp_path)
    found = listing(proc)
    assert found["datasets"]["stripes"]["plugin"] == "example"
    assert len(stderr_lines(proc)) == 1 and "'broken'" in proc.stderr
    filtered = sft("list", "--json", pythonpath=[example_site, broken_site], cwd=tmp_path,
                   SFTCORE_LOAD_PLUGINS="example")
    assert "stripes" in listing(filtered)["datasets"]
    assert filtered.stderr == ""  # the broken one was never imported


@pytest.mark.slow
def test_plugin_whose_hook_raises_keeps_its_other_hooks(hookfail_site, tmp_path):
    proc = sft("list", "--json", pythonpath=[hookfail_site], cwd=tmp_path)
    found = listing(proc)
    assert found["heads"]["hookfail_head"]["plugin"] == "hookfail"
    assert_builtins_present(found)
    lines = stderr_lines(proc)
    assert len(lines) == 1
    assert lines[0].startswith("sft: warning: plugin 'hookfail' raised in register_datasets: KeyError")
    entries = plugin_entries(sft("plugins", "--json", pythonpath=[hookfail_site], cwd=tmp_path))
    assert entries["hookfail"]["version"] == "2.3"
    assert sorted(entries["hookfail"]["hooks"]) == ["register_datasets", "register_heads"]
    assert entries["hookfail"]["components"]["heads"] == ["hookfail_head"]
    assert "raised in register_datasets" in entries["hookfail"]["error"]
    strict = sft("list", pythonpath=[hookfail_site], cwd=tmp_path, SFTCORE_STRICT_PLUGINS="1")
    assert strict.returncode == 2 and "plugin 'hookfail' raised in register_datasets" in strict.stderr


# --------------------------------------------------------------------------- no heavy imports
IMPORT_PROBE = """
import json, runpy, sys
sys.argv = ["sft", *json.loads(sys.argv[1])]
code = 0
try:
    runpy.run_module("sftcore", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
example = sorted(m for m in sys.modules if m.split(".")[0] == "sft_example_plugin")
print("\\n@@PROBE@@" + json.dumps({{"code": code, "heavy": heavy, "example": example}}))
"""


def probe_imports(args, pythonpath, cwd, **env) -> dict:
    """Runs `sft ARGS` inside one process, then reports which modules that process imported."""
    script = IMPORT_PROBE.format(heavy=set(HEAVY))
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True,
                          env=clean_env(pythonpath, **env), cwd=cwd, timeout=120)
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("@@PROBE@@")]
    return {**json.loads(line[len("@@PROBE@@"):]), "stdout": proc.stdout, "stderr": proc.stderr}


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], ["list", "--json"], ["list"], ["plugins", "--json"],
                                  ["list", "regularizers", "l*"]])
def test_listing_never_imports_torch(example_site, broken_site, tmp_path, args):
    result = probe_imports(args, [example_site, broken_site], tmp_path)
    assert result["code"] in (0, None)
    assert result["heavy"] == [], f"`sft {' '.join(args)}` imported {result['heavy'][:5]}"
    # the example plugin's package may load, its component modules (which import torch) must not; `sft --help`
    # lists the plugins' commands, so it may load the module of `sft example-info` too (which imports click only)
    if args[0] == "--help":
        assert result["example"] in ([], ["sft_example_plugin"], ["sft_example_plugin", "sft_example_plugin.command"])
    else:
        assert result["example"] == ["sft_example_plugin"]  # it really was loaded; built-in commands load no plugin's


@pytest.mark.slow
def test_import_probe_sees_torch_when_a_component_is_built(example_site, tmp_path):
    """The probe above can fail: resolving a component's options imports its module, and torch."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: ex\nbackbone: tiny_cnn\nfinetune:\n  dataset: {name: stripes, train_per_class: 4}\n"
                   "  head: zero_init\n  regularizers: [{name: l1, alpha: 0.001}]\n")
    result = probe_imports(["config", "show", str(cfg)], [example_site], tmp_path)
    assert result["code"] in (0, None), result["stderr"]
    for text in ("tiny_cnn", "zero_init", "train_per_class: 4", "alpha: 0.001"):  # the plugin's config resolves
        assert text in result["stdout"]
    assert "torch" in result["heavy"]
    assert "sft_example_plugin.tiny_cnn" in result["example"]


# --------------------------------------------------------------------------- end to end
RUN_SCRIPT = """
import json, sys
import sftcore
summary = sftcore.run({
    "name": "ex", "seeds": 1,
    "backbone": {"name": "tiny_cnn"},
    "finetune": {"dataset": {"name": "stripes"}, "epochs": 1, "head": {"name": "zero_init"},
                 "regularizers": [{"name": "l1", "alpha": 1e-4}]},
}, out=sys.argv[1])
print("@@SUMMARY@@" + json.dumps(summary))
"""


@pytest.mark.slow
def test_example_components_run_end_to_end(example_site, tmp_path):
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(out)], capture_output=True, text=True,
                          env=clean_env([example_site]), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [line] = [line for line in proc.stdout.splitlines() if line.startswith("@@SUMMARY@@")]
    summary = json.loads(line[len("@@SUMMARY@@"):])
    finetune = summary["finetune"]
    assert finetune["dataset"] == "stripes"
    assert finetune["head"] == "zero_init"
    assert finetune["regularizers"] == ["l1"]
    assert finetune["classes"] == 4
    assert finetune["train_examples"] + finetune["val_examples"] == 4 * 32  # stripes' default size
    assert finetune["test_examples"] == 4 * 16
    assert 0.0 <= finetune["test_accuracy"] <= 1.0
    assert (out / "summary.json").is_file() and (out / "config.yaml").is_file()
    assert "tiny_cnn" in (out / "config.yaml").read_text()
    [record] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert record["stage"] == "finetune" and record["epoch"] == 1
    assert record["penalty"] is not None and record["penalty"] > 0  # the l1 term was in the loss
