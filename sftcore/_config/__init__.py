"""The run config: its keys declared once (type, default, bounds, meaning), YAML and `--set` loading,
validation with one-line errors, and docs/config-reference.md rendered from the declaration.

May import: sftcore._plugins, sftcore._fileio, sftcore.errors. Imports no torch."""
