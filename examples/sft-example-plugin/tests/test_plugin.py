"""The plugin registers every component cleanly, with one-line descriptions and checked options."""

from __future__ import annotations

import inspect

from sftcore.testing import registry as get_registry

import sft_example_plugin

COMPONENTS = {"datasets": ["npz", "stripes"], "backbones": ["tiny_cnn"], "regularizers": ["bss", "delta", "l1"],
              "heads": ["zero_init"], "param_groups": ["discriminative"], "callbacks": ["stop_at_accuracy"],
              "augmentations": ["gaussian_noise"]}
NO_FACTORY_CONTEXT = ("regularizers", "heads", "param_groups", "callbacks", "augmentations")  # factory(**options), nothing before


def test_registers_every_component_without_problems(example_plugin):
    assert example_plugin.errors == []
    assert sorted(example_plugin.hooks) == ["register_augmentations", "register_backbones", "register_callbacks", "register_commands",
                                            "register_datasets", "register_heads", "register_param_groups",
                                            "register_regularizers"]
    registered = {kind: sorted(names) for kind, names in get_registry().by_plugin("example").items() if names}
    assert registered == COMPONENTS


def test_every_component_loads_and_has_a_one_line_description():
    registry = get_registry()
    for kind, names in COMPONENTS.items():
        for name in names:
            component = registry.get(kind, name)
            assert component.plugin == "example"
            assert component.description and "\n" not in component.description
            factory = component.load()  # the lazy "module:attr" string resolves
            assert callable(factory)
            # `sft list` shows the one-liner, `sft list KIND NAME` the docstring: they start alike
            assert component.description == factory.__doc__.strip().splitlines()[0]
            names, open_ended = component.option_names()
            assert not open_ended, f"{name}: **kwargs would turn off sftcore's check for misspelt options"
            assert names == list(inspect.signature(factory).parameters)[kind not in NO_FACTORY_CONTEXT:]


def test_the_tables_are_what_is_registered():
    tables = sft_example_plugin.TABLES
    assert {kind: sorted(table) for kind, table in tables.items()} == COMPONENTS
    for kind, table in tables.items():
        for name, (_, description) in table.items():
            assert get_registry().get(kind, name).description == description
