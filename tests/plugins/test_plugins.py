"""The plugin system in-process: registration, descriptions, lazy factories, clashes, isolation,
strict mode, option checks, name suggestions and listing; and the example plugin's components.

Plugins here are module objects (what an entry point loads), instances and classes with
``@hookimpl`` functions, registered through the ``plugin`` fixture (unregistered afterwards).
Every test component's name starts with ``t_`` and every test plugin's name with ``t-``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from sftcore import hookimpl
from sftcore._plugins import manager as plugins
from sftcore.errors import ConfigError, PluginError, SftError
from sftcore._plugins.registry import KINDS, Component, Registry

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_SRC = ROOT / "examples" / "sft-example-plugin"


# --------------------------------------------------------------------------- helpers
def module_plugin(name="sft_test_plugin", **hooks):
    """A module object with the given functions marked ``@hookimpl``, like an entry point loads."""
    mod = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, hookimpl(fn))
    return mod


def registering(*entries):
    """A hook function that registers each entry: a tuple of positional args or a dict of kwargs."""

    def hook(register):
        for entry in entries:
            if isinstance(entry, dict):
                register(**entry)
            else:
                register(*entry)

    return hook


def warning_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def make_dataset(ctx, size: int = 8, noise: float = 0.1):
    """Makes a test dataset.

    The rest of this docstring is not part of the description.
    """
    return ("dataset", ctx, size, noise)


class MakeRegularizer:
    """A test regularizer class whose docstring describes it."""

    def __init__(self, alpha: float = 0.5, *, beta: float = 0.0):
        self.alpha, self.beta = alpha, beta


def takes_anything(**options):
    """Accepts any option."""
    return options


def no_options():
    """Takes no options at all."""
    return None


def undocumented(alpha=1.0):
    return alpha


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch):
    """Tests here choose strictness themselves, whatever the calling shell has set."""
    monkeypatch.delenv("SFTCORE_STRICT_PLUGINS", raising=False)


# --------------------------------------------------------------------------- recording
def test_component_records_plugin_kind_and_first_line_of_explicit_description(plugin):
    info = plugin(module_plugin(register_datasets=registering(
        ("t_explicit", make_dataset, "  Explicit first line.\nsecond line is dropped"),
    )), "t-recorder")
    comp = plugins.get_registry().get("datasets", "t_explicit")
    assert isinstance(comp, Component)
    assert comp.plugin == "t-recorder"
    assert comp.kind == "datasets"
    assert comp.name == "t_explicit"
    assert comp.description == "Explicit first line."  # explicit wins over the docstring
    assert comp.factory is make_dataset
    assert comp.as_dict() == {"name": "t_explicit", "kind": "datasets", "plugin": "t-recorder",
                              "description": "Explicit first line."}
    assert info.hooks == ["register_datasets"]
    assert info.errors == []


def test_description_defaults_to_first_line_of_factory_docstring(plugin, capsys):
    plugin(module_plugin(
        register_datasets=registering(("t_doc_fn", make_dataset)),
        register_regularizers=registering({"name": "t_doc_cls", "factory": MakeRegularizer}),
    ), "t-docs")
    capsys.readouterr()
    reg = plugins.get_registry()
    assert reg.get("datasets", "t_doc_fn").description == "Makes a test dataset."
    assert reg.get("regularizers", "t_doc_cls").description == "A test regularizer class whose docstring describes it."
    assert capsys.readouterr().err == ""


def test_component_without_any_description_is_reported_and_skipped(plugin, capsys):
    info = plugin(module_plugin(register_regularizers=registering(
        ("t_nodoc_fn", undocumented),
        ("t_nodoc_lazy", "json:dumps"),  # a lazy string has no docstring to fall back on
        ("t_documented", no_options),
    )), "t-nodesc")
    capsys.readouterr()
    reg = plugins.get_registry()
    names = {c.name for c in reg.list("regularizers")["regularizers"]}
    assert "t_documented" in names
    assert "t_nodoc_fn" not in names and "t_nodoc_lazy" not in names
    assert len(info.errors) == 2
    assert all("without a description" in e for e in info.errors)
    assert any("'t_nodoc_fn'" in e for e in info.errors) and any("'t_nodoc_lazy'" in e for e in info.errors)
    err = capsys.readouterr().err
    assert len(warning_lines(err)) == 2
    assert all(line.startswith("sft: warning: plugin 't-nodesc'") for line in warning_lines(err))


@pytest.mark.parametrize("name, factory, expected", [
    ("t_bad_factory", 42, "neither callable nor a 'module:attr' string"),
    ("t_bad_string", "json.dumps", "neither callable nor a 'module:attr' string"),
    ("", no_options, "empty or non-string name"),
    (7, no_options, "empty or non-string name"),
])
def test_invalid_registrations_are_reported_not_raised(plugin, capsys, name, factory, expected):
    info = plugin(module_plugin(register_heads=registering(
        (name, factory, "bad one"),
        ("t_fine_head", no_options, "a fine one"),
    )), "t-invalid")
    reg = plugins.get_registry()
    assert reg.get("heads", "t_fine_head").plugin == "t-invalid"
    assert len(info.errors) == 1 and expected in info.errors[0]
    assert "t-invalid" in capsys.readouterr().err


def test_plugin_objects_modules_instances_and_classes_all_work(plugin):
    class InstancePlugin:
        @hookimpl
        def register_backbones(self, register):
            register("t_from_instance", no_options, "from an instance")

    class ClassPlugin:
        @staticmethod
        @hookimpl
        def register_backbones(register):
            register("t_from_class", no_options, "from a class")

    plugin(InstancePlugin(), "t-instance")
    plugin(ClassPlugin, "t-class")
    plugin(module_plugin(register_backbones=registering(("t_from_module", no_options, "from a module"))), "t-module")
    reg = plugins.get_registry()
    assert reg.get("backbones", "t_from_instance").plugin == "t-instance"
    assert reg.get("backbones", "t_from_class").plugin == "t-class"
    assert reg.get("backbones", "t_from_module").plugin == "t-module"


def test_one_plugin_may_implement_every_hook(plugin):
    info = plugin(module_plugin(
        register_datasets=registering(("t_all_ds", make_dataset)),
        register_backbones=registering(("t_all_bb", no_options, "bb")),
        register_regularizers=registering(("t_all_reg", MakeRegularizer)),
        register_heads=registering(("t_all_head", no_options, "head")),
    ), "t-all")
    assert sorted(info.hooks) == sorted(f"register_{k}" for k in ("datasets", "backbones", "regularizers", "heads"))
    by_plugin = {k: v for k, v in plugins.get_registry().by_plugin("t-all").items() if v}
    assert by_plugin == {"datasets": ["t_all_ds"], "backbones": ["t_all_bb"], "regularizers": ["t_all_reg"],
                         "heads": ["t_all_head"]}
    [entry] = [i for i in plugins.plugin_infos() if i["name"] == "t-all"]
    assert {k: v for k, v in entry["components"].items() if v} == by_plugin
    assert entry["builtin"] is False and entry["distribution"] is None and entry["version"] is None
    assert entry["error"] is None
    json.dumps(entry)  # what `sft plugins --json` prints must serialise


def test_builtin_plugins_are_loaded_and_tagged():
    reg = plugins.get_registry()
    assert reg.get("datasets", "shapes").plugin == "sftcore.datasets"
    assert reg.get("backbones", "lenet").plugin == "sftcore.backbones"
    assert reg.get("regularizers", "l2_sp").plugin == "sftcore.regularizers"
    assert reg.get("heads", "reinit").plugin == "sftcore.heads"
    infos = {i["name"]: i for i in plugins.plugin_infos()}
    for name in ("sftcore.datasets", "sftcore.backbones", "sftcore.regularizers", "sftcore.heads"):
        assert infos[name]["builtin"] is True
        assert infos[name]["distribution"] == "sftcore"
        assert infos[name]["error"] is None
        assert infos[name]["hooks"] == [f"register_{name.split('.')[1]}"]
    # built-ins come first in `sft plugins`
    order = [i["name"] for i in plugins.plugin_infos()]
    assert order[:4] == sorted(order[:4]) and all(n.startswith("sftcore.") for n in order[:4])


# --------------------------------------------------------------------------- lazy factories
@pytest.fixture
def lazy_module(tmp_path, monkeypatch):
    """A module on sys.path that nothing has imported yet."""
    name = f"sft_lazy_target_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(
        "def make(alpha=1.0, beta=2.0):\n"
        "    '''Docstring of make.'''\n"
        "    return ('made', alpha, beta)\n"
        "class Holder:\n"
        "    @staticmethod\n"
        "    def make(gamma=3):\n"
        "        return ('held', gamma)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_lazy_factories_import_only_when_loaded(plugin, lazy_module):
    plugin(module_plugin(register_regularizers=registering(
        ("t_lazy", f"{lazy_module}:make", "lazy one"),
        ("t_lazy_dotted", f"{lazy_module}:Holder.make", "lazy dotted attribute"),
    )), "t-lazy")
    reg = plugins.get_registry()
    comp = reg.get("regularizers", "t_lazy")
    assert comp.factory == f"{lazy_module}:make"
    assert comp.description == "lazy one"
    assert lazy_module not in sys.modules  # listing imported nothing
    assert [c.name for c in reg.list("regularizers", "t_lazy*")["regularizers"]] == ["t_lazy", "t_lazy_dotted"]
    assert lazy_module not in sys.modules

    factory = comp.load()
    assert lazy_module in sys.modules
    assert callable(factory) and comp.factory is factory  # resolved once, then cached
    assert comp.load() is factory
    assert comp.create(alpha=5) == ("made", 5, 2.0)
    assert reg.get("regularizers", "t_lazy_dotted").create(gamma=4) == ("held", 4)


def test_lazy_factory_of_a_missing_module_lists_fine_and_fails_on_load(plugin):
    plugin(module_plugin(register_heads=registering(
        ("t_missing", "sft_no_such_module_anywhere:Thing", "points nowhere"),
    )), "t-missing")
    comp = plugins.get_registry().get("heads", "t_missing")
    assert comp.description == "points nowhere"
    with pytest.raises(PluginError, match=r"head 't_missing' of plugin 't-missing' cannot be loaded from "
                                          r"'sft_no_such_module_anywhere:Thing': ModuleNotFoundError"):
        comp.load()


def test_lazy_factory_options_are_read_after_loading(plugin, lazy_module):
    plugin(module_plugin(register_regularizers=registering(("t_lazy_opts", f"{lazy_module}:make", "x"))), "t-lazyopt")
    comp = plugins.get_registry().get("regularizers", "t_lazy_opts")
    assert comp.option_names() == (["alpha", "beta"], False)
    with pytest.raises(ConfigError, match=r"did you mean 'alpha'"):
        comp.check_options({"alpah": 1}, "config: finetune.regularizers[0]")


# --------------------------------------------------------------------------- clashes and override
def test_same_name_from_two_plugins_names_both_and_keeps_the_rest(plugin, capsys):
    first = plugin(module_plugin(register_regularizers=registering(("t_dup", no_options, "first"))), "t-a-first")
    second = plugin(module_plugin(register_regularizers=registering(
        ("t_dup", undocumented, "second"),
        ("t_second_only", no_options, "only in the second plugin"),
    )), "t-b-second")
    capsys.readouterr()
    reg = plugins.get_registry()
    dup = reg.get("regularizers", "t_dup")
    assert dup.plugin == "t-a-first" and dup.description == "first"  # the clashing one is skipped
    assert reg.get("regularizers", "t_second_only").plugin == "t-b-second"  # the rest stays
    assert first.errors == []
    assert len(second.errors) == 1
    message = second.errors[0]
    assert "'t_dup'" in message
    assert "'t-a-first'" in message and "'t-b-second'" in message
    assert "override=True" in message
    lines = warning_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith("sft: warning: plugin 't-b-second'") and "'t-a-first'" in lines[0]
    [entry] = [i for i in plugins.plugin_infos() if i["name"] == "t-b-second"]
    assert entry["components"]["regularizers"] == ["t_second_only"]
    assert "t_dup" in entry["error"]


def test_clash_with_a_builtin_names_the_builtin_plugin(plugin, capsys):
    info = plugin(module_plugin(register_datasets=registering(("shapes", make_dataset, "impostor"))), "t-impostor")
    capsys.readouterr()
    reg = plugins.get_registry()
    assert reg.get("datasets", "shapes").plugin == "sftcore.datasets"
    assert len(info.errors) == 1
    assert "'sftcore.datasets'" in info.errors[0] and "'t-impostor'" in info.errors[0]
    assert "dataset 'shapes'" in info.errors[0]
    assert "t-impostor" in capsys.readouterr().err


def test_override_true_replaces_silently_and_unregistering_restores(plugin, capsys):
    info = plugin(module_plugin(register_datasets=registering(
        {"name": "shapes", "factory": make_dataset, "description": "replacement shapes", "override": True},
    )), "t-override")
    capsys.readouterr()
    comp = plugins.get_registry().get("datasets", "shapes")
    assert comp.plugin == "t-override"
    assert comp.description == "replacement shapes"
    assert comp.factory is make_dataset
    assert info.errors == []
    assert capsys.readouterr().err == ""
    assert plugins.get_registry().by_plugin("sftcore.datasets")["datasets"].count("shapes") == 0
    plugins.unregister_plugin("t-override")
    assert plugins.get_registry().get("datasets", "shapes").plugin == "sftcore.datasets"


def test_override_between_third_party_plugins(plugin):
    plugin(module_plugin(register_heads=registering(("t_shared", no_options, "original"))), "t-a-orig")
    plugin(module_plugin(register_heads=registering(
        {"name": "t_shared", "factory": no_options, "description": "replacement", "override": True},
    )), "t-b-repl")
    comp = plugins.get_registry().get("heads", "t_shared")
    assert (comp.plugin, comp.description) == ("t-b-repl", "replacement")


def test_registry_register_directly():
    reg = Registry()
    reg.register("heads", "p1", "h", no_options, "one")
    with pytest.raises(PluginError, match=r"head 'h' is registered by both plugin 'p1' and plugin 'p2'"):
        reg.register("heads", "p2", "h", no_options, "two")
    assert reg.get("heads", "h").plugin == "p1"
    reg.register("heads", "p2", "h", no_options, "two", override=True)
    assert reg.get("heads", "h").plugin == "p2"
    assert set(reg.components) == set(KINDS)


# --------------------------------------------------------------------------- unknown hooks
def test_unknown_hook_name_is_reported_with_did_you_mean(plugin, capsys):
    info = plugin(module_plugin(
        register_dataset=registering(("t_never", make_dataset)),  # typo: register_datasets
        register_heads=registering(("t_typo_head", no_options, "still registered")),
    ), "t-typo")
    assert info.hooks == ["register_heads"]
    assert len(info.errors) == 1
    assert "unknown hook 'register_dataset'" in info.errors[0]
    assert "did you mean 'register_datasets'" in info.errors[0]
    err = capsys.readouterr().err
    assert "t-typo" in err and "register_dataset" in err
    reg = plugins.get_registry()
    assert reg.get("heads", "t_typo_head").plugin == "t-typo"
    with pytest.raises(ConfigError):
        reg.get("datasets", "t_never")
    [entry] = [i for i in plugins.plugin_infos() if i["name"] == "t-typo"]
    assert "register_dataset" in entry["error"]


def test_unknown_hook_without_a_close_match_has_no_suggestion(plugin):
    info = plugin(module_plugin(frobnicate=registering()), "t-frob")
    assert len(info.errors) == 1
    assert "unknown hook 'frobnicate'" in info.errors[0]
    assert "did you mean" not in info.errors[0]


def test_unmarked_functions_are_not_hooks(plugin, capsys):
    mod = module_plugin(register_heads=registering(("t_marked", no_options, "marked")))
    mod.register_datsets = registering(("t_unmarked", make_dataset))  # no @hookimpl: a helper, not a hook
    info = plugin(mod, "t-unmarked")
    assert info.errors == [] and info.hooks == ["register_heads"]
    assert capsys.readouterr().err == ""


def test_hookimpl_with_wrong_argument_names_is_reported_not_raised(plugin, capsys):
    def register_heads(reg):  # the hookspec's argument is called `register`
        reg("t_wrong_args", no_options, "never")

    info = plugin(module_plugin(register_heads=register_heads), "t-wrongargs")
    assert len(info.errors) == 1
    assert "could not be registered" in info.errors[0] and "PluginValidationError" in info.errors[0]
    assert "t-wrongargs" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        plugins.get_registry().get("heads", "t_wrong_args")


# --------------------------------------------------------------------------- isolation
def test_raising_hook_is_isolated(plugin, capsys):
    def register_datasets(register):
        register("t_before_raise", make_dataset)
        raise ValueError("boom in the hook")

    raiser = plugin(module_plugin(
        register_datasets=register_datasets,
        register_heads=registering(("t_raiser_head", no_options, "from the raising plugin's other hook")),
    ), "t-raiser")
    good = plugin(module_plugin(register_datasets=registering(("t_good_ds", make_dataset))), "t-good")
    capsys.readouterr()
    reg = plugins.get_registry()  # does not raise
    assert reg.get("datasets", "t_good_ds").plugin == "t-good"
    assert reg.get("heads", "t_raiser_head").plugin == "t-raiser"
    assert reg.get("datasets", "shapes").plugin == "sftcore.datasets"
    with pytest.raises(ConfigError):  # a failed hook registers nothing, not half its components
        reg.get("datasets", "t_before_raise")
    assert good.errors == []
    assert raiser.errors == ["raised in register_datasets: ValueError: boom in the hook"]
    lines = warning_lines(capsys.readouterr().err)
    assert len(lines) == 1
    assert lines[0].startswith("sft: warning: plugin 't-raiser' raised in register_datasets")
    assert "ValueError: boom in the hook" in lines[0] and "sft plugins" in lines[0]


def test_register_called_wrongly_inside_a_hook_is_isolated(plugin):
    def register_regularizers(register):
        register("t_no_factory")  # missing factory: TypeError inside the hook

    info = plugin(module_plugin(register_regularizers=register_regularizers), "t-badcall")
    reg = plugins.get_registry()
    assert reg.get("regularizers", "l2").plugin == "sftcore.regularizers"
    assert len(info.errors) == 1 and "TypeError" in info.errors[0]


# --------------------------------------------------------------------------- strict mode
@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_strict_mode_makes_unknown_hooks_fatal(plugin, monkeypatch, value):
    monkeypatch.setenv("SFTCORE_STRICT_PLUGINS", value)
    with pytest.raises(PluginError, match=r"plugin 't-strict-typo' implements unknown hook 'register_head'") as exc:
        plugin(module_plugin(register_head=registering()), "t-strict-typo")
    assert "SFTCORE_STRICT_PLUGINS" in str(exc.value)
    assert isinstance(exc.value, SftError) and exc.value.exit_code == 2


def test_strict_mode_makes_raising_hooks_fatal(plugin, monkeypatch, capsys):
    def register_backbones(register):
        raise RuntimeError("strictly broken")

    plugin(module_plugin(register_backbones=register_backbones), "t-strict-raise")
    monkeypatch.setenv("SFTCORE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"plugin 't-strict-raise' raised in register_backbones: "
                                          r"RuntimeError: strictly broken"):
        plugins.get_registry()
    assert "sft: warning" not in capsys.readouterr().err  # fatal, not a warning
    monkeypatch.delenv("SFTCORE_STRICT_PLUGINS")
    assert plugins.get_registry().get("backbones", "lenet")  # lenient again: isolated


def test_strict_mode_makes_clashes_fatal(plugin, monkeypatch):
    plugin(module_plugin(register_heads=registering(("reinit", no_options, "clash"))), "t-strict-clash")
    monkeypatch.setenv("SFTCORE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError) as exc:
        plugins.get_registry()
    assert "'sftcore.heads'" in str(exc.value) and "'t-strict-clash'" in str(exc.value)


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_strict_mode_off_values_only_warn(plugin, monkeypatch, capsys, value):
    monkeypatch.setenv("SFTCORE_STRICT_PLUGINS", value)
    info = plugin(module_plugin(register_head=registering()), "t-lenient")
    assert len(info.errors) == 1
    assert "sft: warning: plugin 't-lenient'" in capsys.readouterr().err


# --------------------------------------------------------------------------- options
def test_check_options_did_you_mean_and_context_argument_is_not_an_option(plugin):
    plugin(module_plugin(register_datasets=registering(("t_opts", make_dataset))), "t-opts")
    comp = plugins.get_registry().get("datasets", "t_opts")
    assert comp.option_names() == (["size", "noise"], False)  # ctx is the context, not an option
    comp.check_options({"size": 4, "noise": 0.0}, "config: finetune.dataset")
    with pytest.raises(ConfigError) as exc:
        comp.check_options({"size": 4, "sise": 3}, "config: finetune.dataset")
    msg = str(exc.value)
    assert msg.startswith("config: finetune.dataset: dataset 't_opts' has no option 'sise'")
    assert "did you mean 'size'" in msg
    assert msg.endswith("its options are: size, noise")
    with pytest.raises(ConfigError, match=r"has no option 'ctx'"):
        comp.check_options({"ctx": 1}, "here")


def test_check_options_for_classes_keyword_only_and_no_suggestion(plugin):
    plugin(module_plugin(
        register_regularizers=registering(("t_cls_opts", MakeRegularizer), ("t_none", no_options)),
        register_heads=registering(("t_any", takes_anything)),
    ), "t-clsopts")
    reg = plugins.get_registry()
    comp = reg.get("regularizers", "t_cls_opts")
    assert comp.option_names() == (["alpha", "beta"], False)  # regularizers get no context argument
    with pytest.raises(ConfigError, match=r"regularizer 't_cls_opts' has no option 'zzz'; its options are"):
        comp.check_options({"zzz": 1}, "w")
    with pytest.raises(ConfigError, match=r"did you mean 'beta'"):
        comp.check_options({"betaa": 1}, "w")
    made = comp.create(alpha=2.0, beta=3.0)
    assert isinstance(made, MakeRegularizer) and (made.alpha, made.beta) == (2.0, 3.0)
    with pytest.raises(ConfigError, match=r"its options are: \(none\)"):
        reg.get("regularizers", "t_none").check_options({"alpha": 1}, "w")
    anything = reg.get("heads", "t_any")
    assert anything.option_names() == ([], True)
    anything.check_options({"whatever": 1, "else": 2}, "w")  # **kwargs: anything goes
    assert anything.create(whatever=1) == {"whatever": 1}


def test_create_passes_context_and_checks_options_first(plugin):
    plugin(module_plugin(register_datasets=registering(("t_create", make_dataset))), "t-create")
    comp = plugins.get_registry().get("datasets", "t_create")
    assert comp.create("CTX", size=3) == ("dataset", "CTX", 3, 0.1)
    with pytest.raises(ConfigError, match=r"^config: pretrain.dataset: dataset 't_create' has no option 'nosie'"):
        comp.create("CTX", where="config: pretrain.dataset", nosie=0.2)


# --------------------------------------------------------------------------- unknown names
def test_unknown_component_name_suggests_close_matches(plugin):
    plugin(module_plugin(register_regularizers=registering(
        ("t_lasso", no_options, "a"), ("t_lassie", no_options, "b"),
    )), "t-names")
    reg = plugins.get_registry()
    with pytest.raises(ConfigError) as exc:
        reg.get("regularizers", "t_lasso_")
    msg = str(exc.value)
    assert msg.startswith("unknown regularizer 't_lasso_'")
    assert "did you mean 't_lasso'" in msg
    assert "available:" in msg and "t_lassie" in msg and "l2_sp" in msg
    assert "sft list regularizers" in msg


def test_unknown_builtin_name_suggestion_and_no_match():
    reg = plugins.get_registry()
    with pytest.raises(ConfigError, match=r"unknown dataset 'shapez' \(did you mean 'shapes'\?\)"):
        reg.get("datasets", "shapez")
    with pytest.raises(ConfigError) as exc:
        reg.get("backbones", "qqqqqqqq")
    assert "did you mean" not in str(exc.value)
    assert "lenet" in str(exc.value)


def test_unknown_name_in_an_empty_kind():
    with pytest.raises(ConfigError, match=r"unknown head 'x'; available: \(none\)"):
        Registry().get("heads", "x")


# --------------------------------------------------------------------------- listing
@pytest.fixture
def small_registry():
    reg = Registry()
    for name in ("l2", "l2_sp", "l1", "delta", "bss", "L2_upper"):
        reg.register("regularizers", "p", name, no_options, f"{name} regularizer")
    for name in ("lenet", "timm", "tiny_cnn"):
        reg.register("backbones", "q", name, no_options, f"{name} backbone")
    return reg


@pytest.mark.parametrize("pattern, expected", [
    (None, ["L2_upper", "bss", "delta", "l1", "l2", "l2_sp"]),
    ("l2*", ["l2", "l2_sp"]),
    ("*_sp", ["l2_sp"]),
    ("l?", ["l1", "l2"]),
    ("[bd]*", ["bss", "delta"]),
    ("L*", ["L2_upper"]),  # case-sensitive
    ("*", ["L2_upper", "bss", "delta", "l1", "l2", "l2_sp"]),
    ("nothing*", []),
    ("l2", ["l2"]),  # a plain name is an exact match, not a prefix
])
def test_list_with_shell_wildcards(small_registry, pattern, expected):
    out = small_registry.list("regularizers", pattern)
    assert list(out) == ["regularizers"]
    assert [c.name for c in out["regularizers"]] == expected


def test_list_over_every_kind(small_registry):
    everything = small_registry.list()
    assert list(everything) == list(KINDS)
    assert everything["datasets"] == [] and everything["heads"] == []
    assert [c.name for c in everything["backbones"]] == ["lenet", "timm", "tiny_cnn"]
    matched = small_registry.list(None, "t*")
    assert list(matched) == list(KINDS)
    assert [c.name for c in matched["backbones"]] == ["timm", "tiny_cnn"]
    assert matched["regularizers"] == []
    assert small_registry.by_plugin("q") == {k: ["lenet", "timm", "tiny_cnn"] if k == "backbones" else []
                                             for k in KINDS}


def test_list_on_the_live_registry(plugin):
    plugin(module_plugin(register_heads=registering(
        ("t_head_b", no_options, "b"), ("t_head_a", no_options, "a"), ("t_other", no_options, "o"),
    )), "t-listing")
    heads = plugins.get_registry().list("heads", "t_head_*")["heads"]
    assert [(c.name, c.plugin) for c in heads] == [("t_head_a", "t-listing"), ("t_head_b", "t-listing")]


# --------------------------------------------------------------------------- cache
def test_registry_is_cached_and_invalidated_by_register_and_unregister(plugin):
    first = plugins.get_registry()
    assert plugins.get_registry() is first
    plugin(module_plugin(register_backbones=registering(("t_cached", no_options, "c"))), "t-cache")
    second = plugins.get_registry()
    assert second is not first
    assert second.get("backbones", "t_cached").plugin == "t-cache"
    with pytest.raises(ConfigError):
        first.get("backbones", "t_cached")  # an old registry is a snapshot
    plugins.unregister_plugin("t-cache")
    third = plugins.get_registry()
    assert third is not second
    with pytest.raises(ConfigError):
        third.get("backbones", "t_cached")
    assert "t-cache" not in {i["name"] for i in plugins.plugin_infos()}
    plugins.unregister_plugin("t-cache")  # twice, or never registered: no error
    plugins.unregister_plugin("t-never-registered")


def test_load_plugins_runs_once(monkeypatch):
    plugins.get_registry()
    calls = []
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda **kw: calls.append(kw) or [])
    plugins.load_plugins()
    plugins.get_registry()
    assert calls == []


# --------------------------------------------------------------------------- the CLI in-process
def test_cli_list_and_plugins_show_a_registered_plugin(plugin):
    from click.testing import CliRunner

    from sftcore.cli import cli

    plugin(module_plugin(register_regularizers=registering(("t_cli_reg", no_options, "shown by sft list"))),
           "t-cli")
    runner = CliRunner()
    text = runner.invoke(cli, ["list", "regularizers", "t_cli*"])
    assert text.exit_code == 0, text.output
    assert "t_cli_reg" in text.stdout and "shown by sft list" in text.stdout and "[t-cli]" in text.stdout
    assert "l2_sp" not in text.stdout
    as_json = runner.invoke(cli, ["list", "t_cli*", "--json"])  # pattern without a kind
    data = json.loads(as_json.stdout)
    assert list(data) == list(KINDS)
    assert data["regularizers"] == [{"name": "t_cli_reg", "kind": "regularizers", "plugin": "t-cli",
                                     "description": "shown by sft list"}]
    assert all(data[k] == [] for k in KINDS if k != "regularizers")
    infos = json.loads(runner.invoke(cli, ["plugins", "--json"]).stdout)
    [entry] = [i for i in infos if i["name"] == "t-cli"]
    assert entry["components"]["regularizers"] == ["t_cli_reg"]
    assert entry["hooks"] == ["register_regularizers"]
    bad = runner.invoke(cli, ["list", "regularisers", "x*"])
    assert bad.exit_code == 2
    assert "unknown kind 'regularisers'" in bad.stderr and "did you mean 'regularizers'" in bad.stderr


# --------------------------------------------------------------------------- known bugs
def test_rebuilding_the_registry_does_not_repeat_errors(plugin, capsys):
    plugin(module_plugin(register_heads=registering(("t_rep", no_options, "a"))), "t-a-rep")
    second = plugin(module_plugin(register_heads=registering(("t_rep", no_options, "b"))), "t-b-rep")
    plugins.get_registry()
    plugin(module_plugin(), "t-c-rep")  # invalidates the registry
    plugins.get_registry()
    assert len(second.errors) == 1


def test_a_warning_is_always_one_line(plugin, capsys):
    def register_heads(reg):
        pass

    plugin(module_plugin(register_heads=register_heads), "t-multiline")
    assert len(warning_lines(capsys.readouterr().err)) == 1


def test_undocumented_subclass_does_not_inherit_its_base_description(plugin):
    from sftcore.api import Regularizer

    class Undocumented(Regularizer):
        pass

    info = plugin(module_plugin(register_regularizers=registering(("t_inherit", Undocumented))), "t-inherit")
    plugins.get_registry()
    assert any("without a description" in e for e in info.errors)


def test_registering_a_taken_plugin_name_keeps_the_original_info(plugin):
    original = plugin(module_plugin(register_heads=registering(("t_taken", no_options, "x"))), "t-taken")
    plugin(module_plugin(), "t-taken")
    [entry] = [i for i in plugins.plugin_infos() if i["name"] == "t-taken"]
    assert entry["hooks"] == original.hooks == ["register_heads"]


# --------------------------------------------------------------------------- the example plugin
@pytest.fixture
def example(monkeypatch):
    """The example plugin package imported from its source folder (whether or not a copy is installed)."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "sft_example_plugin"}
    for key in saved:
        del sys.modules[key]
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    import sft_example_plugin

    assert Path(sft_example_plugin.__file__).resolve().parent == EXAMPLE_SRC / "sft_example_plugin"
    yield sft_example_plugin
    for key in [k for k in sys.modules if k.split(".")[0] == "sft_example_plugin"]:
        del sys.modules[key]
    sys.modules.update(saved)


def _example_registry(module) -> Registry:
    """The example's hooks run against a private registry (the global one may hold an installed copy)."""
    reg = Registry()
    for kind, hook in plugins.HOOKS.items():
        if not hasattr(module, hook):  # the example has no optimizer or schedule
            continue
        getattr(module, hook)(lambda name, factory, description=None, override=False, _k=kind:
                              reg.register(_k, "example", name, factory, description, override))
    return reg


def test_example_plugin_registers_lazy_components_of_each_kind(example):
    reg = _example_registry(example)
    assert {k: v for k, v in reg.by_plugin("example").items() if v} == {
        "datasets": ["npz", "stripes"], "backbones": ["tiny_cnn"], "regularizers": ["bss", "delta", "l1"],
        "heads": ["zero_init"], "param_groups": ["discriminative"], "callbacks": ["stop_at_accuracy"],
        "augmentations": ["gaussian_noise"]}
    for kind in KINDS:
        for comp in reg.list(kind)[kind]:
            assert isinstance(comp.factory, str) and comp.factory.startswith("sft_example_plugin.")
            # the registered one-liner is the factory's own docstring's first line
            assert comp.description == comp.load().__doc__.strip().splitlines()[0]


def test_example_plugin_passes_pluggy_validation(example):
    import pluggy

    from sftcore import hookspecs

    pm = pluggy.PluginManager("sftcore")  # a private manager: the global one may hold an installed copy
    pm.add_hookspecs(hookspecs)
    pm.register(example, name="example")
    pm.check_pending()  # every @hookimpl matches a hookspec, arguments included
    assert sorted(caller.name for caller in pm.get_hookcallers(example)) == sorted(
        [h for h in plugins.HOOKS.values() if h not in ("register_optimizers", "register_schedules", "register_adapters", "register_scores")]
        + ["register_commands"])


def test_example_stripes_dataset(example):
    import torch

    from sftcore.api import DatasetContext, DataSplits, ImageSet
    from sft_example_plugin.stripes import CLASSES, stripes

    ctx = DatasetContext(seed=3, input_size=(3, 16, 16), stage="finetune")
    splits = stripes(ctx, train_per_class=5, test_per_class=2, size=12)
    assert isinstance(splits, DataSplits) and splits.classes == CLASSES
    assert isinstance(splits.train, ImageSet) and isinstance(splits.test, ImageSet)
    assert splits.train.images.shape == (20, 3, 12, 12) and splits.train.images.dtype == torch.uint8
    assert splits.train.labels.dtype == torch.int64
    assert torch.bincount(splits.train.labels).tolist() == [5, 5, 5, 5]
    assert torch.bincount(splits.test.labels).tolist() == [2, 2, 2, 2]
    assert splits.train.images.float().std() > 20  # real images, not blanks
    assert splits.augment.flip is False  # a flip would swap the diagonal classes
    again = stripes(ctx, train_per_class=5, test_per_class=7, size=12)
    assert torch.equal(again.train.images, splits.train.images)  # seeded; test size does not move train
    other = stripes(DatasetContext(seed=4, input_size=(3, 16, 16), stage="finetune"), train_per_class=5, size=12)
    assert not torch.equal(other.train.images, splits.train.images)
    assert stripes(ctx, train_per_class=1, test_per_class=0).test is None
    with pytest.raises(ConfigError, match=r"train_per_class must be an integer >= 1"):
        stripes(ctx, train_per_class=0)


def test_example_stripes_are_oriented(example):
    """Horizontal stripes vary down the columns, vertical ones along the rows."""
    from sftcore.api import DatasetContext
    from sft_example_plugin.stripes import stripes

    data = stripes(DatasetContext(seed=0, input_size=(3, 16, 16), stage="finetune"), train_per_class=8,
                   test_per_class=0, noise=0.0).train
    img = data.images.float()
    along_rows = (img[:, :, :, 1:] - img[:, :, :, :-1]).abs().mean((1, 2, 3))
    along_cols = (img[:, :, 1:, :] - img[:, :, :-1, :]).abs().mean((1, 2, 3))
    horizontal, vertical = data.labels == 0, data.labels == 1
    assert (along_rows[horizontal] < along_cols[horizontal]).all()
    assert (along_cols[vertical] < along_rows[vertical]).all()


def test_example_options_are_checked_with_suggestions(example):
    reg = _example_registry(example)
    with pytest.raises(ConfigError, match=r"dataset 'stripes' has no option 'trian_per_class' "
                                          r"\(did you mean 'train_per_class'"):
        reg.get("datasets", "stripes").check_options({"trian_per_class": 3}, "config: finetune.dataset")
    with pytest.raises(ConfigError, match=r"did you mean 'alpha'"):
        reg.get("regularizers", "l1").check_options({"alhpa": 1.0}, "w")
    assert reg.get("backbones", "tiny_cnn").option_names() == (["width", "in_chans", "size", "weights"], False)
    assert reg.get("heads", "zero_init").option_names() == (["bias"], False)


def _example_model(width=4, classes=3):
    from sftcore.api import BackboneContext, TrainContext
    from sftcore._train.model import TransferModel
    from sft_example_plugin.tiny_cnn import tiny_cnn
    from sft_example_plugin.zero_init import ZeroInit

    backbone = tiny_cnn(BackboneContext(seed=0), width=width)
    ctx = TrainContext(stage="finetune", backbone=backbone, classes=[f"c{i}" for i in range(classes)], epochs=1,
                       device="cpu", seed=0, extract_features=lambda: None, train_batches=lambda: iter(()))
    head = ZeroInit().build_head(ctx)
    ctx.model = TransferModel(backbone, head)
    return ctx


def test_example_tiny_cnn_backbone(example, tmp_path):
    import torch

    from sftcore.api import Backbone, BackboneContext
    from sft_example_plugin.tiny_cnn import tiny_cnn

    bb = tiny_cnn(BackboneContext(seed=0), width=4)
    assert isinstance(bb, Backbone)
    assert bb.num_features == 8 and bb.input_size == (3, 16, 16)
    assert bb.blocks == ["stage1", "stage2"] and bb.feature_maps == ["stage1", "stage2"]
    for name in bb.blocks + bb.feature_maps:
        bb.features.get_submodule(name)
    assert bb.features(torch.zeros(2, 3, 16, 16)).shape == (2, 8)
    assert bb.features(torch.zeros(1, 3, 24, 20)).shape == (1, 8)  # any size: fixed_input_size is False
    assert bb.fixed_input_size is False

    ctx = _example_model(width=4)
    logits, feats, maps = ctx.model.forward_all(torch.randn(2, 3, 16, 16), feature_maps=True)
    assert logits.shape == (2, 3) and feats.shape == (2, 8)
    assert maps["stage1"].shape == (2, 4, 8, 8) and maps["stage2"].shape == (2, 8, 4, 4)

    path = tmp_path / "tiny.pt"
    torch.manual_seed(1)
    torch.save(tiny_cnn(BackboneContext(seed=1), width=4).features.state_dict(), path)
    loaded = tiny_cnn(BackboneContext(seed=0), width=4, weights=str(path))
    saved = torch.load(path, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in loaded.features.state_dict().items())
    torch.manual_seed(2)
    scratch = tiny_cnn(BackboneContext(seed=0, random_init=True), width=4, weights=str(path))
    assert not torch.equal(scratch.features.stage1[0].weight, saved["stage1.0.weight"])
    with pytest.raises(ConfigError, match=r"weights file .* not found"):
        tiny_cnn(BackboneContext(seed=0), weights=str(tmp_path / "missing.pt"))


def test_example_l1_regularizer_is_alpha_times_sum_abs_weights(example):
    import torch

    from sftcore.api import Regularizer, Step
    from sft_example_plugin.l1 import L1

    ctx = _example_model()
    with torch.no_grad():
        ctx.model.head.weight.fill_(0.5)  # give the zero head some weight to count
    reg = L1(alpha=0.01)
    assert isinstance(reg, Regularizer) and reg.needs_feature_maps is False
    reg.setup(ctx)
    x = torch.randn(2, 3, 16, 16)
    logits, feats, _ = ctx.model.forward_all(x)
    step = Step(ctx, 0, x, torch.tensor([0, 1]), logits, feats)
    weights = [p for p in ctx.model.parameters() if p.ndim > 1]
    assert len(weights) == 3  # two conv kernels and the head matrix; no biases or norm scales
    expected = 0.01 * sum(p.abs().sum() for p in weights)
    penalty = reg.penalty(step)
    assert penalty.ndim == 0 and torch.allclose(penalty, expected)
    penalty.backward()
    conv = ctx.model.backbone.stage1[0].weight
    assert torch.allclose(conv.grad, 0.01 * conv.sign())
    assert ctx.model.backbone.stage1[1].weight.grad is None  # norm scale untouched

    no_head = L1(alpha=0.01, include_head=False)
    no_head.setup(ctx)
    assert torch.allclose(no_head.penalty(step), expected - 0.01 * ctx.model.head.weight.abs().sum())
    zero = L1(alpha=0.0)
    zero.setup(ctx)
    assert zero.penalty(step).item() == 0.0
    for p in ctx.model.backbone.parameters():
        p.requires_grad_(False)  # frozen weights are left out (they would only add a constant)
    assert torch.allclose(reg.penalty(step), 0.01 * ctx.model.head.weight.abs().sum())
    with pytest.raises(ConfigError, match=r"alpha must be a number >= 0"):
        L1(alpha=-1)


def test_example_zero_init_head(example):
    import torch

    from sftcore.api import HeadStrategy
    from sft_example_plugin.zero_init import ZeroInit

    ctx = _example_model(width=4, classes=5)
    head = ctx.model.head
    assert isinstance(ZeroInit(), HeadStrategy)
    assert head.weight.shape == (5, 8) and head.bias.shape == (5,)
    assert torch.count_nonzero(head.weight) == 0 and torch.count_nonzero(head.bias) == 0
    assert torch.equal(ctx.model(torch.randn(3, 3, 16, 16)), torch.zeros(3, 5))
    groups = ZeroInit().param_groups(ctx, lr=0.1, backbone_lr_mult=0.5)
    covered = {id(p) for g in groups for p in g["params"]}
    assert covered == {id(p) for p in ctx.model.parameters()}
    assert ZeroInit(bias=False).build_head(ctx).bias is None


def test_check_option_without_where_is_named_under_the_entrys_path():
    """A factory that checks its own options (no ``where``) gets the config path in front, joined by a dot."""
    from sftcore._plugins.components import located
    from sftcore.api import check_option
    from sftcore.errors import ConfigError, OptionError

    with pytest.raises(OptionError, match=r"^p must be a finite number >= 0.0, got .x.$"):
        check_option("p", "x", float, low=0.0)
    with pytest.raises(ConfigError) as err:
        with located("finetune.augment[2]"):
            check_option("p", -1.0, float, low=0.0)
    assert str(err.value) == "config: finetune.augment[2].p must be a finite number >= 0.0, got -1.0"
    with pytest.raises(ConfigError, match=r"^config: finetune.head.k must be an integer"):
        check_option("k", 1.5, int, where="config: finetune.head")
