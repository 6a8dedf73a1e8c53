"""The plugin system: the kinds table, the contracts a component fulfils, the pluggy plugin manager and
the registry of components by kind and name, and components built from config entries.

May import: sftcore.errors and sftcore.hookspecs. Imports no torch."""
