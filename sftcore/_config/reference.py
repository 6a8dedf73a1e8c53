"""Render docs/config-reference.md from ``config.describe()``, so the reference cannot drift from the code.

Regenerate after changing a key's declaration in ``schema.py``:

    python -m sftcore._config.reference > docs/config-reference.md

tests/test_docs.py fails when the file differs from what this prints.
"""

from __future__ import annotations

from typing import Any

from sftcore._plugins.kinds import KIND_TABLE

from .resolve import describe

SECTIONS = {
    "": ("Top level", "The keys of the config file itself."),
    "<stage>": (
        "Stage keys",
        "The keys of `pretrain:`, `finetune:` and `baseline:` (the baseline takes all of "
        "them except `dataset`, and starts from finetune's values).",
    ),
    "<stage>.dataset": (
        "Dataset runner keys",
        "Inside a stage's `dataset:`, these keys belong to the runner; "
        "every other key goes to the dataset's factory as an option.",
    ),
}

HEADER = """\
# Configuration reference

<!-- Generated from the declaration in sftcore/_config/schema.py by
     `python -m sftcore._config.reference > docs/config-reference.md`. Do not edit by hand:
     tests/test_docs.py fails when this file differs from the generated text. -->

Every key a run config takes, with its type, default, allowed values and meaning. `<stage>` stands
for `pretrain`, `finetune` and `baseline`. A *component* is a name (`head: lp_ft`) or a mapping with
`name` and the component's options (`{name: l2_sp, alpha: 0.1}`); the built-in components' options
are in [components.md](components.md). [config.md](config.md) explains how the keys work together
(few-label splits, the scratch baseline, seeds, `--set`). `sft config show CONFIG` prints a config
with every default filled in.
"""


def yaml_inline(value: Any) -> str:
    """A value as it would be written in a YAML flow style: null, true, [0.9, 0.999], {name: sgd}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(yaml_inline, value)) + "]"
    return str(value)


def _default_cell(row: dict) -> str:
    value = row["default"]
    if row["allowed"].startswith("required"):
        return "required"
    return f"`{yaml_inline(value)}`"


def _cell(text: str) -> str:
    """Plain schema text in a table cell: no column breaks, no HTML tags, no emphasis."""
    for char in "|<*":
        text = text.replace(char, "\\" + char)
    return text


def markdown() -> str:
    """The whole of docs/config-reference.md."""
    groups: dict[str, list[dict]] = {prefix: [] for prefix in SECTIONS}
    for row in describe():
        groups[row["path"].rpartition(".")[0]].append(row)
    out = [HEADER]
    for prefix, rows in groups.items():
        title, intro = SECTIONS[prefix]
        out += [
            f"\n## {title}\n\n{intro}\n\n",
            "| key | type | default | allowed | meaning |\n",
            "|---|---|---|---|---|\n",
        ]
        out += [
            f"| `{r['path']}` | {_cell(r['type'])} | {_default_cell(r)} | {_cell(r['allowed'])} | "
            f"{_cell(r['meaning'])} |\n"
            for r in rows
        ]
    return "".join(out) + _kinds_section()


def _kinds_section() -> str:
    """The kinds of component, from the one table that declares them (sftcore/_kinds.py)."""
    out = [
        "\n## Component kinds\n\nWhere a config names each kind of component, and what its factory takes and "
        "returns ([hooks.md](hooks.md)). `sft list KIND` lists the installed ones, `sft list KIND NAME` shows "
        "one's options.\n\n",
        "| kind | config key | factory |\n",
        "|---|---|---|\n",
    ]
    out += [f"| `{k.name}` | `{k.config}` | `{k.contract}` |\n" for k in KIND_TABLE]
    return "".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
