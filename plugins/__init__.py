"""sftcore's built-in plugins (installed as ``sftcore_plugins``).

They are ordinary plugins: found through the ``sftcore`` entry-point group and written against
the public API (``sftcore.hookimpl``, ``sftcore.api``) only. Each package's ``__init__`` registers
lazily; the implementation modules import torch when a component is actually built.
"""
