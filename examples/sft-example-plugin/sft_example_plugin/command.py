"""``sft example-info``: a command a plugin adds to ``sft`` (the ``register_commands`` hook).

Only ``add(cli)`` runs when sft asks the plugins for their commands, and it imports nothing heavy;
the command's body runs when someone types ``sft example-info``.
"""

from __future__ import annotations

import click


def add(cli: click.Group) -> None:
    """Add ``example-info`` to the ``sft`` group."""

    @cli.command("example-info")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON: {plugin, version, components: {kind: [...]}}.")
    def example_info(as_json):
        """List what the sft-example-plugin adds, by kind, with its version.

        Read from the plugin's own tables: neither torch nor any component module is imported.
        """
        import json

        from . import info

        data = info()
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        click.echo(f"{data['distribution']} {data['version']} (plugin '{data['plugin']}')")
        for kind, components in data["components"].items():
            click.echo(f"{kind}:")
            width = max(len(c["name"]) for c in components)
            for c in components:
                click.echo(f"  {c['name']:<{width}}  {c['description']}")
        click.echo(f"commands: {', '.join(data['commands'])}")
